// The Video view: a video uploaded to the ferkit server that served this page, annotated there by the model
// chosen in the switch (ferkit.video_jobs: faces tracked, probabilities smoothed), then played here.
//
// The upload goes by XMLHttpRequest, whose upload progress events fetch() does not give.

const $ = (id) => document.getElementById(id);
// The page's side (app.js): {model(), fail(error), succeed()}.
let page = null;
const job = { id: null, timer: null };
const RESULT = ["video-result", "video-links", "video-plot", "video-plot-note"];

function stopPolling() {
  clearInterval(job.timer);
  job.timer = null;
  $("video-cancel").disabled = true;
  $("video-progress").hidden = true;
}

// POST api/videos?model=NAME -> [status, reply], reporting the upload's progress in the progress bar.
function upload(file, model) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", `api/videos?model=${encodeURIComponent(model)}`);
    // Percent-encoded: a header carries Latin-1 only, and the browser refuses any other character in a file name.
    request.setRequestHeader("X-Filename", encodeURIComponent(file.name));
    const progress = $("video-progress");
    request.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      progress.max = event.total;
      progress.value = event.loaded;
      $("video-readout").textContent = `uploading ${file.name}: ${Math.floor((100 * event.loaded) / event.total)}%`;
    };
    request.onload = () => {
      let reply;
      try { reply = JSON.parse(request.responseText); } catch { reply = { error: request.statusText }; }
      resolve([request.status, reply]);
    };
    request.onerror = () => reject(new Error(`${file.name}: the upload failed (the server went away?)`));
    request.send(file);
  });
}

async function uploadVideo(file) {
  if (!file) return;
  stopPolling();
  for (const id of RESULT) $(id).hidden = true;
  const model = page.model();
  $("video-readout").textContent = `uploading ${file.name}…`;
  $("video-progress").hidden = false;
  $("video-progress").value = 0;
  const [status, reply] = await upload(file, model);
  if (status !== 202) {
    $("video-progress").hidden = true;
    $("video-readout").textContent = `${status}: ${reply.error}`;
    return;
  }
  job.id = reply.id;
  $("video-cancel").disabled = false;
  job.timer = setInterval(() => poll().catch((error) => { stopPolling(); page.fail(error); }), 400);
}

async function poll() {
  const response = await fetch(`api/videos/${encodeURIComponent(job.id)}`);
  const state = await response.json().catch(() => ({ error: response.statusText }));
  if (!job.timer) return;  // stopped meanwhile (a new upload)
  if (!response.ok) {  // the job is gone (expired, or the server restarted): stop asking
    stopPolling();
    $("video-readout").textContent = `${response.status}: ${state.error}`;
    return;
  }
  const progress = $("video-progress");
  progress.max = state.frames_total || 1;
  progress.value = state.frames_done;
  $("video-readout").textContent = `${state.file} with ${state.model}: ${state.status}, frame ${state.frames_done}` +
    (state.frames_total ? " of " + state.frames_total : "") + (state.error ? ` (${state.error})` : "");
  if (!["done", "failed", "cancelled"].includes(state.status)) return;
  stopPolling();
  if (state.status !== "done") return;
  const base = `api/videos/${encodeURIComponent(state.id)}/`;
  $("video-result").src = base + "video.webm";
  $("video-download").href = base + "video.webm";
  $("video-csv").href = base + "faces.csv";
  $("video-plot").src = base + "timeline.png";
  const faces = state.faces_total;
  $("video-readout").textContent = `${state.file}: annotated by ${state.model}, ${state.frames_done} frames, ` +
    `${faces} face${faces === 1 ? "" : "s"}`;
  $("video-plot-note").textContent = faces > state.faces_plotted
    ? `The plot shows ${state.faces_plotted} of ${faces} faces (the lowest ids); the CSV has them all.` : "";
  for (const id of RESULT) $(id).hidden = id === "video-plot-note" && !$(id).textContent;
  page.succeed();
}

async function cancelVideo() {
  if (job.id) await fetch(`api/videos/${encodeURIComponent(job.id)}`, { method: "DELETE" });
}

export function setupVideo(hooks) {
  page = hooks;
  $("video-choose").onclick = () => $("video-file").click();
  $("video-file").onchange = (event) => {
    uploadVideo(event.target.files[0]).catch((error) => { stopPolling(); page.fail(error); });
    event.target.value = "";
  };
  $("video-cancel").onclick = () => cancelVideo().catch(page.fail);
}
