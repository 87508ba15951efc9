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
