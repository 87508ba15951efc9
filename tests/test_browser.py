"""The webcam bridge in a real browser: JupyterLab on 127.0.0.1, headless Chromium with a fake camera.

Chromium's fake camera is fed a Y4M clip of the sample face; the test notebook
takes a snapshot through the widget (clicking its Capture button), classifies
it in the kernel, then runs live mode for a few seconds and reports its FPS.
Needs Debian's chromium (`apt-get install chromium`) and Playwright for Python
(never `playwright install`: the system Chromium is used). The browser and notebook helpers are
benchmarks/common.py's, shared with the web page's tests and benchmarks.
"""

import re
import time
from pathlib import Path

import pytest

from benchmarks.common import (CHROMIUM, CHROMIUM_ARGS, NOTEBOOK_SETUP, SHIPPED_MODELS, notebook, output_text,
                               run_all_cells, start_jupyter, write_y4m)
from ferkit.images import sample_image

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("anywidget")

LIVE_SECONDS = 8

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium"),
    pytest.mark.skipif(not (SHIPPED_MODELS / "fer.json").exists(), reason="needs the shipped model fer.json + fer.h5"),
]

SNAPSHOT_AND_LIVE = [
    NOTEBOOK_SETUP,
    "photo = await take_photo_async(timeout=90)\nprint('CAPTURED', photo.shape)",
    "result = predictor.predict(photo, 'bgr', name='browser')\nprint('RESULT', result.message)",
    "view = live(predictor)",
    f"await asyncio.sleep({LIVE_SECONDS})\nprint('LIVE', round(view.fps, 2), view.answered, view.running, repr(view.error))",
]
DENIED = [
    NOTEBOOK_SETUP,
    "import time\nstarted = time.monotonic()\ntry:\n    await take_photo_async(timeout=60)\n"
    "except WebcamError as error:\n    print('REFUSED', error, round(time.monotonic() - started, 1))",
]


@pytest.fixture
def jupyter(tmp_path):
    token = "ferkit-browser-test"
    try:
        server, url = start_jupyter(tmp_path, token)
    except RuntimeError as error:
        pytest.fail(str(error))
    yield url, token, tmp_path
    server.terminate()
    server.wait(10)


def run_notebook_in_chromium(jupyter, name, cells, extra_args, check):
    """Open ``cells`` as a notebook in JupyterLab in headless Chromium, run all, then ``check(page)``."""
    url, token, folder = jupyter
    y4m = write_y4m(folder / "face.y4m", sample_image())
    notebook(folder / name, cells)
    args = CHROMIUM_ARGS + [f"--use-file-for-fake-video-capture={y4m}"] + extra_args
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        console = []
        page = browser.new_page()
        page.on("console", lambda message: console.append(message.text))
        try:
            run_all_cells(page, url, token, name)
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
