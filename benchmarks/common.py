"""What the benchmarks share, and what the real-browser tests share with them: one place for each helper.

Benchmarks run as scripts (``python benchmarks/bench_models.py``), so they import this module as ``common``;
importing it puts this checkout first on ``sys.path``, so ``import ferkit`` finds the checkout's package
even where ferkit is not installed. Tests import it as ``benchmarks.common`` (tests/conftest.py puts the
repository root on ``sys.path``).

- paths: :data:`ROOT`, :data:`SHIPPED_MODELS`, :data:`DETECTION_CACHE`, :data:`PHOTO_CROP_CACHE`;
- timing: :func:`median_seconds` (one call timed over and over), :func:`throughput` (models' faces/s, interleaved);
- the browser: :data:`CHROMIUM` with :data:`CHROMIUM_ARGS` / :data:`PAGE_ARGS` and a fake camera playing
  :func:`write_y4m`'s clip; child servers (``ferkit serve``, JupyterLab) on a :func:`free_port`, started with
  :data:`CHILD_ENV` and awaited by :func:`wait_for`; notebooks run in JupyterLab (:func:`start_jupyter`,
  :func:`notebook`, :func:`run_all_cells`, :func:`output_text`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the checkout's ferkit, before any installed copy

from ferkit.settings import IMAGE_SIZE  # noqa: E402  (after the checkout is on sys.path)

#: The models shipped in the package (fer, fer_lite).
SHIPPED_MODELS = ROOT / "ferkit" / "models"
#: Where the benchmarks keep detections (``fidelity.detect``'s cache): they depend on the frames and the
#: detector, not on the model, so the next model or crop setting is scored without detecting again.
DETECTION_CACHE = ROOT / "checkpoints" / "detections"
#: Where real_faces.py keeps the photo pipeline's crops of the labelled photos (``photos.crop_photos``).
PHOTO_CROP_CACHE = ROOT / "checkpoints" / "photo_crops"


# ---------------------------------------------------------------------------- timing

def median_seconds(fn, repeats: int, warmup: bool = True) -> float:
    """The one timing rule of the benchmarks: median wall seconds of ``repeats`` calls of ``fn()``, after one
    untimed warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput(forwards: dict, batch: int, rounds: int = 5, calls: int = 40) -> dict:
    """Faces per second per model: the median over ``rounds`` of ``calls`` timed calls, models interleaved.

    forwards: {name: traced forward pass (``ferkit`` ``traced_forward``)}, each taking float32
    (batch, IMAGE_SIZE, IMAGE_SIZE, 1) and returning a tensor. Interleaving the models' rounds lets load on
    the machine hit them alike.
    """
    x = np.random.default_rng(0).uniform(0, 255, (batch, IMAGE_SIZE, IMAGE_SIZE, 1)).astype(np.float32)
    times = {name: [] for name in forwards}
    for forward in forwards.values():
        forward(x)
    for _ in range(rounds):
        for name, forward in forwards.items():
            started = time.perf_counter()
            for _ in range(calls):
                forward(x).numpy()
            times[name].append((time.perf_counter() - started) / calls)
    return {name: batch / float(np.median(values)) for name, values in times.items()}


# ---------------------------------------------------------------------------- the browser

#: Debian's Chromium (Playwright drives it; no browser is ever downloaded).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: Headless Chromium, quiet, with a fake camera; the camera permission prompt is left unanswered (refused).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream"]
#: The same for the web page: the camera allowed and videos playing without a click.
PAGE_ARGS = CHROMIUM_ARGS + ["--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"]
#: The environment of the servers the tests and benchmarks start: TensorFlow quiet, output unbuffered.
CHILD_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_y4m(path: Path, image_bgr: np.ndarray, frames: int = 30) -> Path:
    """A still clip in the YUV4MPEG2 format Chromium's fake camera plays (looped): ``image_bgr`` (uint8, H x W x 3)
    squeezed to 480x480 in the middle of a grey 640x480 frame."""
    import cv2  # the one helper here that needs OpenCV

    frame = np.full((480, 640, 3), 60, np.uint8)
    frame[:, 80:560] = cv2.resize(image_bgr, (480, 480))
    yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
    with open(path, "wb") as f:
        f.write(b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n")
        for _ in range(frames):
            f.write(b"FRAME\n" + yuv.tobytes())
    return path


def wait_for(url: str, process: subprocess.Popen, seconds: float = 180) -> bytes:
    """The body of ``url`` once ``process`` (the server behind it) answers; RuntimeError if it exits first,
    TimeoutError after ``seconds``."""
    for _ in range(int(seconds * 4)):
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            return urllib.request.urlopen(url, timeout=1).read()
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(url)


# ---------------------------------------------------------------------------- notebooks in JupyterLab

#: A notebook's first cell: the webcam functions and a Predictor on the shipped model.
NOTEBOOK_SETUP = ("import asyncio\nfrom ferkit.prediction import Predictor\n"
                  "from ferkit.webcam import WebcamError, live, take_photo_async\n"
                  f"predictor = Predictor({str(SHIPPED_MODELS / 'fer')!r})")


def notebook(path: Path, cells: list[str]) -> Path:
    """A notebook of code ``cells`` (sources), never run, on the python3 kernel."""
    content = {"cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
                         for src in cells],
               "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
               "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(content))
    return path


def start_jupyter(folder: Path, token: str) -> tuple[subprocess.Popen, str]:
    """JupyterLab on 127.0.0.1 serving ``folder`` (its config and log inside it), answering: (process, url).

    Its kernels see the real (fake) camera: FERKIT_WEBCAM_FILE is dropped. RuntimeError, with the log's end,
    if it does not start within two minutes.
    """
    port = free_port()
    env = {k: v for k, v in CHILD_ENV.items() if k != "FERKIT_WEBCAM_FILE"}
    env["JUPYTER_CONFIG_DIR"] = str(folder / "config")
    log = folder / "jupyter.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}", "--LabApp.news_url=None",
             "--allow-root"], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/api/status?token={token}", process, 120)
    except (RuntimeError, TimeoutError) as error:
        process.kill()
        process.wait(10)
        raise RuntimeError(f"Jupyter did not start ({error}):\n{log.read_text()[-2000:]}") from error
    return process, url


def run_all_cells(page, url: str, token: str, name: str) -> None:
    """Open the notebook ``name`` (in the served folder) in ``page`` (Playwright) and run all its cells.

    The notebook's kernel session is started first, so JupyterLab attaches to it instead of asking.
    """
    request = urllib.request.Request(
        f"{url}/api/sessions?token={token}", method="POST", headers={"Content-Type": "application/json"},
        data=json.dumps({"path": name, "type": "notebook", "name": name, "kernel": {"name": "python3"}}).encode())
    urllib.request.urlopen(request, timeout=30)
    page.goto(f"{url}/lab/tree/{name}?token={token}")
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60000)
    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_text("Run All Cells", exact=True).click()


def output_text(page, marker: str, timeout_ms: int) -> str:
    """The text of the first cell output containing ``marker``, once one does (cell sources contain the same
    words, so only output areas are searched)."""
    locator = page.locator(".jp-OutputArea-output", has_text=marker).first
    locator.wait_for(timeout=timeout_ms)
    return locator.inner_text()
