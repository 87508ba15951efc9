"""The webcam bridge in a real browser: JupyterLab on 127.0.0.1, headless Chromium with a fake camera.

Chromium's fake camera is fed a Y4M clip of the sample face; the test notebook
takes a snapshot through the widget (clicking its Capture button), classifies
it in the kernel, then runs live mode for a few seconds and reports its FPS.
Needs Debian's chromium (`apt-get install chromium`) and Playwright for Python
(never `playwright install`: the system Chromium is used).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("anywidget")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "ferkit" / "models"  # the shipped models
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LIVE_SECONDS = 8

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium"),
    pytest.mark.skipif(not (MODELS / "fer.json").exists(), reason="needs the shipped model fer.json + fer.h5"),
]


def write_y4m(path: Path, image_bgr: np.ndarray, frames: int = 30) -> Path:
    """A still clip in the YUV4MPEG2 format Chromium's fake camera plays (looped)."""
    frame = np.full((480, 640, 3), 60, np.uint8)
    face = cv2.resize(image_bgr, (480, 480))
    frame[:, 80:560] = face
    yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
    with open(path, "wb") as f:
        f.write(b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n")
        for _ in range(frames):
            f.write(b"FRAME\n" + yuv.tobytes())
    return path


def notebook(path: Path, cells: list[str]) -> Path:
    content = {"cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
                         for src in cells],
               "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
               "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(content))
    return path


SETUP = ("import asyncio\nfrom ferkit.prediction import Predictor\n"
         "from ferkit.webcam import WebcamError, live, take_photo_async\n"
         f"predictor = Predictor({str(MODELS / 'fer')!r})")
SNAPSHOT_AND_LIVE = [
    SETUP,
    "photo = await take_photo_async(timeout=90)\nprint('CAPTURED', photo.shape)",
    "result = predictor.predict(photo, 'bgr', name='browser')\nprint('RESULT', result.message)",
    "view = live(predictor)",
    f"await asyncio.sleep({LIVE_SECONDS})\nprint('LIVE', round(view.fps, 2), view.answered, view.running, repr(view.error))",
]
DENIED = [
    SETUP,
    "import time\nstarted = time.monotonic()\ntry:\n    await take_photo_async(timeout=60)\n"
    "except WebcamError as error:\n    print('REFUSED', error, round(time.monotonic() - started, 1))",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyter(tmp_path):
    port, token = free_port(), "ferkit-browser-test"
    env = {k: v for k, v in os.environ.items() if k != "FERKIT_WEBCAM_FILE"}  # the real (fake) camera
    env.update(TF_CPP_MIN_LOG_LEVEL="3", JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=None", "--allow-root"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if server.poll() is not None:
            break
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("Jupyter did not start:\n" + (tmp_path / "server.log").read_text()[-2000:])
    yield url, token, tmp_path
    server.terminate()
    server.wait(10)


def output_text(page, marker: str, timeout_ms: int) -> str:
    # Look in output areas only: cell sources contain the same words.
    locator = page.locator(".jp-OutputArea-output", has_text=marker).first
    locator.wait_for(timeout=timeout_ms)
    return locator.inner_text()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--use-fake-device-for-media-stream"]


def run_notebook_in_chromium(jupyter, name, cells, extra_args, check):
    """Open ``cells`` as a notebook in JupyterLab in headless Chromium, run all, then ``check(page)``."""
    url, token, folder = jupyter
    from ferkit.images import sample_image

    y4m = write_y4m(folder / "face.y4m", sample_image())
    notebook(folder / name, cells)
    args = CHROMIUM_ARGS + [f"--use-file-for-fake-video-capture={y4m}"] + extra_args
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        console = []
        try:
            # Start the notebook's kernel session first, so JupyterLab attaches to it instead of asking.
            request = urllib.request.Request(
                f"{url}/api/sessions?token={token}", method="POST", headers={"Content-Type": "application/json"},
                data=json.dumps({"path": name, "type": "notebook", "name": name,
                                 "kernel": {"name": "python3"}}).encode())
            urllib.request.urlopen(request, timeout=30)
            page = browser.new_page()
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{url}/lab/tree/{name}?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=60000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            check(page)
        except Exception:
            print("\nbrowser console:\n" + "\n".join(console[-30:]))
            page.screenshot(path=str(folder / "failure.png"))
            print(f"screenshot of the failure: {folder / 'failure.png'}")
            raise
        finally:
            browser.close()


def test_snapshot_and_live_mode_in_chromium(jupyter):
    def check(page):
        started = time.monotonic()
        page.locator(".jp-OutputArea-output button", has_text="Capture").wait_for(timeout=90000)
        page.locator(".jp-OutputArea-output video").first.wait_for(timeout=30000)
        page.wait_for_timeout(1000)  # let the fake camera deliver frames
        page.locator(".jp-OutputArea-output button", has_text="Capture").click()

        captured = output_text(page, "CAPTURED", 60000)
        assert re.search(r"CAPTURED \(\d+, \d+, 3\)", captured), captured
        result = output_text(page, "RESULT", 60000)
        assert "RESULT browser: happy" in result, result

        live = output_text(page, "LIVE", 90000)
        fps, answered = float(live.split()[1]), int(live.split()[2])
        assert fps > 0.5 and answered >= LIVE_SECONDS * 0.5, live
        shown = page.locator(".ferkit-fps").first.inner_text()
        assert re.fullmatch(r"\d+\.\d FPS", shown) and float(shown.split()[0]) > 0.5, shown
        print(f"\nbrowser test: live mode {fps:.1f} FPS; whole run {time.monotonic() - started:.0f} s")

    # --use-fake-ui-for-media-stream answers the permission prompt with "allow".
    run_notebook_in_chromium(jupyter, "webcam_test.ipynb", SNAPSHOT_AND_LIVE, ["--use-fake-ui-for-media-stream"], check)


def test_denied_permission_ends_the_call_with_the_reason(jupyter):
    def check(page):
        refused = output_text(page, "REFUSED", 60000)
        assert "webcam: permission to use the camera was denied" in refused, refused
        assert float(refused.split()[-1]) < 10, refused  # seconds: no hanging kernel

    # Without the fake UI, headless Chromium refuses the camera permission.
    run_notebook_in_chromium(jupyter, "denied_test.ipynb", DENIED, [], check)
