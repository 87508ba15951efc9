"""Inference speed: ferkit end to end and classification alone, beside the `fer` PyPI package.

    python benchmarks/bench_inference.py [--model fer] [--peer-python /path/to/venv/bin/python]

Inputs are the same for both: the sample photo (skimage.data.astronaut, one
face) letterboxed into 640x480 and 1920x1080 frames. "end to end" is detect +
crop + classify + build the result, median ms per image over ``--repeats``
runs after a warm-up. "classify" is the emotion model alone on 48x48 crops,
at batch 1 and 64, in faces/second.

The `fer` package needs OpenCV < 5 (its Haar detector) and pulls in PyTorch for
its optional MTCNN; run it from its own virtual environment (see docs/experiments/inference-speed.md) and
pass that interpreter as ``--peer-python``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from common import median_seconds

PEER_SCRIPT = """
import json, statistics, sys, time
import cv2, numpy as np
try:
    from fer import FER  # fer < 25
except ImportError:
    from fer.fer import FER

frames, repeats = sys.argv[1:-1], int(sys.argv[-1])
detector = FER()
out = {}
for path in frames:
    image = cv2.imread(path)
    detector.detect_emotions(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        faces = detector.detect_emotions(image)
        times.append(time.perf_counter() - start)
    out[path] = {"ms": 1000 * statistics.median(times), "faces": len(faces),
                 "label": max(faces[0]["emotions"], key=faces[0]["emotions"].get) if faces else None}
size = detector._FER__emotion_target_size
for batch in (1, 64):
    crops = np.random.default_rng(0).uniform(-1, 1, (batch, *size)).astype("float32")  # (b, h, w), as detect_emotions passes them
    detector._classify_emotions(crops)
    times = []
    for _ in range(max(5, repeats)):
        start = time.perf_counter()
        detector._classify_emotions(crops)
        times.append(time.perf_counter() - start)
    out[f"classify{batch}"] = batch / statistics.median(times)
print("RESULT" + json.dumps(out))
"""


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    scale = min(width / image.shape[1], height / image.shape[0])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    canvas = np.full((height, width, 3), 40, np.uint8)
    y, x = (height - resized.shape[0]) // 2, (width - resized.shape[1]) // 2
    canvas[y:y + resized.shape[0], x:x + resized.shape[1]] = resized
    return canvas


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fer")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--peer-python", help="python of a virtual environment with the fer package")
    args = parser.parse_args()

    import cv2

    from ferkit.images import sample_image
    from ferkit.prediction import Predictor

    predictor = Predictor(args.model)
    sample = sample_image()
    frames = {"640x480": letterbox(sample, 640, 480), "1920x1080": letterbox(sample, 1920, 1080)}
    ours = {}
    for name, frame in frames.items():
        result = predictor.predict(frame, "bgr")
        ours[name] = {"ms": 1000 * median_seconds(lambda: predictor.predict(frame, "bgr"), args.repeats),
                      "faces": len(result.faces), "label": result.faces[0].label if result.faces else None}
    crops = np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8)
    for batch in (1, 64):
        ours[f"classify{batch}"] = batch / median_seconds(lambda: predictor.classify_crops(crops[:batch]),
                                                          max(5, args.repeats))

    peer = None
    if args.peer_python:
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for name, frame in frames.items():
                paths.append(str(Path(tmp) / f"{name}.png"))
                cv2.imwrite(paths[-1], frame)
            run = subprocess.run([args.peer_python, "-c", textwrap.dedent(PEER_SCRIPT), *paths, str(args.repeats)],
                                 capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            if run.returncode != 0:
                sys.exit(f"the fer package run failed:\n{run.stderr[-3000:]}")
            raw = json.loads(run.stdout.split("RESULT", 1)[1])
            peer = {name: raw[path] for name, path in zip(frames, paths)}
            peer.update({k: v for k, v in raw.items() if k.startswith("classify")})

    print(f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}; model {args.model} "
          f"({predictor.meta.architecture or '?'}), detector yunet; median of {args.repeats} runs")
    print("| measure | ferkit | fer package | ferkit / fer |")
    print("|---|---|---|---|")
    for name in frames:
        theirs = peer[name] if peer else None
        ratio = f"{ours[name]['ms'] / theirs['ms']:.2f}" if theirs else "-"
        their_text = f"{theirs['ms']:.1f} ms ({theirs['faces']} face, {theirs['label']})" if theirs else "-"
        print(f"| end to end, {name} | {ours[name]['ms']:.1f} ms ({ours[name]['faces']} face, {ours[name]['label']}) "
              f"| {their_text} | {ratio} |")
    for batch in (1, 64):
        key = f"classify{batch}"
        theirs = peer[key] if peer else None
        print(f"| classify only, batch {batch} | {ours[key]:.0f} faces/s | "
              f"{f'{theirs:.0f} faces/s' if theirs else '-'} | {f'{ours[key] / theirs:.2f}' if theirs else '-'} |")


if __name__ == "__main__":
    main()
