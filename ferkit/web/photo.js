// The Photo view: a photo from the disk ("choose a file", a real button), a drop or the clipboard.
//
// scale-worker.js decodes it and scales it to the detector's pixel budget (index.json detector.max_pixels, the
// copy ferkit.faces.detect_faces searches) off the page's thread, and refuses one over ferkit's pixel limit
// (index.json max_image_pixels, as `--max-pixels`); the page's pipeline then finds and classifies the faces.
// Boxes are reported in the original photo's pixels; the canvas shows the scaled copy.
import { el, download, jsonBlob } from "./dom.js";

const $ = (id) => document.getElementById(id);
// The page's side (app.js): {pipeline(), index(), publish(faces, latencyMs), palette(), fail(error), succeed(),
// showView(name)}.
let page = null;
let result = null;  // what "Download JSON" saves
let scaler = null;
let current = 0;  // the photo being analysed: a later photo, or a model switch, makes an earlier answer stale

function busy(text) {
  $("photo-progress").hidden = !text;
  $("photo-drop").setAttribute("aria-busy", String(Boolean(text)));
  if (text) $("photo-readout").textContent = text;
}

// Removes the previous photo, its table and its downloads (a new photo, a failed one, a model switch).
export function clearPhoto() {
  current += 1;
  result = null;
  const canvas = $("photo-canvas");
  canvas.width = canvas.height = 0;
  canvas.hidden = true;
  $("photo-table").replaceChildren();
  $("photo-readout").textContent = "";
  $("photo-png").disabled = $("photo-json").disabled = true;
  busy("");
}

// file -> {image: ImageData at most the budget, originalWidth, originalHeight}, or throws with the reason.
function scaled(file, maxImagePixels, budgetPixels) {
  scaler ??= new Worker(new URL("./scale-worker.js", import.meta.url));
  return new Promise((resolve, reject) => {
    scaler.onmessage = ({ data }) => {
      if (data.error) reject(Object.assign(new Error(data.error), { refused: Boolean(data.refused) }));
      else resolve({ ...data, image: new ImageData(data.data, data.width, data.height) });
    };
    scaler.onerror = (event) => reject(new Error(event.message || "the photo could not be read"));
    scaler.postMessage({ file, maxImagePixels, budgetPixels });
  });
}

async function analysePhoto(file) {
  clearPhoto();
  const mine = current;
  if (!file || !file.type.startsWith("image/")) {
    $("photo-readout").textContent = `${file ? file.name : "that"}: not an image`;
    return;
  }
  const index = page.index();
  busy(`reading ${file.name}…`);
  let photo;
  try {
    photo = await scaled(file, index.max_image_pixels, index.detector.max_pixels);
  } catch (error) {
    if (mine === current) { busy(""); $("photo-readout").textContent = error.message; }
    return;
  }
  if (mine !== current) return;
  const { image, originalWidth, originalHeight } = photo;
  const scale = image.width / originalWidth;  // 1, or the factor the copy was scaled by
  const resized = scale < 1 ? ` (scaled from ${originalWidth}x${originalHeight} to ${image.width}x${image.height})` : "";
  busy(`finding faces in ${file.name}${resized}…`);
  const canvas = $("photo-canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.putImageData(image, 0, 0);
  canvas.hidden = false;
  const started = performance.now();
  const { faces, timings } = await page.pipeline().analyse(image, { upscaleSearch: true });
  if (mine !== current) return;
  busy("");
  const back = (box) => box.map((v, i) => Math.round(v / (i % 2 ? image.height / originalHeight : scale)));
  const found = faces.map((face) => ({ ...face, box: scale < 1 ? back(face.box) : face.box }));
  page.publish(found, { ...timings, total: performance.now() - started });
  ferkitDrawFaces(context, faces, page.palette());
  result = { file: file.name, model: page.model(), width: originalWidth, height: originalHeight, faces: found.map(
    ({ box, label, score, probabilities }) => ({ box, label, score, probabilities })) };
  $("photo-readout").textContent = (found.length ? `${file.name}: ${found.map((f) => `${f.label} ${Math.round(100 * f.score)}%`).join(", ")}`
                                                 : `${file.name}: no face found`) + resized;
  const names = found.length ? Object.keys(found[0].probabilities) : [];
  const row = (cell, values) => el("tr", {}, ...values.map((value) => el(cell, {}, value)));
  const header = row("th", ["face", "box (x, y, w, h)", "label", "score", ...names]);
  $("photo-table").replaceChildren(...(found.length ? [header] : []), ...found.map((f, i) =>
    row("td", [i, f.box.join(", "), f.label, f.score.toFixed(3), ...names.map((n) => f.probabilities[n].toFixed(3))])));
  $("photo-png").disabled = $("photo-json").disabled = false;
  page.succeed();
}

export function photoInput(file) {
  analysePhoto(file).catch((error) => { clearPhoto(); page.fail(error); });
}

export function setupPhoto(hooks) {
  page = hooks;
  $("photo-choose").onclick = () => $("photo-file").click();
  $("photo-file").onchange = (event) => { photoInput(event.target.files[0]); event.target.value = ""; };
  const drop = $("photo-drop");
  drop.ondragover = (event) => { event.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (event) => { event.preventDefault(); drop.classList.remove("over"); photoInput(event.dataTransfer.files[0]); };
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) { page.showView("photo"); photoInput(item.getAsFile()); }
  });
  $("photo-png").onclick = () => $("photo-canvas").toBlob((blob) => download(blob, "ferkit-photo.png"), "image/png");
  $("photo-json").onclick = () => download(jsonBlob(result), "ferkit-photo.json");
}
