// The browser camera, shared by the notebook widget (widget.js), Colab (colab_live.js, eval_js)
// and the web page (app.js): open it, grab frames, draw the faces over it.

function ferkitExplain(error) {
  const name = (error && error.name) || "";
  if (name === "NotAllowedError" || name === "SecurityError") return "permission to use the camera was denied";
  if (name === "NotFoundError" || name === "OverconstrainedError") return "no camera found";
  if (name === "NotReadableError") return "the camera is in use by another program";
  return String((error && error.message) || error);
}

async function ferkitOpenCamera(root, width) {
  if (!window.isSecureContext) throw new Error("insecure context: the page must be served over https or from localhost");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw new Error("this browser has no camera API");
  const stream = await navigator.mediaDevices.getUserMedia({video: {width: {ideal: width}}});
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

// The frame rate every live view shows: frames over the last three seconds. `times` (ms, oldest first) gains
// `now`; returns the rate and the times still inside the window, to pass in next time.
function ferkitFrameRate(times, now = performance.now()) {
  const recent = [...times, now].filter((t) => t > now - 3000);
  const fps = recent.length > 1 ? (recent.length - 1) / ((now - recent[0]) / 1000) : 0;
  return { fps, times: recent };
}

// Live overlay: draws boxes and labels from the kernel over the video.
function ferkitDrawOverlay(canvas, video, faces, fps) {
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const unit = Math.max(canvas.width, canvas.height) / 640;
  context.lineWidth = Math.max(1, 2 * unit);
  context.font = Math.round(16 * unit) + "px sans-serif";
  for (const face of faces) {
    const [x, y, w, h] = face.box.map((v) => v * face.scale);
    context.strokeStyle = face.color;
    context.fillStyle = face.color;
    context.strokeRect(x, y, w, h);
    context.fillText(face.text, x, Math.max(16 * unit, y - 4 * unit));
  }
  context.fillStyle = "yellow";
  context.fillText(fps.toFixed(1) + " FPS", 8 * unit, canvas.height - 8 * unit);
}
