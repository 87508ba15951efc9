// Where the Live view's frames come from: one of the browser's cameras, or a shared window or screen (a teacher
// shares the video call's window and the page follows the faces in it). Either way the frames are analysed in
// this page; none leaves the browser.
//
// A source is {kind: "camera" | "screen", deviceId?}; an open source is {stream, box, video, kind, label}, the
// shape of camera.js's ferkitOpenCamera, so that camera.js's ferkitOverlay and ferkitClose work on it.

export const SCREEN = "screen";

// The browser's cameras: [{deviceId, label}]. Browsers give the labels (and stable ids) only once a camera was
// allowed on this page; before that a camera is called by its place in the list.
export async function listCameras() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((device) => device.kind === "videoinput")
    .map((device, i) => ({ deviceId: device.deviceId, label: device.label || `camera ${i + 1}` }));
}

// Fills `select` with the cameras and "Share a window or screen" (where the browser can), keeping its choice when
// that is still offered. Option values: "camera:<deviceId>" or "screen".
export async function fillSourcePicker(select) {
  const previous = select.value;
  const cameras = await listCameras().catch(() => []);
  const options = cameras.map((camera) => new Option(camera.label, "camera:" + camera.deviceId));
  if (!cameras.length) options.push(new Option("camera", "camera:"));  // no list (yet): the default camera
  if (navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia) {
    options.push(new Option("Share a window or screen", SCREEN));
  }
  select.replaceChildren(...options);
  if ([...select.options].some((option) => option.value === previous)) select.value = previous;
}

// The picker's value -> a source.
export function parseSource(value) {
  if (value === SCREEN) return { kind: SCREEN };
  return { kind: "camera", deviceId: (value || "").replace(/^camera:/, "") || undefined };
}

// Opens `source` and shows it in a new box inside `root`. `onEnded` is called when the source stops by itself
// (the browser's "Stop sharing" button, a camera unplugged).
export async function openSource(root, source, { width = 640, onEnded } = {}) {
  if (!window.isSecureContext) throw new Error("insecure context: the page must be served over https or from localhost");
  const media = navigator.mediaDevices;
  let stream;
  if (source.kind === SCREEN) {
    if (!media || !media.getDisplayMedia) throw new Error("this browser cannot share a window or screen");
    stream = await media.getDisplayMedia({ video: true, audio: false });
  } else {
    if (!media || !media.getUserMedia) throw new Error("this browser has no camera API");
    const video = { width: { ideal: width } };
    if (source.deviceId) video.deviceId = { exact: source.deviceId };
    stream = await media.getUserMedia({ video });
  }
  const [track] = stream.getVideoTracks();
  if (onEnded) track.addEventListener("ended", onEnded);
  const { box, video } = await ferkitShowStream(root, stream);  // camera.js
  // A shared source is named by its kind (monitor, window, browser), not by its title: a window's title (a call's
  // name, a document's) would otherwise travel into the session's export.
  const label = source.kind === SCREEN ? track.getSettings().displaySurface || "screen" : track.label;
  return { stream, box, video, kind: source.kind, label };
}

// A failed start in words; the camera's cases are camera.js's ferkitExplain.
export function explainSource(error, source) {
  const name = (error && error.name) || "";
  if (source.kind === SCREEN && (name === "NotAllowedError" || name === "AbortError")) return "sharing was cancelled or refused";
  if (source.kind === SCREEN && name === "NotReadableError") return "the window or screen cannot be captured";
  return ferkitExplain(error);  // camera.js, a classic script loaded before the modules
}
