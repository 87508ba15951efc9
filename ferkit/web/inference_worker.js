// The page's inference off the main thread: a classic worker holding ONNX Runtime Web and one Pipeline
// (pipeline.js), so detection, cropping and classification never block drawing, input or scrolling.
// Driven by inference.js: messages {id, type: "create" | "analyse" | "classify" | "prepare", args}, answered with
// {id, result} or {id, error}.
/* global ort, importScripts */
importScripts("vendor/onnxruntime-web/ort.wasm.min.js");

const modules = import("./pipeline.js");  // pipeline.js is an ES module; a classic worker imports it dynamically
let pipeline = null;

const handlers = {
  async create({ wasmPaths, threads, options }) {
    ort.env.wasm.wasmPaths = wasmPaths;
    ort.env.wasm.numThreads = threads;
    const { Pipeline } = await modules;
    pipeline = await Pipeline.create(ort, options);
    return null;
  },
  analyse: ({ image, options }) => pipeline.analyse(image, options),
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
