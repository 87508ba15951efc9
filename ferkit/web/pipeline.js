// The photo pipeline in the page, step for step as ferkit's Python path does it
// (ferkit/faces.py and ferkit/prediction.py), so the page and Predictor give the same answers:
//
//   RGBA frame -> YuNet on BGR, padded to a multiple of 32 (OpenCV's FaceDetectorYN decoding and NMS);
//   photos are searched again at twice the size for the faces the first search missed
//   -> boxes rounded half to even, clipped, sorted left to right
//   -> grayscale with OpenCV's fixed-point weights -> square crop with the model's face_margin and
//   face_offset, turned to level the eyes where face_align, edges repeated -> resize to 48x48 (area averaging when shrinking, bilinear when enlarging)
//   -> a flat crop stretched to the Training faces' brightness and contrast (face_low_contrast)
//   -> the classifier's ONNX graph -> probabilities (live frames: the model's int8 copy where it has one, faster
//   and within a few hundredths; photos: the float model, Predictor's answers).
//
// Everything runs in ONNX Runtime Web; no frame leaves the browser. The page runs a Pipeline in a Web Worker
// (inference.js, inference_worker.js); Live frames take a faster search (Pipeline.detectLive), photos this one.

import { iou } from "./geometry.js";

// YuNet's feature-map strides (the network's shape); its NMS and score floor come from index.json's detector.
const YUNET_STRIDES = [8, 16, 32];

export function roundHalfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

// The live view's detector input: about this many pixels on the frame's longest side, and a detector pass once
// the boxes last found are this many milliseconds old (see Pipeline.detectLive): every 2nd frame of a 30 fps camera
// (frames 33 ms apart, give or take a few).
export const LIVE_SIDE = 320;
export const LIVE_SEARCH_INTERVAL_MS = 60;

// RGBA ImageData -> the detector's input: planar B, G, R float32 (1, 3, H', W'), zero-padded to multiples of 32;
// with factor > 1, each factor x factor block averaged into one pixel (the live view's shrunk search).
function detectorInput(image, factor = 1) {
  const { data } = image;
  const width = Math.floor(image.width / factor), height = Math.floor(image.height / factor);
  const paddedW = Math.ceil(width / 32) * 32, paddedH = Math.ceil(height / 32) * 32;
  const plane = paddedW * paddedH;
  const blob = new Float32Array(3 * plane);
  if (factor === 1) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = (y * width + x) * 4, o = y * paddedW + x;
        blob[o] = data[i + 2];
        blob[plane + o] = data[i + 1];
        blob[2 * plane + o] = data[i];
      }
    }
    return { blob, paddedW, paddedH };
  }
  const area = factor * factor, stride = image.width * 4;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      let r = 0, g = 0, b = 0;
      for (let dy = 0; dy < factor; dy++) {
        let i = (y * factor + dy) * stride + x * factor * 4;
        for (let dx = 0; dx < factor; dx++, i += 4) { r += data[i]; g += data[i + 1]; b += data[i + 2]; }
      }
      const o = y * paddedW + x;
      blob[o] = b / area;
      blob[plane + o] = g / area;
      blob[2 * plane + o] = r / area;
    }
  }
  return { blob, paddedW, paddedH };
}

// YuNet's outputs -> [{box: [x, y, w, h] floats, score, landmarks}] after NMS, as cv::FaceDetectorYN decodes them
// with index.json's detector settings (ferkit.settings.DetectorSettings: score_floor, nms_threshold, top_k).
export function decodeYunet(outputs, paddedW, paddedH, { score_floor: floor, nms_threshold, top_k }) {
  const candidates = [];
  for (const stride of YUNET_STRIDES) {
    const cols = paddedW / stride, rows = paddedH / stride;
    const cls = outputs["cls_" + stride].data, obj = outputs["obj_" + stride].data;
    const bbox = outputs["bbox_" + stride].data, kps = outputs["kps_" + stride].data;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        const score = Math.sqrt(Math.min(Math.max(cls[i], 0), 1) * Math.min(Math.max(obj[i], 0), 1));
        if (score < floor) continue;
        const cx = (c + bbox[i * 4]) * stride, cy = (r + bbox[i * 4 + 1]) * stride;
        const w = Math.exp(bbox[i * 4 + 2]) * stride, h = Math.exp(bbox[i * 4 + 3]) * stride;
        const landmarks = [];
        for (let n = 0; n < 5; n++) landmarks.push([(kps[i * 10 + 2 * n] + c) * stride, (kps[i * 10 + 2 * n + 1] + r) * stride]);
        candidates.push({ box: [cx - w / 2, cy - h / 2, w, h], score, landmarks });
      }
    }
  }
  candidates.sort((a, b) => b.score - a.score);
  const kept = [];
  for (const candidate of candidates.slice(0, top_k)) {
    if (kept.every((k) => iou(k.box, candidate.box) <= nms_threshold)) kept.push(candidate);
  }
  return kept;
}

// Grayscale as cv2.COLOR_BGR2GRAY computes it for uint8: fixed-point ITU-R 601 weights.
// region [x0, y0, x1, y1) (default: the whole image): only those pixels are converted, the rest left 0; a frame's
// faces need only the squares their crops read (grayRegion), a few percent of a 640x480 frame.
export function toGray(image, region = [0, 0, image.width, image.height]) {
  const { width, height, data } = image;
  const gray = new Uint8Array(width * height);
  const [x0, y0, x1, y1] = region;
  for (let y = y0; y < y1; y++) {
    for (let p = y * width + x0, i = 4 * p, end = y * width + x1; p < end; p++, i += 4) {
      gray[p] = (data[i] * 4899 + data[i + 1] * 9617 + data[i + 2] * 1868 + 8192) >> 14;
    }
  }
  return { width, height, data: gray };
}

// The pixels cropFace may read for these faces: each crop's square (turned by up to 45 degrees where aligned, so
// its circumscribed square), one pixel more for bilinear sampling and rounding, within the image.
export function grayRegion(faces, image, margin, offset, align) {
  let x0 = image.width, y0 = image.height, x1 = 0, y1 = 0;
  for (const { box: [bx, by, bw, bh] } of faces) {
    const side = Math.max(bw, bh) * (1 + 2 * margin), reach = (align ? Math.SQRT2 * side / 2 : side / 2) + 2;
    const cx = bx + bw / 2, cy = by + bh / 2 + (align ? 0 : offset * side), shift = align ? Math.abs(offset * side) : 0;
    x0 = Math.min(x0, Math.floor(cx - reach - shift)); x1 = Math.max(x1, Math.ceil(cx + reach + shift));
    y0 = Math.min(y0, Math.floor(cy - reach - shift)); y1 = Math.max(y1, Math.ceil(cy + reach + shift));
  }
  const clamp = (v, n) => Math.min(n, Math.max(0, v));
  return [clamp(x0, image.width), clamp(y0, image.height), clamp(x1, image.width), clamp(y1, image.height)];
}

function clampIndex(v, n) { return v < 0 ? 0 : v >= n ? n - 1 : v; }

// cv2.resize(..., INTER_AREA) for shrinking: each output pixel averages the source area it covers. The weights
// factor into rows and columns, so the sum runs as two passes (columns, then rows) over flat typed arrays.
function resizeArea(src, sw, sh, dw, dh) {
  const out = new Uint8Array(dw * dh);
  const sx = sw / dw, sy = sh / dh;
  // For each output index: the source cells it covers (clamped) and their overlaps, flat: cells[first[i]..first[i+1]).
  const cover = (scale, dn, n) => {
    const first = new Int32Array(dn + 1), cells = [], weights = [];
    for (let i = 0; i < dn; i++) {
      const begin = i * scale, end = begin + scale;
      first[i] = cells.length;
      for (let s = Math.floor(begin); s < Math.ceil(end - 1e-9); s++) {
        const w = Math.min(end, s + 1) - Math.max(begin, s);
        if (w > 1e-9) { cells.push(clampIndex(s, n)); weights.push(w); }
      }
    }
    first[dn] = cells.length;
    return { first, cells: Int32Array.from(cells), weights: Float64Array.from(weights) };
  };
  const columns = cover(sx, dw, sw), rows = cover(sy, dh, sh);
  const across = new Float64Array(sh * dw);  // each source row, summed over each output column's cells
  for (let row = 0; row < sh; row++) {
    const base = row * sw;
    for (let x = 0; x < dw; x++) {
      let sum = 0;
      for (let k = columns.first[x]; k < columns.first[x + 1]; k++) sum += src[base + columns.cells[k]] * columns.weights[k];
      across[row * dw + x] = sum;
    }
  }
  for (let y = 0; y < dh; y++) {
    for (let x = 0; x < dw; x++) {
      let sum = 0;
      for (let k = rows.first[y]; k < rows.first[y + 1]; k++) sum += across[rows.cells[k] * dw + x] * rows.weights[k];
      out[y * dw + x] = Math.min(255, Math.max(0, roundHalfEven(sum / (sx * sy))));
    }
  }
  return out;
}

// cv2.resize(..., INTER_LINEAR) for enlarging: pixel centres aligned, edges clamped.
function resizeLinear(src, sw, sh, dw, dh) {
  const out = new Uint8Array(dw * dh);
  const sx = sw / dw, sy = sh / dh;
  for (let y = 0; y < dh; y++) {
    let fy = (y + 0.5) * sy - 0.5;
    const y0 = Math.floor(fy);
    fy -= y0;
    const ya = clampIndex(y0, sh), yb = clampIndex(y0 + 1, sh);
    for (let x = 0; x < dw; x++) {
      let fx = (x + 0.5) * sx - 0.5;
      const x0 = Math.floor(fx);
      fx -= x0;
      const xa = clampIndex(x0, sw), xb = clampIndex(x0 + 1, sw);
      const top = src[ya * sw + xa] * (1 - fx) + src[ya * sw + xb] * fx;
      const bottom = src[yb * sw + xa] * (1 - fx) + src[yb * sw + xb] * fx;
      out[y * dw + x] = Math.min(255, Math.max(0, roundHalfEven(top * (1 - fy) + bottom * fy)));
    }
  }
  return out;
}

// ferkit.faces.eye_angle: the tilt of the eye line (landmarks 0 and 1: the image-left and image-right eye).
export function eyeAngle(landmarks) {
  if (!landmarks) return 0;
  const [[rx, ry], [lx, ly]] = landmarks;
  return lx > rx ? Math.atan2(ly - ry, lx - rx) : 0;
}

// ferkit.faces.crop_face: a square of side max(w, h) * (1 + 2 margin) around the box centre moved down by
// `offset` of the side; with `align`, turned with the eye line (one bilinear similarity transform, as
// cv2.warpAffine); edges repeated; then resized to size x size.
// ferkit.faces.lift_low_contrast: a crop whose standard deviation is below belowStd, stretched linearly to
// `mean` and `std` (rounded half to even, clipped); any other crop unchanged.
export function liftLowContrast(crop, { below_std: belowStd, mean, std }) {
  let sum = 0, squares = 0;
  for (const v of crop) sum += v;
  const average = sum / crop.length;
  for (const v of crop) squares += (v - average) * (v - average);
  const spread = Math.sqrt(squares / crop.length);
  if (spread >= belowStd) return crop;
  const gain = std / Math.max(spread, 1);
  return crop.map((v) => Math.min(255, Math.max(0, roundHalfEven((v - average) * gain + mean))));
}

export function cropFace(gray, face, size, { margin, offset = 0, align = false, lowContrast = null }) {
  const [bx, by, bw, bh] = face.box;
  let cx = bx + bw / 2, cy = by + bh / 2;
  const side = Math.max(bw, bh) * (1 + 2 * margin);
  const angle = align ? eyeAngle(face.landmarks) : 0;
  const n = Math.max(1, roundHalfEven(side));
  const crop = new Uint8Array(n * n);
  if (angle) {
    const m = n, cos = Math.cos(angle), sin = Math.sin(angle), half = (m - 1) / 2, scale = side / m;
    cx -= sin * offset * side;
    cy += cos * offset * side;
    for (let v = 0; v < m; v++) {
      for (let u = 0; u < m; u++) {
        // Crop pixel (u, v) samples the image at centre + scale * R(angle) (u - half, v - half), pixel centres at integers.
        const sx = cx + scale * (cos * (u - half) - sin * (v - half)) - 0.5;
        const sy = cy + scale * (sin * (u - half) + cos * (v - half)) - 0.5;
        const x0 = Math.floor(sx), y0 = Math.floor(sy), fx = sx - x0, fy = sy - y0;
        const xa = clampIndex(x0, gray.width), xb = clampIndex(x0 + 1, gray.width);
        const ya = clampIndex(y0, gray.height) * gray.width, yb = clampIndex(y0 + 1, gray.height) * gray.width;
        const top = gray.data[ya + xa] * (1 - fx) + gray.data[ya + xb] * fx;
        const bottom = gray.data[yb + xa] * (1 - fx) + gray.data[yb + xb] * fx;
        crop[v * m + u] = Math.min(255, Math.max(0, Math.round(top * (1 - fy) + bottom * fy)));
      }
    }
  } else {
    cy += offset * side;
    const x0 = roundHalfEven(cx - side / 2), y0 = roundHalfEven(cy - side / 2);
    for (let y = 0; y < n; y++) {
      const row = clampIndex(y0 + y, gray.height) * gray.width;
      for (let x = 0; x < n; x++) crop[y * n + x] = gray.data[row + clampIndex(x0 + x, gray.width)];
    }
  }
  const resized = n > size ? resizeArea(crop, n, n, size, size) : resizeLinear(crop, n, n, size, size);
  return lowContrast && Object.keys(lowContrast).length ? liftLowContrast(resized, lowContrast) : resized;
}

// A frame resized by `scale` for one detector search (ferkit.faces._search): area averaging when shrinking,
// bilinear when enlarging; `back` maps the search's coordinates to the frame's.
function rescale(image, scale) {
  if (scale === 1) return { image, back: [1, 1] };
  const w = Math.max(1, Math.round(image.width * scale)), h = Math.max(1, Math.round(image.height * scale));
  const resize = scale < 1 ? resizeArea : resizeLinear;
  const out = new Uint8ClampedArray(w * h * 4);
  const channel = new Uint8Array(image.width * image.height);
  for (let k = 0; k < 4; k++) {
    for (let p = 0; p < channel.length; p++) channel[p] = image.data[p * 4 + k];
    const resized = k === 3 ? null : resize(channel, image.width, image.height, w, h);
    for (let p = 0; p < w * h; p++) out[p * 4 + k] = resized ? resized[p] : 255;
  }
  return { image: { width: w, height: h, data: out }, back: [image.width / w, image.height / h] };
}

// Boxes clipped to the frame (those left under 2 pixels wide or high dropped), sorted left to right.
function clipAndSort(faces, image) {
  const kept = [];
  for (const face of faces) {
    let [x, y, w, h] = face.box;
    const x1 = Math.min(image.width, x + w), y1 = Math.min(image.height, y + h);
    x = Math.max(0, x); y = Math.max(0, y);
    w = Math.max(0, x1 - x); h = Math.max(0, y1 - y);
    if (w > 1 && h > 1) kept.push({ ...face, box: [x, y, w, h] });
  }
  return kept.sort((a, b) => a.box[0] - b.box[0] || a.box[1] - b.box[1]);
}

export class Pipeline {
  // ort: the onnxruntime-web module; meta: the model's fer.meta.json (class names, input size, crop settings);
  // search: index.json's detector settings (ferkit.settings.DetectorSettings, which ferkit.faces uses).
  // modelUrl: the float classifier (photos: Predictor's answers); liveModelUrl: the model's int8 copy for live
  // frames where index.json gives one (live_url), else the float one. live: which of the two the page needs first,
  // fetched with the detector (a file that fails to load fails here); the other is fetched when first used.
  static async create(ort, { detectorUrl, modelUrl, liveModelUrl, meta, search, live = false,
                             executionProviders = ["wasm"] }) {
    const options = { executionProviders, graphOptimizationLevel: "all" };
    const pipeline = new Pipeline(ort, null, { photo: modelUrl, live: liveModelUrl || modelUrl, options }, meta, search);
    [pipeline.detector] = await Promise.all([ort.InferenceSession.create(detectorUrl, options), pipeline.prepare(live)]);
    return pipeline;
  }

  constructor(ort, detector, classifiers, meta, search) {
    const { min_face_score, max_pixels, upscale_search_min_face, confirmed_score_discount, confirm_iou,
            new_face_iou } = search;
    Object.assign(this, { ort, detector, classifiers, sessions: new Map(), meta, detectorSettings: search,
                          minFaceScore: min_face_score, maxPixels: max_pixels,
                          upscaleMinFace: upscale_search_min_face, confirmedDiscount: confirmed_score_discount,
                          confirmIou: confirm_iou, newFaceIou: new_face_iou });
  }

  // ferkit.faces.detect_faces: one search on the frame scaled to the pixel budget; with upscaleSearch (photos)
  // a second at twice that size: a face of the first that the second also sees (IoU confirmIou or more) is kept
  // from minFaceScore - confirmedDiscount, and the faces only the second finds (IoU below newFaceIou with every face)
  // from minFaceScore and upscaleMinFace up.
  async detect(image, { upscaleSearch = false } = {}) {
    const scale = Math.min(1, Math.sqrt(this.maxPixels / (image.width * image.height)));
    let faces;
    if (upscaleSearch) {
      const low = this.minFaceScore - this.confirmedDiscount;
      const first = await this.search(image, scale, low), enlarged = await this.search(image, 2 * scale, low);
      faces = first.filter((face) => face.score >= this.minFaceScore
                                     || enlarged.some((other) => iou(face.box, other.box) >= this.confirmIou));
      for (const face of enlarged) {
        const big = Math.max(face.box[2], face.box[3]) * scale >= this.upscaleMinFace;
        if (face.score >= this.minFaceScore && big && faces.every((other) => iou(face.box, other.box) < this.newFaceIou)) {
          faces.push(face);
        }
      }
    } else {
      faces = await this.search(image, scale, this.minFaceScore);
    }
    return clipAndSort(faces, image);
  }

  // One detector pass over the frame resized by `scale`: the faces scoring minScore or more, boxes (rounded) and
  // landmarks in the frame's pixels.
  async search(image, scale, minScore) {
    const { image: searched, back } = rescale(image, scale);
    const { blob, paddedW, paddedH } = detectorInput(searched);
    const input = new this.ort.Tensor("float32", blob, [1, 3, paddedH, paddedW]);
    const outputs = await this.detector.run({ [this.detector.inputNames[0]]: input });
    return decodeYunet(outputs, paddedW, paddedH, this.detectorSettings).filter((found) => found.score >= minScore).map((found) => ({
      box: found.box.map((v, i) => roundHalfEven(v * back[i % 2])), score: found.score,
      landmarks: found.landmarks.map(([lx, ly]) => [lx * back[0], ly * back[1]]),
    }));
  }

  // The classifier session for live frames or photos, created (its file fetched) on first use; one session where
  // both are the same file. A failed creation is forgotten, so the next call tries again.
  classifier(live = false) {
    const url = live ? this.classifiers.live : this.classifiers.photo;
    if (!this.sessions.has(url)) {
      const created = this.ort.InferenceSession.create(url, this.classifiers.options);
      created.catch(() => { if (this.sessions.get(url) === created) this.sessions.delete(url); });
      this.sessions.set(url, created);
    }
    return this.sessions.get(url);
  }

  // Fetches and creates the live or the photo classifier ahead of its first face.
  async prepare(live = false) { await this.classifier(live); }

  async classify(crops, { live = false } = {}) {
    const size = this.meta.input_size, names = this.meta.class_names;
    if (crops.length === 0) return [];
    const x = new Float32Array(crops.length * size * size);
    crops.forEach((crop, i) => x.set(crop, i * size * size));
    const input = new this.ort.Tensor("float32", x, [crops.length, size, size, 1]);
    const output = (await (await this.classifier(live)).run({ face: input })).probabilities.data;
    return crops.map((_, i) => Object.fromEntries(names.map((name, k) => [name, output[i * names.length + k]])));
  }

  // Live frames, for speed (docs/experiments/page-speed.md): the detector searches the frame shrunk by a whole
  // factor to about LIVE_SIDE pixels on its longest side (block averages, as cheap as a copy), and runs once the
  // boxes last found are LIVE_SEARCH_INTERVAL_MS old; the frames between classify the faces at those boxes. The
  // bound is in time, not frames, so boxes are as fresh whatever the rate frames come at: every 2nd frame of a
  // 30 fps camera, every 4th of a 60 fps one, fewer of a stream analysed faster than that. time: the frame's time in
  // ms (default: now, this thread's clock). every: a pass on every this-many frames instead (for comparisons).
  async detectLive(image, { side = LIVE_SIDE, time = performance.now(), every } = {}) {
    const sameSize = this.live && this.live.width === image.width && this.live.height === image.height;
    if (sameSize) {
      this.live.frame += 1;
      const age = time - this.live.time;  // a clock that went back (a new stream) or none: search now
      const due = every ? this.live.frame % every === 0 : !(age >= 0 && age < LIVE_SEARCH_INTERVAL_MS);
      if (!due) return this.live.faces;
    }
    const factor = Math.max(1, Math.round(Math.max(image.width, image.height) / side));
    const { blob, paddedW, paddedH } = detectorInput(image, factor);
    const input = new this.ort.Tensor("float32", blob, [1, 3, paddedH, paddedW]);
    const outputs = await this.detector.run({ [this.detector.inputNames[0]]: input });
    const found = decodeYunet(outputs, paddedW, paddedH, this.detectorSettings)
      .filter((face) => face.score >= this.minFaceScore)
      .map((face) => ({ box: face.box.map((v) => roundHalfEven(v * factor)), score: face.score,
                        landmarks: face.landmarks.map(([lx, ly]) => [lx * factor, ly * factor]) }));
    const faces = clipAndSort(found, image);
    this.live = { width: image.width, height: image.height, frame: 0, time, faces };
    return faces;
  }

  // One frame -> {faces: [{box, label, score, probabilities, detectionScore}], timings: {stage: ms}}.
  // upscaleSearch: also search the frame at twice its size (photos; the live view skips it for speed).
  // live: the live view's faster search (detectLive) and classifier (the int8 copy where the model has one); photos
  // and Predictor-equal answers leave it off. liveClassifier false: live frames through the float classifier
  // (benchmarks/bench_page.py's comparison).
  async analyse(image, { upscaleSearch = false, live = false, liveSide, time, detectEvery,
                         liveClassifier = true } = {}) {
    const t0 = performance.now();
    const found = live ? await this.detectLive(image, { side: liveSide, time, every: detectEvery })
      : await this.detect(image, { upscaleSearch });
    const t1 = performance.now();
    const { face_margin: margin, face_offset: offset, face_align: align, face_low_contrast: lowContrast } = this.meta;
    const gray = toGray(image, grayRegion(found, image, margin, offset, align));
    const crops = found.map((face) => cropFace(gray, face, this.meta.input_size, { margin, offset, align, lowContrast }));
    const t2 = performance.now();
    const probabilities = await this.classify(crops, { live: live && liveClassifier });
    const t3 = performance.now();
    const faces = found.map((face, i) => {
      const entries = Object.entries(probabilities[i]);
      const [label, score] = entries.reduce((best, entry) => (entry[1] > best[1] ? entry : best));
      return { box: face.box, detectionScore: face.score, landmarks: face.landmarks, label, score, probabilities: probabilities[i] };
    });
    return { faces, timings: { detector: t1 - t0, crop: t2 - t1, classifier: t3 - t2 } };
  }
}
