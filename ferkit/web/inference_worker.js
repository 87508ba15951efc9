// The page's inference off the main thread: a classic worker holding ONNX Runtime Web and one Pipeline
// (pipeline.js), so detection, cropping and classification never block drawing, input or scrolling.
// Driven by inference.js: messages {id, type: "create" | "analyse" | "analyseFrame" | "classify" | "prepare", args},
// answered with {id, result} or {id, error}.
/* global ort, importScripts */
importScripts("vendor/onnxruntime-web/ort.wasm.min.js");

const modules = import("./pipeline.js");  // pipeline.js is an ES module; a classic worker imports it dynamically
let pipeline = null;
let spare = null;  // the last frame's pixel buffer, for the next frame of the same size

// A VideoFrame's pixels as {width, height, data: RGBA bytes, shown: [width, height] the video shows it at},
// copied into the spare buffer where it fits (a frame analysed meanwhile holds it: then a new one). The frame is
// closed. A camera the browser scales (a 1280x720 one asked for 640 wide) gives its full-size pixels here.
async function framePixels(frame) {
  const { width, height } = frame.visibleRect, size = width * height * 4;
  const shown = [frame.displayWidth, frame.displayHeight];  // read before the frame is closed
  let data = null;
  try {
    if (frame.allocationSize({ format: "RGBA" }) !== size) throw new Error("rows with padding");
    data = spare && spare.length === size ? spare : new Uint8ClampedArray(size);
    spare = null;
    await frame.copyTo(data, { format: "RGBA" });
  } catch (error) {
    if (data) spare = data;
    const { NO_FRAME_COPY } = await import("./inference.js");  // the words inference.js falls back on
    throw new Error(`${NO_FRAME_COPY}: ${(error && error.message) || error}`);
  } finally {
    frame.close();
  }
  return { width, height, data, shown };
}

// Faces found on a frame's full-size pixels, in the coordinates of the size the video shows it at (the page's).
function toShownSize(faces, image, round) {
  const sx = image.shown[0] / image.width, sy = image.shown[1] / image.height;
  if (sx === 1 && sy === 1) return faces;
  return faces.map((face) => ({ ...face, box: face.box.map((v, i) => round(v * (i % 2 ? sy : sx))),
                                landmarks: face.landmarks?.map(([x, y]) => [x * sx, y * sy]) }));
}

const handlers = {
  async create({ wasmPaths, threads, options }) {
    ort.env.wasm.wasmPaths = wasmPaths;
    ort.env.wasm.numThreads = threads;
    const { Pipeline } = await modules;
    pipeline = await Pipeline.create(ort, options);
    return null;
  },
  analyse: ({ image, options }) => pipeline.analyse(image, options),
  async analyseFrame({ frame, options }) {
    const started = performance.now(), image = await framePixels(frame), read = performance.now() - started;
    try {
      const result = await pipeline.analyse(image, options);
      const faces = toShownSize(result.faces, image, (await modules).roundHalfEven);
      return { faces, timings: { frame: read, ...result.timings } };
    } finally {
      spare = image.data;
    }
  },
  classify: ({ crops, options }) => pipeline.classify(crops, options),
  prepare: async ({ live }) => { await pipeline.prepare(live); return null; },
};

self.onmessage = async ({ data: { id, type, args } }) => {
  try {
    self.postMessage({ id, result: await handlers[type](args) });
  } catch (error) {
    self.postMessage({ id, error: String((error && error.message) || error) });
  }
};
