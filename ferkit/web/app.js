// The ferkit page: Live (webcam), Photo and Video views over one in-page pipeline (pipeline.js).
//
// camera.js, framerate.js and drawing.js come before it as classic scripts (their ferkit* functions are shared
// with the notebook widget and Colab, where modules cannot be imported).
//
// Scripting hook: window.ferkitState = {fps, latencyMs, model, faces: [{box, label, score, probabilities}]},
// updated on every analysed frame and photo, plus `ready` once the models are loaded and `error` if a step fails,
// and `session`, the Live session's history (session.js) that the session panel draws and exports.
import { analyseSource, createPipeline } from "./inference.js";
import { el, download, jsonBlob } from "./dom.js";
import { clearPhoto, setupPhoto } from "./photo.js";
import { setupVideo } from "./video.js";
import { Tracker } from "./tracking.js";
import { Session } from "./session.js";
import { SessionPanel } from "./session_panel.js";
import { explainSource, fillSourcePicker, openSource, parseSource } from "./sources.js";

const $ = (id) => document.getElementById(id);
const state = (window.ferkitState = { ready: false, fps: 0, latencyMs: {}, model: null, faces: [], error: null,
                                      threads: 1, frames: 0 });
let index = null;
let pipeline = null;
let booted = false;  // `ready` is first set once start-up (and the live view's auto-start) is decided

// The header's status line: one line, cut where long (the title holds it all); an error is shown whole.
function setStatus(text, problem = false) {
  Object.assign($("status"), { textContent: text, title: text });
  $("status").classList.toggle("problem", problem);
}

function fail(error) {
  state.error = String((error && error.message) || error);
  setStatus("error: " + state.error, true);
  console.error(error);
}

const readyText = () => `ready · WASM, ${state.threads} thread${state.threads > 1 ? "s" : ""}`;

// The next success after an error takes the error out of the header (the console keeps it).
function succeed() {
  if (state.error === null) return;
  state.error = null;
  setStatus(readyText());
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
  // Each option names its measured accuracy (PrivateTest, where recorded) and which one is the fast default.
  for (const entry of index.models) {
    const accuracy = entry.accuracy?.PrivateTest ? ` · ${(100 * entry.accuracy.PrivateTest).toFixed(1)}%` : "";
    select.add(new Option(`${entry.name}${accuracy}${index.models.length > 1 && entry.name === index.default_model ? " · fastest" : ""}`, entry.name));
  }
  select.onchange = () => { clearPhoto(); useModel(select.value).catch(fail); };  // the photo was another model's
  // ?model=NAME picks the model; otherwise index.json's default (the fast fer_lite where it is served). Only the
  // chosen model is fetched; another is fetched when the switch selects it.
  const asked = new URLSearchParams(location.search).get("model");
  const first = index.models.find((m) => m.name === asked) || index.models.find((m) => m.name === index.default_model)
    || index.models[0];
  select.value = first.name;
  await useModel(first.name);
  if (asked && first.name !== asked) {  // a mistyped or removed name: say which model runs instead
    const served = index.models.map((m) => m.name).join(", ");
    setStatus(`no model named "${asked}" here (${served}); running ${first.name}`, true);
  }
}

// The model info line, what matters first (a narrow screen shows its start): accuracy, what each view downloads
// and runs, then size and architecture, then the speed measured here.
function describe(entry) {
  const parts = [];
  if (entry.accuracy && entry.accuracy.PrivateTest) parts.push(`PrivateTest ${(100 * entry.accuracy.PrivateTest).toFixed(1)}%`);
  parts.push(entry.live_url ? `Live: int8 copy, ${entry.live_megabytes} MB · Photo: float, ${entry.onnx_megabytes} MB`
    : `${entry.onnx_megabytes} MB`);
  parts.push(`${(entry.parameters / 1e6).toFixed(1)}M parameters`, entry.architecture);
  const measured = entry.classifierMs || {};
  for (const [kind, ms] of Object.entries(measured)) {
    parts.push(`${ms.toFixed(1)} ms per face here${entry.live_url ? ` (${kind === "live" ? "Live, int8" : "Photo, float"})` : ""}`);
  }
  return parts.join(" · ");
}

// The view shown decides which classifier a model needs: Live runs the model's int8 copy where index.json gives
// one (live_url), Photo the float model. Each is fetched when its view first needs it; its speed as measured here
// and now (one face through it, median of 5 after a warm-up) goes into the model info.
const needsLiveClassifier = (view) => view !== "photo";

async function prepareClassifier(view) {
  const entry = index.models.find((m) => m.name === state.model), live = needsLiveClassifier(view);
  const kind = live && entry.live_url ? "live" : "photo", mine = pipeline;
  entry.classifierMs ??= {};
  if (entry.classifierMs[kind] !== undefined) return;
  const face = new Uint8Array(entry.input_size * entry.input_size).fill(128);
  const times = [];
  for (let i = 0; i < 6; i++) {
    if (pipeline !== mine) return;  // switched meanwhile: the replaced pipeline answers no more calls
    const started = performance.now();
    await mine.classify([face], { live });
    if (i) times.push(performance.now() - started);
  }
  if (pipeline !== mine) return;  // the model was switched meanwhile
  entry.classifierMs[kind] = times.sort((a, b) => a - b)[2];
  $("model-info").textContent = $("model-info").title = describe(entry);
}

// Each choice of model is numbered: only the latest one chosen takes over when it has loaded, so switches made in
// quick succession end on the model the switch shows, whatever order their files arrive in.
let modelChoice = 0;

async function useModel(name) {
  const choice = ++modelChoice, entry = index.models.find((m) => m.name === name);
  setStatus(`loading ${name}…`);
  state.ready = false;
  let created;
  try {
    created = await createPipeline(ort, { detectorUrl: index.detector.url, modelUrl: entry.url,
                                          liveModelUrl: entry.live_url, live: needsLiveClassifier(shownView()),
                                          meta: entry, search: index.detector });
  } catch (error) {
    if (choice !== modelChoice) return;  // a later choice is loading, or loaded: this one no longer matters
    if (state.model) $("model").value = state.model;  // the switch shows the model that still runs
    throw error;
  }
  if (choice !== modelChoice) {
    created.retire?.();
    return;
  }
  const replaced = pipeline;
  pipeline = created;
  if (replaced && replaced !== created) replaced.retire?.();
  state.model = name;
  state.ready = booted;
  liveModelChanged(entry);
  $("model-info").textContent = $("model-info").title = describe(entry);
  await prepareClassifier(shownView());
  state.error = null;
  setStatus(readyText());
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

// ---------------------------------------------------------------- live

// The live view's faces keep their id across frames and show smoothed probabilities, as a video's do in Python
// (tracking.js); the session (session.js) records them. In aggregate-only mode faces carry no id at all.
function followFaces(faces, now) {
  const followed = live.tracker.update(faces);
  faces.forEach((face, i) => {
    const { id, probabilities } = followed[i];
    if (!live.session.aggregateOnly) face.id = id;
    face.probabilities = probabilities;
    face.label = Object.keys(probabilities).reduce((a, b) => (probabilities[b] > probabilities[a] ? b : a));
    face.score = probabilities[face.label];
  });
  live.session.record(now, faces);
}

const live = { camera: null, running: false, opening: false, overlay: null, meter: null, stageMs: {},
               tracker: null, session: null, source: null };
let panel = null;  // the session panel (session_panel.js), made in main()

async function startLive() {
  if (live.running || live.opening) return;  // a second click while the camera opens opens no second camera
  live.opening = true;
  $("live-start").disabled = true;
  const stage = $("live-stage");
  // The picked camera or a shared window or screen (sources.js); a source that ends by itself stops the view.
  const source = parseSource($("live-source").value);
  try {
    live.camera = await openSource(stage, source, { width: 640, onEnded: () => live.running && stopLive() });
  } catch (error) {
    $("live-start").disabled = false;
    throw new Error(explainSource(error, source));
  } finally {
    live.opening = false;
  }
  if (source.kind === "camera") fillSourcePicker($("live-source"));  // the cameras' names, now that one is allowed
  live.overlay = ferkitOverlay(live.camera);
  watchNewFrames(live.camera.video);
  live.source = `${source.kind}: ${live.camera.label}`;
  newSession();
  panel.running(true);
  live.running = true;
  $("live-stop").disabled = $("live-snapshot").disabled = false;
  requestAnimationFrame(liveStep);
}

// The readout's stage times, each averaged over about the last ten frames: the detector runs on some frames only
// (Pipeline.detectLive), so the last frame alone would show it now at 0 ms, now at its whole cost.
function averageStages(latencyMs) {
  for (const [stage, ms] of Object.entries(latencyMs)) {
    live.stageMs[stage] = live.stageMs[stage] === undefined ? ms : 0.9 * live.stageMs[stage] + 0.1 * ms;
  }
  return live.stageMs;
}

// A new session: ids from 0, no history, a new frame rate.
function newSession() {
  live.tracker = new Tracker(index.tracking);
  live.meter = ferkitFrameRateMeter();
  live.stageMs = {};
  const { class_names: classNames } = index.models.find((m) => m.name === state.model);
  live.session = state.session = new Session({ classNames, aggregateOnly: panel.aggregateOnly,
    settings: { model: state.model, source: live.source, tracking: index.tracking } });
  panel.show(live.session);
}

// The model switched while Live runs: the session goes on with the new model where it names the same classes (each
// frame records its model), and starts anew where it does not (its counts and exports are per class).
function liveModelChanged(entry) {
  if (!live.running || !live.session) return;
  const names = live.session.settings.classNames;
  if (names.length === entry.class_names.length && names.every((name, i) => name === entry.class_names[i])) {
    live.session.switchModel(entry.name);
    live.tracker.restartSmoothing();
  } else {
    newSession();
  }
}

function stopLive() {
  live.running = false;
  ferkitClose(live.camera, null);
  $("live-stage").replaceChildren();
  $("live-start").disabled = false;
  $("live-stop").disabled = $("live-snapshot").disabled = true;
  $("live-bars").replaceChildren();  // a stopped camera's faces and frame rate are not shown as current
  $("live-readout").textContent = "";
  publish([], {}, 0);
  panel.running(false);  // the session stays for review and export until the next start
}

// The tracker counts missed frames as Python's video path does, in frames of the video: so each camera frame is
// analysed once (requestVideoFrameCallback says when a new one is shown), not once per screen refresh, which would
// end the track of someone who looks away for a fraction of a second. Where the callback is missing, or no frame
// has come for STALE_FRAME_MS, the loop analyses what it has.
const STALE_FRAME_MS = 250;

function watchNewFrames(video) {
  live.frameShownAt = live.frameAnalysedAt = -Infinity;
  if (!video.requestVideoFrameCallback) return;
  const onFrame = (now) => {
    live.frameShownAt = now;
    if (live.camera?.video === video) video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

function newFrameReady(now) {
  return live.frameShownAt > live.frameAnalysedAt || now - live.frameAnalysedAt >= STALE_FRAME_MS;
}

async function liveStep() {
  if (!live.running || !pipeline) return;
  const video = live.camera.video, session = live.session, analyser = pipeline;
  if (video.readyState >= 2 && video.videoWidth && newFrameReady(performance.now())) {
    live.frameAnalysedAt = performance.now();
    try {
      const t0 = performance.now(), width = video.videoWidth, height = video.videoHeight;
      const { faces, timings } = await analyseSource(analyser, video, { live: true });
      const t2 = performance.now();
      // Stopped (or stopped and started again) while this frame was analysed: it belongs to no session, and the
      // new session's loop is already running. The model switched meanwhile: the frame is the old model's.
      if (!live.running || live.session !== session) return;
      if (pipeline !== analyser) { requestAnimationFrame(liveStep); return; }
      followFaces(faces, t2);
      live.overlay.width = width;
      live.overlay.height = height;
      ferkitDrawFaces(live.overlay.getContext("2d"), faces, palette());
      drawBars($("live-bars"), faces);
      panel.refresh();
      const t3 = performance.now();
      const fps = live.meter.tick(t3);
      const latencyMs = { ...timings, drawing: t3 - t2, total: t3 - t0 };
      state.frames += 1;
      publish(faces, latencyMs, fps);
      succeed();
      $("live-readout").textContent = `${ferkitFrameRateText(fps)} · ` + Object.entries(averageStages(latencyMs))
        .map(([k, v]) => `${k} ${v.toFixed(1)} ms`).join(" · ");
    } catch (error) {
      fail(error);
    }
  }
  requestAnimationFrame(liveStep);
}

function snapshot() {
  const canvas = document.createElement("canvas");
  canvas.width = live.camera.video.videoWidth;
  canvas.height = live.camera.video.videoHeight;
  const context = canvas.getContext("2d");
  context.drawImage(live.camera.video, 0, 0);
  context.drawImage(live.overlay, 0, 0);
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  canvas.toBlob((blob) => download(blob, `ferkit-${stamp}.png`), "image/png");
  download(jsonBlob({ model: state.model, time: stamp, faces: state.faces }), `ferkit-${stamp}.json`);
}

// ---------------------------------------------------------------- photo and video: photo.js, video.js

// ---------------------------------------------------------------- wiring

function showView(name) {
  if (name !== "live" && live.running) stopLive();  // the camera is released when its view is left
  for (const button of document.querySelectorAll("nav button")) {
    const chosen = button.dataset.view === name;
    button.classList.toggle("active", chosen);
    button.setAttribute("aria-selected", String(chosen));
    button.tabIndex = chosen ? 0 : -1;  // tabs: Tab reaches the chosen one, the arrow keys the others
  }
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== name;
  if (pipeline && name !== "video") prepareClassifier(name).catch(fail);  // the view's classifier, fetched ahead
}

const shownView = () => document.querySelector("nav button.active")?.dataset.view || "live";

async function main() {
  panel = new SessionPanel({ palette, download });
  fillSourcePicker($("live-source"));
  navigator.mediaDevices?.addEventListener?.("devicechange", () => fillSourcePicker($("live-source")));
  for (const button of document.querySelectorAll("nav button")) button.onclick = () => showView(button.dataset.view);
  $("tabs").onkeydown = (event) => {  // the WAI-ARIA tabs pattern: left and right arrows move between the tabs
    const tabs = [...document.querySelectorAll("nav button")].filter((tab) => !tab.hidden);
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = tabs[(tabs.indexOf(document.activeElement) + step + tabs.length) % tabs.length];
    showView(next.dataset.view);
    next.focus();
  };
  $("live-start").onclick = () => startLive().catch((error) => fail(ferkitExplain(error)));
  $("live-stop").onclick = stopLive;
  $("live-snapshot").onclick = snapshot;
  const model = () => state.model;
  setupPhoto({ pipeline: () => pipeline, index: () => index, model, publish, palette, fail, succeed, showView });
  setupVideo({ model, fail, succeed });
  const server = await fetch("api/health").then((r) => r.ok).catch(() => false);
  if (!server) $("video-tab").hidden = true;  // a static host: Live and Photo only
  await loadModels();
  // Live starts by itself where the camera permission is already granted.
  const permission = await navigator.permissions?.query({ name: "camera" }).catch(() => null);
  if (permission && permission.state === "granted") await startLive().catch((error) => fail(ferkitExplain(error)));
  booted = state.ready = true;
}

// For benchmarks/bench_page.py: one live-view analysis of a canvas's frame, as fast as the page takes them
// (not paced by a camera) -> the faces found.
// options: pipeline.analyse's, to compare settings (default: the live view's, with its classifier: the model's int8
// copy where index.json gives one).
window.ferkitAnalyseFrame = async (canvas, options = { live: true }) => {
  return (await analyseSource(pipeline, canvas, options)).faces;
};

main().catch(fail);
