"""ferkit's page against @vladmandic/face-api's, side by side in one headless Chromium.

    python benchmarks/bench_page.py [--seconds 4] [--rounds 3] [--levers]

Both pages run in the same Chromium (WASM, as many threads as each takes), each
exposing one function that analyses one frame from a canvas; the benchmark
calls it back to back for ``--seconds`` (frames as fast as the page takes
them, not paced by a camera), arms interleaved round by round so load on the
machine hits them alike. Frames are real faces (the labelled photos of
``--photos``) on a grey 640x480 background: one face, and a group of six.
Then each page is opened fresh (empty cache) with a fake camera showing one
face: bytes transferred (compressed, as sent) until the network is idle, and
time from navigation to the first labelled face.

face-api is installed by this script, with npm, into checkpoints/face-api
(git-ignored): ``@vladmandic/face-api`` (its weights are inside the package)
and the ``@tensorflow/tfjs-backend-wasm`` files its bundled TensorFlow.js
needs; its page uses the tiny face detector at 224 and the expression net.
It is served as plain files with the same cross-origin isolation headers as
ferkit's (both may use WASM threads), uncompressed (as a plain host would).

``--levers`` adds rows for the live view's speed levers (detector input size,
detection every k frames, the worker) on ``fer_lite``. A model with an int8
copy for the Live view (``python -m ferkit quantize``) gets a second row: the
same live path through its float classifier.
"""

from __future__ import annotations

import argparse
import base64
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from common import CHILD_ENV, CHROMIUM, PAGE_ARGS, ROOT, free_port, wait_for, write_y4m

FACE_API = ROOT / "checkpoints" / "face-api"
FACE_API_DIST = "node_modules/@vladmandic/face-api"
#: The photos the frames are made of: one per class, the first by name (deterministic).
GROUP_CLASSES = ("happy", "neutral", "surprise", "sad", "angry", "fear")

PEER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>face-api peer</title></head>
<body><video id="camera" autoplay muted playsinline width="640" height="480"></video>
<script type="module">
import * as faceapi from "./%(dist)s/dist/face-api.esm.js";
const state = window.peerState = { ready: false, firstLabelMs: null, error: null };
const options = new faceapi.TinyFaceDetectorOptions({ inputSize: 224, scoreThreshold: 0.5 });
window.peerAnalyseFrame = (canvas) => faceapi.detectAllFaces(canvas, options).withFaceExpressions();
async function main() {
  faceapi.tf.setWasmPaths(new URL("./node_modules/@tensorflow/tfjs-backend-wasm/dist/", location.href).href);
  await faceapi.tf.setBackend("wasm");
  await faceapi.tf.ready();
  await faceapi.nets.tinyFaceDetector.load("./%(dist)s/model/");
  await faceapi.nets.faceExpressionNet.load("./%(dist)s/model/");
  state.ready = true;
  if (!new URLSearchParams(location.search).has("camera")) return;
  const video = document.getElementById("camera");
  video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
  await video.play();
  while (state.firstLabelMs === null) {
    const faces = await faceapi.detectAllFaces(video, options).withFaceExpressions();
    if (faces.length) state.firstLabelMs = performance.now();
  }
}
main().catch((error) => { state.error = String(error); });
</script></body></html>
""" % {"dist": FACE_API_DIST}


def install_face_api(folder: Path) -> str:
    """npm-install face-api and the TensorFlow.js WASM files it needs into ``folder``; returns its version."""
    package = folder / FACE_API_DIST / "package.json"
    if not package.exists():
        folder.mkdir(parents=True, exist_ok=True)
        npm = ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder)]
        subprocess.run(npm + ["@vladmandic/face-api"], check=True)
    meta = json.loads(package.read_text())
    wasm = folder / "node_modules/@tensorflow/tfjs-backend-wasm/package.json"
    if not wasm.exists():  # the same TensorFlow.js version face-api bundles
        tfjs = meta["devDependencies"]["@tensorflow/tfjs-backend-wasm"].lstrip("^~")
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(folder),
                        f"@tensorflow/tfjs-backend-wasm@{tfjs}"], check=True)
    (folder / "index.html").write_text(PEER_PAGE)
    return meta["version"]


class IsolatedFiles(SimpleHTTPRequestHandler):
    """Plain files with cross-origin isolation (WASM threads), as ferkit's server sends them."""

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, *args):
        pass


def frames(photos: Path) -> dict[str, np.ndarray]:
    """{"one face": 640x480 BGR, "six faces": 640x480 BGR}: labelled photos (tight face crops) on grey; the
    single face 260 pixels high, the six 130, each photo the first of its class 150 pixels or more high."""
    import cv2

    chosen = []
    for name in GROUP_CLASSES:
        for path in sorted((photos / name).glob("*.jpg")):
            image = cv2.imread(str(path))
            if image is not None and image.shape[0] >= 150:
                chosen.append(image)
                break
    one = np.full((480, 640, 3), 70, np.uint8)
    one[110:370, 190:450] = cv2.resize(chosen[0], (260, 260))
    group = np.full((480, 640, 3), 70, np.uint8)
    for k, image in enumerate(chosen):
        row, col = divmod(k, 3)
        y, x = 75 + row * 200, 55 + col * 200
        group[y:y + 130, x:x + 130] = cv2.resize(image, (130, 130))
    return {"one face": one, "six faces": group}


def group_cells() -> list[tuple[int, int, int, int]]:
    """The six faces' squares in the group frame (x, y, w, h), as frames() places them."""
    return [(55 + col * 200, 75 + row * 200, 130, 130) for row in range(2) for col in range(3)]


def found(boxes: list) -> str:
    """"N of 6" (faces with a box centred on them), plus any boxes centred elsewhere."""
    def inside(box, cell):
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        return cell[0] <= cx <= cell[0] + cell[2] and cell[1] <= cy <= cell[1] + cell[3]

    hits = sum(any(inside(box, cell) for box in boxes) for cell in group_cells())
    extra = sum(not any(inside(box, cell) for cell in group_cells()) for box in boxes)
    return f"{hits} of 6" + (f" (+{extra} elsewhere)" if extra else "")


def png_base64(image: np.ndarray) -> str:
    import cv2

    return base64.b64encode(cv2.imencode(".png", image)[1]).decode()


INSTALL_FRAME = """async ([name, png]) => {
  const image = new Image();
  image.src = "data:image/png;base64," + png;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  canvas.getContext("2d").drawImage(image, 0, 0);
  (window.benchFrames = window.benchFrames || {})[name] = canvas;
  if (!window.benchLongTasks) {
    window.benchLongTasks = [];
    new PerformanceObserver((list) => window.benchLongTasks.push(...list.getEntries().map((e) => e.duration)))
      .observe({ type: "longtask", buffered: false });
  }
}"""

LOOP = """async ([analyse, name, seconds, given]) => {
  const options = given ?? undefined;  // null from Python: the page's default
  const canvas = window.benchFrames[name];
  await window[analyse](canvas, options);  // warm
  window.benchLongTasks.length = 0;
  let frames = 0, faces = [];
  const started = performance.now();
  while (performance.now() - started < seconds * 1000) {
    faces = await window[analyse](canvas, options);
    frames++;
  }
  const elapsed = (performance.now() - started) / 1000;
  // boxes [x, y, w, h]: ferkit's faces carry `box`, face-api's `detection.box`
  const boxes = faces.map((f) => f.box || [f.detection.box.x, f.detection.box.y, f.detection.box.width, f.detection.box.height]);
  return { fps: frames / elapsed, boxes, longestTask: Math.max(0, ...window.benchLongTasks) };
}"""


def open_arm(context, url: str, ready: str):
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(ready, timeout=300000)
    # ferkit's live view starts by itself where the camera is allowed: stopped, it leaves the CPU to the benchmark
    page.evaluate("document.getElementById('live-stop') && !document.getElementById('live-stop').disabled "
                  "&& document.getElementById('live-stop').click()")
    return page


def throughput(browser, arms: list[dict], scenes: dict, seconds: float, rounds: int) -> dict:
    """{(arm label, scene): {"fps": median, "faces": n, "longestTask": ms}}, arms interleaved per round."""
    context = browser.new_context()  # no camera permission: ferkit's live view does not start by itself
    pages = {}
    for arm in arms:
        key = (arm["url"], arm["ready"])
        if key not in pages:
            pages[key] = open_arm(context, arm["url"], arm["ready"])
            for name, image in scenes.items():
                pages[key].evaluate(INSTALL_FRAME, [name, png_base64(image)])
    runs = {}
    for _ in range(rounds):
        for name in scenes:
            for arm in arms:
                page = pages[(arm["url"], arm["ready"])]
                page.bring_to_front()
                result = page.evaluate(LOOP, [arm["analyse"], name, seconds, arm.get("options")])
                runs.setdefault((arm["label"], name), []).append(result)
    context.close()
    return {key: {"fps": statistics.median(r["fps"] for r in results), "boxes": results[-1]["boxes"],
                  "longestTask": max(r["longestTask"] for r in results)}
            for key, results in runs.items()}


def first_load(browser, url: str, labelled: str) -> dict:
    """A fresh context (empty cache, camera allowed): bytes over the wire until the network is idle after the
    first label, and the milliseconds from navigation to the first labelled face."""
    context = browser.new_context(permissions=["camera"])
    sizes, names = [], []

    def finished(request):
        s = request.sizes()
        sizes.append(s["responseBodySize"] + s["responseHeadersSize"])
        names.append(request.url.rsplit("/", 1)[-1])

    context.on("requestfinished", finished)
    page = context.new_page()
    page.goto(url)
    page.wait_for_function(labelled, timeout=300000, polling=20)
    label_ms = page.evaluate("performance.now()")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(1500)
    context.close()
    return {"bytes": sum(sizes), "label_ms": label_ms, "files": names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring window per arm, scene and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "real_faces"))
    parser.add_argument("--levers", action="store_true", help="also the live view's levers, one at a time")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    version = install_face_api(FACE_API)
    scenes = frames(Path(args.photos))
    peer_port = free_port()
    peer = ThreadingHTTPServer(("127.0.0.1", peer_port),
                               functools.partial(IsolatedFiles, directory=str(FACE_API)))
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ferkit", "serve", "--no-browser", "--port", str(port)],
                              env=CHILD_ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours, theirs = f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{peer_port}/"
    try:
        index = json.loads(wait_for(ours + "models/index.json", server))
        default = index["default_model"]
        ready, peer_ready = "window.ferkitState && window.ferkitState.ready", "window.peerState.ready"
        arms = [{"label": f"@vladmandic/face-api {version}, tiny detector 224 + expressions", "url": theirs,
                 "ready": peer_ready, "analyse": "peerAnalyseFrame"}]
        arms += [{"label": f"ferkit `{m['name']}`" + (" (the default)" if m["name"] == default else ""),
                  "url": f"{ours}?model={m['name']}", "ready": ready, "analyse": "ferkitAnalyseFrame"}
                 for m in index["models"]]
        # A model with an int8 copy for Live (ferkit.quantize) also through its float classifier, interleaved.
        arms += [{"label": f"ferkit `{m['name']}`, float classifier (the Photo view's; Live before its int8 copy)",
                  "url": f"{ours}?model={m['name']}", "ready": ready, "analyse": "ferkitAnalyseFrame",
                  "options": {"live": True, "liveClassifier": False}}
                 for m in index["models"] if m.get("live_url")]
        if args.levers:
            lite = f"{ours}?model=fer_lite"
            arms += [
                {"label": "lever: none (whole-frame detector each frame, main thread)", "url": lite + "&worker=0",
                 "ready": ready, "analyse": "ferkitAnalyseFrame", "options": {"live": False}},
                {"label": "lever: detector on 320 px, each frame, main thread", "url": lite + "&worker=0",
                 "ready": ready, "analyse": "ferkitAnalyseFrame",
                 "options": {"live": True, "detectEvery": 1}},
                {"label": "lever: 320 px, detector every 2nd frame, main thread", "url": lite + "&worker=0",
                 "ready": ready, "analyse": "ferkitAnalyseFrame", "options": {"live": True, "detectEvery": 2}},
                {"label": "lever: 320 px, every 2nd frame, worker", "url": lite, "ready": ready,
                 "analyse": "ferkitAnalyseFrame", "options": {"live": True, "detectEvery": 2}},
                {"label": "lever: 320 px, every 3rd frame, worker", "url": lite, "ready": ready,
                 "analyse": "ferkitAnalyseFrame", "options": {"live": True, "detectEvery": 3}},
                {"label": "lever: 320 px, once the boxes are 60 ms old, worker (the live view)", "url": lite,
                 "ready": ready, "analyse": "ferkitAnalyseFrame", "options": {"live": True}},
                {"label": "lever: `fer`, every 2nd frame (the live view before 2026-12-07)", "url": f"{ours}?model=fer",
                 "ready": ready, "analyse": "ferkitAnalyseFrame", "options": {"live": True, "detectEvery": 2}},
            ]
        y4m = write_y4m(Path(tempfile.mkdtemp()) / "face.y4m", scenes["one face"][110:370, 190:450])
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=PAGE_ARGS + [f"--use-file-for-fake-video-capture={y4m}"])
            load_before = os.getloadavg()
            speed = throughput(browser, arms, scenes, args.seconds, args.rounds)
            loads = {arms[0]["label"]: first_load(browser, theirs + "?camera", "window.peerState.firstLabelMs"),
                     **{arm["label"]: first_load(browser, ours if m["name"] == default else arm["url"],
                                                 "window.ferkitState.faces.length > 0")
                        for arm, m in zip(arms[1:], index["models"])}}
            load_after = os.getloadavg()
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
        peer.shutdown()

    print(f"# the page against face-api: headless Chromium ({CHROMIUM}), "
          f"{platform.processor() or platform.machine()} x{os.cpu_count()}, WASM; {args.rounds} interleaved rounds of "
          f"{args.seconds:g} s per arm and scene (median FPS); load average {load_before[0]:.2f} before, "
          f"{load_after[0]:.2f} after (1 min)")
    print(f"# `python benchmarks/bench_page.py --seconds {args.seconds:g} --rounds {args.rounds}"
          f"{' --levers' if args.levers else ''}`")
    print("| page | FPS, one face | FPS, six faces | faces found, six | longest main-thread task | first load "
          "| first label |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        one, six = speed[(arm["label"], "one face")], speed[(arm["label"], "six faces")]
        load = loads.get(arm["label"])
        loaded = f"{load['bytes'] / 1e6:.1f} MB | {load['label_ms'] / 1000:.2f} s" if load else " | "
        print(f"| {arm['label']} | {one['fps']:.1f} | {six['fps']:.1f} | {found(six['boxes'])} "
              f"| {max(one['longestTask'], six['longestTask']):.0f} ms | {loaded} |")
    if os.environ.get("BENCH_PAGE_FILES"):
        for label, load in loads.items():
            print(label, load["files"])


if __name__ == "__main__":
    main()
