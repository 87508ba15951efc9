"""The web page's live view speed in headless Chromium, per stage, with 1 and 2 WASM threads.

    python benchmarks/bench_webapp.py [--seconds 15] [--model fer]

Starts `python -m ferkit serve` on 127.0.0.1 and Debian's Chromium with a fake
640x480 camera showing one face (the sample photo), then, for each thread
count, samples window.ferkitState during the run: FPS is analysed frames per
second over the whole window, the stage times (camera frame -> detector ->
crop -> classifier -> drawing) are medians. Beside them, in the same run, the
notebook live mode's kernel side: the same frame sent as a 320-pixel JPEG
data URL, decoded and classified by Predictor (what each notebook live frame
costs in the kernel, without the browser's round trip).
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (CHILD_ENV, CHROMIUM, NOTEBOOK_SETUP, PAGE_ARGS, ROOT, free_port, notebook, output_text,
                    run_all_cells, start_jupyter, wait_for, write_y4m)

STAGES = ("frame", "detector", "crop", "classifier", "drawing", "total")


def measure_page(browser, url: str, seconds: float) -> dict:
    page = browser.new_page()
    page.goto(url)
    page.wait_for_function("window.ferkitState && window.ferkitState.ready", timeout=180000)
    if page.is_enabled("#live-start"):
        page.click("#live-start")
    page.wait_for_function("window.ferkitState.frames > 10", timeout=60000)
    samples, start_frames, started = [], page.evaluate("window.ferkitState.frames"), time.perf_counter()
    while time.perf_counter() - started < seconds:
        samples.append(page.evaluate("JSON.parse(JSON.stringify(window.ferkitState.latencyMs))"))
        page.wait_for_timeout(100)
    frames = page.evaluate("window.ferkitState.frames") - start_frames
    elapsed = time.perf_counter() - started
    threads = page.evaluate("window.ferkitState.threads")
    labels = page.evaluate("window.ferkitState.faces.map(f => f.label)")
    page.close()
    return {"threads": threads, "fps": frames / elapsed, "labels": labels,
            **{stage: statistics.median(s[stage] for s in samples if stage in s) for stage in STAGES}}


def notebook_live_fps(browser_args: list[str], seconds: float) -> float:
    """The notebook live mode for real: JupyterLab, the anywidget camera, the kernel answering each frame."""
    from playwright.sync_api import sync_playwright

    folder, token = Path(tempfile.mkdtemp()), "ferkit-bench"
    server, url = start_jupyter(folder, token)
    try:
        cells = [NOTEBOOK_SETUP, "view = live(predictor)",
                 f"import asyncio\nawait asyncio.sleep(5)\nfirst = view.answered\nawait asyncio.sleep({seconds})\n"
                 f"print('LIVE', (view.answered - first) / {seconds})"]
        notebook(folder / "bench.ipynb", cells)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=browser_args)
            page = browser.new_page()
            run_all_cells(page, url, token, "bench.ipynb")
            fps = float(output_text(page, "LIVE", int((seconds + 120) * 1000)).split()[1])
            browser.close()
        return fps
    finally:
        server.terminate()
        server.wait(20)


def notebook_kernel_fps(model: str | None, seconds: float) -> float:
    import cv2

    from ferkit.images import sample_image
    from ferkit.prediction import Predictor
    from ferkit.webcam import _faces_message, decode_data_url

    predictor = Predictor(model)
    frame = cv2.resize(sample_image(), (320, 320))
    data_url = "data:image/jpeg;base64," + base64.b64encode(cv2.imencode(".jpg", frame)[1]).decode()
    _faces_message(predictor, decode_data_url(data_url), 640)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        _faces_message(predictor, decode_data_url(data_url), 640)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measuring window per configuration")
    parser.add_argument("--model", help="model to serve and measure (default: the shipped fer)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from ferkit.images import sample_image

    port = free_port()
    command = [sys.executable, "-m", "ferkit", "serve", "--no-browser", "--port", str(port)]
    command += ["--model", args.model] if args.model else []
    server = subprocess.Popen(command, env=CHILD_ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url + "models/index.json", server)
        y4m = write_y4m(Path(tempfile.mkdtemp()) / "face.y4m", sample_image())
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=PAGE_ARGS + [f"--use-file-for-fake-video-capture={y4m}"])
            for threads in (1, 2):
                rows.append(measure_page(browser, f"{url}?threads={threads}", args.seconds))
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
    camera = PAGE_ARGS + [f"--use-file-for-fake-video-capture={y4m}"]
    notebook = notebook_live_fps(camera, args.seconds) if args.model is None else None
    kernel = notebook_kernel_fps(args.model, args.seconds)

    print(f"# live view, headless Chromium {CHROMIUM}, {platform.processor() or platform.machine()} x{os.cpu_count()}, "
          f"model {args.model or 'fer'}, 640x480 fake camera, one face")
    print("| runtime | FPS | camera frame | detector | crop | classifier | drawing | total ms | labels |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| page, WASM {row['threads']} thread{'s' * (row['threads'] > 1)} | {row['fps']:.1f} | "
              + " | ".join(f"{row[stage]:.1f}" for stage in STAGES) + f" | {', '.join(row['labels'])} |")
    if notebook is not None:
        print(f"| notebook live mode (JupyterLab widget, 320 px frames answered by the kernel) | {notebook:.1f} "
              "| | | | | | | |")
    print(f"| notebook live mode, kernel side only (320 px JPEG -> Predictor) | {kernel:.1f} | | | | | | "
          f"{1000 / kernel:.1f} | |")


if __name__ == "__main__":
    main()
