// The ferkit page: Live (webcam), Photo and Video views over one in-page pipeline (pipeline.js).
//
// camera.js, framerate.js and drawing.js come before it as classic scripts (their ferkit* functions are shared
// with the notebook widget and Colab, where modules cannot be imported).
//
// Scripting hook: window.ferkitState = {fps, latencyMs, model, faces: [{box, label, score, probabilities}]},
// updated on every analysed frame and photo, plus `ready` once the models are loaded and `error` if a step fails.
import { Pipeline } from "./pipeline.js";
import { Tracker } from "./tracking.js";

const $ = (id) => document.getElementById(id);
const state = (window.ferkitState = { ready: false, fps: 0, latencyMs: {}, model: null, faces: [], error: null,
                                      threads: 1, frames: 0 });
let index = null;
let pipeline = null;
let booted = false;  // `ready` is first set once start-up (and the live view's auto-start) is decided

function setStatus(text) { $("status").textContent = text; }

// An element with properties and children; strings go in as text, never as markup: class names come from model
// files, file names from the user's disk, job fields from the server (none of them may run script here).
function el(tag, properties = {}, ...children) {
  const node = Object.assign(document.createElement(tag), properties);
  node.append(...children.map((child) => (child instanceof Node ? child : String(child))));
  return node;
}

function fail(error) {
  state.error = String((error && error.message) || error);
  setStatus("error: " + state.error);
  console.error(error);
}

function publish(faces, latencyMs, fps) {
  state.faces = faces.map(({ box, label, score, probabilities }) => ({ box, label, score, probabilities }));
  state.latencyMs = latencyMs;
  if (fps !== undefined) state.fps = fps;
}

// ---------------------------------------------------------------- models

async function loadModels() {
  index = await (await fetch("models/index.json")).json();
  const threads = Number(new URLSearchParams(location.search).get("threads") || 0);
  ort.env.wasm.wasmPaths = new URL("vendor/onnxruntime-web/", location.href).href;
  // Threads need cross-origin isolation (SharedArrayBuffer); a plain static host gets one thread.
  state.threads = crossOriginIsolated ? threads || Math.min(2, navigator.hardwareConcurrency || 1) : 1;
  ort.env.wasm.numThreads = state.threads;
  const select = $("model");
  for (const entry of index.models) select.add(new Option(entry.name, entry.name));
  select.onchange = () => useModel(select.value).catch(fail);
  await useModel(index.models[0].name);
}

function describe(entry) {
  const parts = [entry.architecture, `${(entry.parameters / 1e6).toFixed(1)}M parameters`, `${entry.onnx_megabytes} MB`];
  if (entry.accuracy && entry.accuracy.PrivateTest) parts.push(`PrivateTest ${(100 * entry.accuracy.PrivateTest).toFixed(1)}%`);
  if (entry.classifierMs !== undefined) parts.push(`${entry.classifierMs.toFixed(1)} ms per face here`);
  return parts.join(" · ");
}

async function useModel(name) {
  const entry = index.models.find((m) => m.name === name);
  setStatus(`loading ${name}…`);
  state.ready = false;
  pipeline = await Pipeline.create(ort, { detectorUrl: index.detector.url, modelUrl: entry.url, meta: entry,
                                          search: index.detector });
  state.model = name;
  state.ready = booted;
  // Speed as measured here and now: one 48x48 face through the classifier, median of 5 after a warm-up.
  const face = new Uint8Array(entry.input_size * entry.input_size).fill(128);
  const times = [];
  for (let i = 0; i < 6; i++) {
    const started = performance.now();
    await pipeline.classify([face]);
    if (i) times.push(performance.now() - started);
  }
  entry.classifierMs = times.sort((a, b) => a - b)[2];
  $("model-info").textContent = describe(entry);
  setStatus(`ready · WASM, ${state.threads} thread${state.threads > 1 ? "s" : ""}`);
}

// ---------------------------------------------------------------- drawing

// Faces and timelines take their colours from index.json (ferkit.settings' EMOTION_COLORS and UNKNOWN_COLOR);
// the boxes and labels themselves are drawn by drawing.js.
const palette = () => ({ colors: index.colors, unknownColor: index.unknown_color });

function drawBars(container, faces) {
  container.replaceChildren(...faces.map((face, i) => el("div", { className: "face-bars" },
    el("strong", {}, `face ${face.id ?? i}: ${face.label} ${Math.round(100 * face.score)}%`),
    ...Object.entries(face.probabilities).map(([name, p]) => {
      const fill = el("span", { className: "fill" });
      fill.style.width = `${(200 * p).toFixed(0)}px`;
      return el("div", { className: "bar" + (name === face.label ? " best" : "") }, el("span", {}, name), fill,
                el("span", {}, p.toFixed(2)));
    }))));
}

function download(blob, name) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = name;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

const jsonBlob = (value) => new Blob([JSON.stringify(value, null, 2)], { type: "application/json" });

// ---------------------------------------------------------------- live

// The live view's faces keep their id across frames and show smoothed probabilities, as a video's do in Python
// (tracking.js); each id keeps 30 s of history for the timeline.
const HISTORY_MS = 30000;

function followFaces(faces, now) {
  const followed = live.tracker.update(faces);
  faces.forEach((face, i) => {
    const { id, probabilities } = followed[i];
    face.id = id;
    face.probabilities = probabilities;
    face.label = Object.keys(probabilities).reduce((a, b) => (probabilities[b] > probabilities[a] ? b : a));
    face.score = probabilities[face.label];
    const history = live.history.get(id) || [];
    history.push([now, probabilities]);
    live.history.set(id, history.filter(([t]) => t > now - HISTORY_MS));
  });
  for (const id of live.history.keys()) if (!live.tracker.tracks.has(id)) live.history.delete(id);
}

function drawTimeline(canvas, track) {
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.font = "11px sans-serif";
  if (!track || track.history.length < 2) { context.fillStyle = "#888"; context.fillText("emotion over time appears here", 8, 20); return; }
  const [start] = track.history[0], end = track.history[track.history.length - 1][0], span = Math.max(1, end - start);
  Object.keys(track.history[0][1]).forEach((name, k) => {
    context.strokeStyle = ferkitColor(name, palette());
    context.beginPath();
    track.history.forEach(([t, p], i) => {
      const x = ((t - start) / span) * (canvas.width - 70), y = canvas.height - 10 - p[name] * (canvas.height - 20);
      i ? context.lineTo(x, y) : context.moveTo(x, y);
    });
    context.stroke();
    context.fillStyle = context.strokeStyle;
    context.fillText(name, canvas.width - 65, 12 + 13 * k);
  });
}

const live = { camera: null, running: false, overlay: null, grab: null, meter: null, tracker: null, history: new Map() };

async function startLive() {
  if (live.running) return;
  const stage = $("live-stage");
  live.camera = await ferkitOpenCamera(stage, 640);
  live.overlay = ferkitOverlay(live.camera);
  live.grab = document.createElement("canvas");
  live.tracker = new Tracker(index.tracking);  // a new session: ids from 0, no history, a new frame rate
  live.meter = ferkitFrameRateMeter();
  live.history.clear();
  live.running = true;
  $("live-start").disabled = true;
  $("live-stop").disabled = $("live-snapshot").disabled = false;
  requestAnimationFrame(liveStep);
}

function stopLive() {
  live.running = false;
  ferkitClose(live.camera, null);
  $("live-stage").replaceChildren();
  $("live-start").disabled = false;
  $("live-stop").disabled = $("live-snapshot").disabled = true;
}

async function liveStep() {
  if (!live.running || !pipeline) return;
  const video = live.camera.video;
  if (video.readyState >= 2 && video.videoWidth) {
    try {
      const t0 = performance.now();
      live.grab.width = video.videoWidth;
      live.grab.height = video.videoHeight;
      const grabContext = live.grab.getContext("2d", { willReadFrequently: true });
      grabContext.drawImage(video, 0, 0);
      const frame = grabContext.getImageData(0, 0, live.grab.width, live.grab.height);
      const t1 = performance.now();
      const { faces, timings } = await pipeline.analyse(frame);
      const t2 = performance.now();
      followFaces(faces, t2);
      live.overlay.width = frame.width;
      live.overlay.height = frame.height;
      ferkitDrawFaces(live.overlay.getContext("2d"), faces, palette());
      drawBars($("live-bars"), faces);
      const oldest = Math.min(...live.history.keys());
      drawTimeline($("live-timeline"), live.history.has(oldest) ? { history: live.history.get(oldest) } : null);
      const t3 = performance.now();
      const fps = live.meter.tick(t3);
      const latencyMs = { frame: t1 - t0, ...timings, drawing: t3 - t2, total: t3 - t0 };
      state.frames += 1;
      publish(faces, latencyMs, fps);
      $("live-readout").textContent = `${ferkitFrameRateText(fps)} · ` + Object.entries(latencyMs).map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" · ");
    } catch (error) {
      fail(error);
    }
  }
  requestAnimationFrame(liveStep);
}

function snapshot() {
  const canvas = document.createElement("canvas");
  canvas.width = live.grab.width;
  canvas.height = live.grab.height;
  const context = canvas.getContext("2d");
  context.drawImage(live.camera.video, 0, 0);
  context.drawImage(live.overlay, 0, 0);
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  canvas.toBlob((blob) => download(blob, `ferkit-${stamp}.png`), "image/png");
  download(jsonBlob({ model: state.model, time: stamp, faces: state.faces }), `ferkit-${stamp}.json`);
}

// ---------------------------------------------------------------- photo

let photoResult = null;

async function analysePhoto(file) {
  if (!file || !file.type.startsWith("image/")) { $("photo-readout").textContent = `${file ? file.name : "that"}: not an image`; return; }
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  const canvas = $("photo-canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const frame = context.getImageData(0, 0, canvas.width, canvas.height);
  const started = performance.now();
  const { faces, timings } = await pipeline.analyse(frame, { upscaleSearch: true });
  publish(faces, { ...timings, total: performance.now() - started });
  ferkitDrawFaces(context, faces, palette());
  photoResult = { file: file.name, model: state.model, faces: state.faces };
  $("photo-readout").textContent = faces.length ? `${file.name}: ${faces.map((f) => `${f.label} ${Math.round(100 * f.score)}%`).join(", ")}` : `${file.name}: no face found`;
  const names = faces.length ? Object.keys(faces[0].probabilities) : [];
  const row = (cell, values) => el("tr", {}, ...values.map((value) => el(cell, {}, value)));
  const header = row("th", ["face", "box (x, y, w, h)", "label", "score", ...names]);
  $("photo-table").replaceChildren(...(faces.length ? [header] : []), ...faces.map((f, i) =>
    row("td", [i, f.box.join(", "), f.label, f.score.toFixed(3), ...names.map((n) => f.probabilities[n].toFixed(3))])));
  $("photo-png").disabled = $("photo-json").disabled = false;
}

function photoInput(file) { analysePhoto(file).catch(fail); }

// ---------------------------------------------------------------- video (server side)

const videoJob = { id: null, timer: null };

async function uploadVideo(file) {
  $("video-readout").textContent = `uploading ${file.name}…`;
  for (const id of ["video-result", "video-links", "video-plot"]) $(id).hidden = true;
  // Percent-encoded: a header carries Latin-1 only, and fetch refuses any other character in a file name.
  const headers = { "X-Filename": encodeURIComponent(file.name) };
  const response = await fetch("api/videos", { method: "POST", body: file, headers });
  const reply = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) { $("video-readout").textContent = `${response.status}: ${reply.error}`; return; }
  videoJob.id = reply.id;
  $("video-cancel").disabled = false;
  $("video-progress").hidden = false;
  videoJob.timer = setInterval(() => pollVideo().catch(fail), 400);
}

async function pollVideo() {
  const response = await fetch(`api/videos/${encodeURIComponent(videoJob.id)}`);
  const job = await response.json().catch(() => ({ error: response.statusText }));
  const progress = $("video-progress");
  if (!response.ok) {  // the job is gone (expired, or the server restarted): stop asking
    clearInterval(videoJob.timer);
    $("video-cancel").disabled = true;
    progress.hidden = true;
    $("video-readout").textContent = `${response.status}: ${job.error}`;
    return;
  }
  progress.max = job.frames_total || 1;
  progress.value = job.frames_done;
  $("video-readout").textContent = `${job.file}: ${job.status}, frame ${job.frames_done}${job.frames_total ? " of " + job.frames_total : ""}` + (job.error ? ` (${job.error})` : "");
  if (["done", "failed", "cancelled"].includes(job.status)) {
    clearInterval(videoJob.timer);
    $("video-cancel").disabled = true;
    progress.hidden = true;
    if (job.status === "done") {
      const base = `api/videos/${encodeURIComponent(job.id)}/`;
      $("video-result").src = base + "video.webm";
      $("video-download").href = base + "video.webm";
      $("video-csv").href = base + "faces.csv";
      $("video-plot").src = base + "timeline.png";
      for (const id of ["video-result", "video-links", "video-plot"]) $(id).hidden = false;
    }
  }
}

async function cancelVideo() {
  if (videoJob.id) await fetch(`api/videos/${encodeURIComponent(videoJob.id)}`, { method: "DELETE" });
}

// ---------------------------------------------------------------- wiring

function showView(name) {
  if (name !== "live" && live.running) stopLive();  // the camera is released when its view is left
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("active", button.dataset.view === name);
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== name;
}

async function main() {
  for (const button of document.querySelectorAll("nav button")) button.onclick = () => showView(button.dataset.view);
  $("live-start").onclick = () => startLive().catch((error) => fail(ferkitExplain(error)));
  $("live-stop").onclick = stopLive;
  $("live-snapshot").onclick = snapshot;
  $("photo-file").onchange = (event) => photoInput(event.target.files[0]);
  const drop = $("photo-drop");
  drop.ondragover = (event) => { event.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (event) => { event.preventDefault(); drop.classList.remove("over"); photoInput(event.dataTransfer.files[0]); };
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) { showView("photo"); photoInput(item.getAsFile()); }
  });
  $("photo-png").onclick = () => $("photo-canvas").toBlob((blob) => download(blob, "ferkit-photo.png"), "image/png");
  $("photo-json").onclick = () => download(jsonBlob(photoResult), "ferkit-photo.json");
  $("video-file").onchange = (event) => uploadVideo(event.target.files[0]).catch(fail);
  $("video-cancel").onclick = () => cancelVideo().catch(fail);
  const server = await fetch("api/health").then((r) => r.ok).catch(() => false);
  if (!server) $("video-tab").hidden = true;  // a static host: Live and Photo only
  await loadModels();
  // Live starts by itself where the camera permission is already granted.
  const permission = await navigator.permissions?.query({ name: "camera" }).catch(() => null);
  if (permission && permission.state === "granted") await startLive().catch((error) => fail(ferkitExplain(error)));
  booted = state.ready = true;
}

main().catch(fail);
