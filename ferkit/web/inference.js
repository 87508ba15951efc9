// The pipeline the page uses: pipeline.js's Pipeline run in a Web Worker (inference_worker.js), with the same
// analyse() and classify(), so the page never blocks on inference; in this thread where no worker can start.
import { Pipeline } from "./pipeline.js";

class WorkerPipeline {
  constructor(worker) {
    Object.assign(this, { worker, pending: new Map(), nextId: 0, retired: false });
    worker.onmessage = ({ data: { id, result, error } }) => {
      const { resolve, reject } = this.pending.get(id);
      this.pending.delete(id);
      error === undefined ? resolve(result) : reject(new Error(error));
      if (this.retired && this.pending.size === 0) worker.terminate();
    };
    worker.onerror = (event) => {
      for (const { reject } of this.pending.values()) reject(new Error(event.message || "the inference worker failed"));
      this.pending.clear();
    };
  }

  call(type, args, transfer = []) {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, type, args }, transfer);
    });
  }

  // image: ImageData (or {width, height, data: RGBA bytes}); a live frame's pixels are handed over, not copied
  // (the caller's ImageData is empty afterwards), a photo's copied.
  analyse(image, options = {}) {
    const plain = { width: image.width, height: image.height, data: image.data };
    return this.call("analyse", { image: plain, options }, options.live ? [image.data.buffer] : []);
  }

  // source: a <video> or <canvas> showing the frame. Its pixels are read in the worker: a VideoFrame handed over
  // and copied there into a buffer kept from frame to frame (no copy on this thread, no new buffer each frame);
  // where this browser cannot (no VideoFrame, or no RGBA copy of one), read here as before.
  async analyseSource(source, options = {}) {
    if (this.frames !== false && typeof VideoFrame === "function") {
      let frame = null;
      try {
        frame = new VideoFrame(source, { timestamp: 0 });
        return await this.call("analyseFrame", { frame, options }, [frame]);
      } catch (error) {
        frame?.close();  // still here where the call never handed it over
        // No frame made (a source not showing one yet): this frame is read here. The worker could not copy one:
        // every frame is, from now on. Anything else: the analysis failed.
        if (frame && !String(error.message).startsWith(NO_FRAME_COPY)) throw error;
        if (frame) this.frames = false;
      }
    }
    return readAndAnalyse(this, source, options);
  }

  // options.live: the live classifier (the model's int8 copy where it has one), else the photo one (float).
  classify(crops, options = {}) { return this.call("classify", { crops, options }); }

  // Creates (fetches) the live or the photo classifier ahead of its first face.
  prepare(live) { return this.call("prepare", { live }); }

  // Ends the worker once the calls it is answering are done (a model switch replaces the pipeline).
  retire() {
    this.retired = true;
    if (this.pending.size === 0) this.worker.terminate();
  }
}

// The worker's answer where it cannot copy a VideoFrame's pixels (analyseSource then reads them in the page).
export const NO_FRAME_COPY = "no RGBA copy of a VideoFrame";

// A <video> or <canvas>'s frame as ImageData, read in this thread (through one canvas, kept for the next frame).
let readCanvas = null;
export function readPixels(source) {
  const width = source.videoWidth || source.width, height = source.videoHeight || source.height;
  readCanvas ??= document.createElement("canvas");
  Object.assign(readCanvas, { width, height });
  const context = readCanvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(source, 0, 0);
  return context.getImageData(0, 0, width, height);
}

async function readAndAnalyse(pipeline, source, options) {
  const started = performance.now(), image = readPixels(source), read = performance.now() - started;
  const result = await pipeline.analyse(image, options);
  return { ...result, timings: { frame: read, ...result.timings } };
}

// One frame of `source` (a <video> or <canvas>) through any pipeline createPipeline made -> pipeline.analyse's
// {faces, timings}, timings.frame: the pixels' read. The worker's pipeline reads them itself
// (WorkerPipeline.analyseSource); the in-page one from readPixels.
export function analyseSource(pipeline, source, options = {}) {
  return pipeline.analyseSource ? pipeline.analyseSource(source, options) : readAndAnalyse(pipeline, source, options);
}

// Pipeline.create's arguments; the runtime's threads and file location are taken from `ort.env.wasm`. The caller
// retires the pipeline it replaces (and one it no longer wants) with retire(), where it has one.
export async function createPipeline(ort, options) {
  const wasmPaths = ort.env.wasm.wasmPaths, threads = ort.env.wasm.numThreads;
  let created;
  try {
    if (new URLSearchParams(self.location.search).get("worker") === "0") throw new Error("?worker=0 in the address");
    const worker = new WorkerPipeline(new Worker(new URL("./inference_worker.js", import.meta.url)));
    await worker.call("create", { wasmPaths, threads, options });
    created = worker;
  } catch (error) {
    console.warn("inference in the page's thread: no worker", error);
    created = await Pipeline.create(ort, options);
  }
  return created;
}
