// The browser camera, shared by the notebook widget (widget.js), Colab (colab_live.js, eval_js)
// and the web page (app.js): open it, grab frames, lay a canvas over it (drawing.js draws the faces there).
// A classic script of function declarations: the page loads it with a <script> tag, and ferkit.webcam
// concatenates it, with framerate.js and drawing.js, into the widget's module and Colab's eval_js scripts.

function ferkitExplain(error) {
  const name = (error && error.name) || "";
  if (name === "NotAllowedError" || name === "SecurityError") return "permission to use the camera was denied";
  if (name === "NotFoundError" || name === "OverconstrainedError") return "no camera found";
  if (name === "NotReadableError") return "the camera is in use by another program";
  return String((error && error.message) || error);
}

// The notebook's live mode (widget.js, colab_live.js): the camera asked for at this width, and the small frames
// sent to the kernel as JPEGs of this quality (the kernel classifies 48x48 faces; 0.7 keeps each frame small).
// `var`, not `const`: Colab evaluates this script again on every eval_js call, and a `var` may be declared again.
var FERKIT_LIVE_CAMERA_WIDTH = 640;
var FERKIT_LIVE_JPEG_QUALITY = 0.7;

async function ferkitOpenCamera(root, width) {
  if (!window.isSecureContext) throw new Error("insecure context: the page must be served over https or from localhost");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error("this browser has no camera API");
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: {ideal: width}}});
  return ferkitShowStream(root, stream);
}

// A media stream playing, muted, in a new box inside `root` (the box holds the overlay too) -> {stream, box, video}.
async function ferkitShowStream(root, stream) {
  const box = document.createElement("div");
  box.style.position = "relative";
  box.style.display = "inline-block";
  const video = document.createElement("video");
  video.srcObject = stream;
  video.muted = true;
  video.playsInline = true;
  box.appendChild(video);
  root.appendChild(box);
  await video.play();
  return {stream, box, video};
}

// A canvas over the camera's video, stretched to it: the live views draw their faces there.
function ferkitOverlay(camera) {
  const overlay = document.createElement("canvas");
  Object.assign(overlay.style, {position: "absolute", left: "0", top: "0", width: "100%", height: "100%"});
  camera.box.appendChild(overlay);
  return overlay;
}

function ferkitFrame(video, maxWidth, quality) {
  const scale = Math.min(1, maxWidth / video.videoWidth);
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(video.videoWidth * scale);
  canvas.height = Math.round(video.videoHeight * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", quality);
}

function ferkitClose(camera, root) {
  if (camera) camera.stream.getTracks().forEach((track) => track.stop());
  if (root && root.parentNode) root.remove();
}

// Snapshot: live preview, Capture and Cancel buttons. Resolves to a JPEG data
// URL, or to "error:<reason>" (never rejects, so every caller gets a message).
async function ferkitTakePhoto(parent, quality, timeoutMs) {
  const root = document.createElement("div");
  (parent || document.body).appendChild(root);
  let camera = null;
  try {
    camera = await ferkitOpenCamera(root, 1280);
    const capture = document.createElement("button");
    capture.textContent = "Capture";
    const cancel = document.createElement("button");
    cancel.textContent = "Cancel";
    root.appendChild(capture);
    root.appendChild(cancel);
    return await new Promise((resolve) => {
      const timer = setTimeout(() => resolve("error:timed out after " + timeoutMs / 1000 + " s without a capture"), timeoutMs);
      capture.onclick = () => { clearTimeout(timer); resolve(ferkitFrame(camera.video, 1280, quality)); };
      cancel.onclick = () => { clearTimeout(timer); resolve("error:the preview was closed by the user"); };
    });
  } catch (error) {
    return "error:" + ferkitExplain(error);
  } finally {
    ferkitClose(camera, root);
  }
}
