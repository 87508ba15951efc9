"""How ``ferkit analyse`` scales: frames per second with 1 and 2 Ray workers here, the cost of each stage, and a
projection for N nodes.

    python benchmarks/bench_analyse.py                  # the shipped fer model, 4 generated clips
    python benchmarks/bench_analyse.py --model fer_lite --clips 6 --seconds 10

Stages are timed in this process on the same clips (decode: reading and converting frames; detect: YuNet;
classify: crop and model; plan: the one decoding pass per video that lists frame times; commit: the driver's
Parquet write and stitch per chunk), and the bytes that travel through Ray per frame (plans and result rows).
Ray runs embedded on 127.0.0.1; each worker count gets a warm-up run first, so model loading is not timed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - first: puts this checkout's ferkit on sys.path
import cv2
import numpy as np

from ferkit import images, recordings  # noqa: E402
from ferkit.recordings import Recording, Settings  # noqa: E402


def make_clips(folder: Path, count: int, seconds: float, fps: int = 12) -> list[Path]:
    """``count`` 320x240 MJPG clips, a face drifting across a grey background in each."""
    patch = cv2.resize(images.sample_image()[30:230, 120:320], (96, 96))
    paths = []
    for number in range(count):
        path = folder / f"clip{number}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
        for i in range(int(seconds * fps)):
            frame = np.full((240, 320, 3), 80 + 10 * number, np.uint8)
            x, y = 10 + (2 * i) % 200, 60 + (i // 7) % 40
            frame[y:y + 96, x:x + 96] = patch
            writer.write(frame)
        writer.release()
        paths.append(path)
    return paths


def stage_costs(clips: list[Path], settings: Settings) -> dict:
    """Seconds per analysed frame of each stage, measured in this process, and bytes through Ray per frame."""
    import pandas as pd

    totals = {"plan": 0.0, "decode": 0.0, "detect": 0.0, "classify": 0.0, "commit": 0.0}
    frames, moved = 0, 0
    recordings.cached_predictor(settings, images.MAX_IMAGE_PIXELS)  # the model loads before the clock starts
    with tempfile.TemporaryDirectory() as out:
        for path in clips:
            recording = Recording(path.stem, str(path), "video")
            started = time.perf_counter()
            plan = recordings.plan_video(recording, settings, images.MAX_IMAGE_PIXELS)
            totals["plan"] += time.perf_counter() - started
            moved += len(pickle.dumps(plan))
            tables = []
            for chunk in plan["chunks"]:
                result = recordings.analyse_chunk(recording, chunk, plan, settings, images.MAX_IMAGE_PIXELS)
                for stage in ("decode", "detect", "classify"):
                    totals[stage] += result["timings"][stage]
                frames += result["analysed"]
                moved += len(pickle.dumps(result))
                started = time.perf_counter()
                path_out = recordings.chunk_path(Path(out), recording, chunk["index"])
                recordings.write_parquet(result["rows"], path_out, {"chunk": chunk["index"]})
                tables.append(pd.read_parquet(path_out))
                totals["commit"] += time.perf_counter() - started
            started = time.perf_counter()
            recordings.stitch(tables, [c for c in tables[0].columns if c != "warm"])
            totals["commit"] += time.perf_counter() - started
    costs = {stage: seconds / frames for stage, seconds in totals.items()}
    costs["bytes"] = moved / frames
    costs["frames"] = frames
    return costs


def ray_rate(clips: list[Path], settings: Settings, workers: int) -> float:
    """Analysed frames per second of ``analyse`` with ``workers`` embedded Ray workers (after a warm-up run)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray on 127.0.0.1 only
    import ray

    from ferkit.analyse import WORKER_ENV, analyse

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    try:
        with tempfile.TemporaryDirectory() as out:
            analyse(clips[:workers], Path(out) / "warm", settings, progress=False)  # every worker loads the model
            outcome = analyse(clips, Path(out) / "timed", settings, progress=False)
        return outcome.frames / outcome.seconds
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fer")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--chunk-seconds", type=float, default=2.0)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--cores-per-node", type=int, default=16)
    args = parser.parse_args()
    settings = Settings(model=args.model, chunk_seconds=args.chunk_seconds)
    folder = Path(tempfile.mkdtemp(prefix="bench-analyse-"))
    try:
        clips = make_clips(folder, args.clips, args.seconds)
        costs = stage_costs(clips, settings)
        one, two = ray_rate(clips, settings, 1), ray_rate(clips, settings, 2)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    per_frame = costs["decode"] + costs["detect"] + costs["classify"]
    print(f"model {args.model}, {args.clips} clips of {args.seconds:g} s at 12 fps, 320x240, "
          f"chunks of {args.chunk_seconds:g} s, {os.cpu_count()} cores here\n")
    print("| stage | ms per analysed frame |\n|---|---|")
    for stage in ("plan", "decode", "detect", "classify", "commit"):
        print(f"| {stage} | {1000 * costs[stage]:.2f} |")
    print(f"| bytes through Ray | {costs['bytes']:.0f} B per frame |\n")
    print(f"| Ray workers | frames/s |\n|---|---|\n| 1 | {one:.1f} |\n| 2 | {two:.1f} |\n"
          f"| ratio | {two / one:.2f} (ideal 2.00) |\n")
    efficiency = min(1.0, two / one / 2)
    driver_cap = 1 / costs["commit"]  # the driver commits every chunk and stitches every recording, alone
    print(f"projection: {args.cores_per_node} workers per node at {1 / per_frame:.1f} frames/s each (decode + "
          f"detect + classify, measured), the 2-worker efficiency here ({efficiency:.2f}); the driver's commits "
          f"cap the whole at {driver_cap:.0f} frames/s; each video's plan reads it once ({1000 * costs['plan']:.2f} "
          "ms per frame) before its chunks start\n")
    print("| nodes | frames/s | limited by |\n|---|---|---|")
    for nodes in args.nodes:
        workers_rate = nodes * args.cores_per_node * efficiency / per_frame
        rate = min(workers_rate, driver_cap)
        print(f"| {nodes} | {rate:,.0f} | {'workers' if workers_rate < driver_cap else 'the driver (commits)'} |")


if __name__ == "__main__":
    main()
