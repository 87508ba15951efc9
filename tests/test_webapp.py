"""The web app in a real browser: `python -m ferkit serve` on 127.0.0.1, Debian's Chromium with a fake camera.

The page runs the detector and the classifier itself (ONNX Runtime Web); these
tests check that it gives Predictor's answers on the same still frame, that
the live view labels a face from the camera, that videos go through the
server end to end, that nothing is requested from outside the page's origin,
and that the static build works from a plain file server. Screenshots of each
view go to $FERKIT_SCREENSHOTS when it is set (the README's come from there).
"""

import csv
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

# The browser helpers the tests share with the benchmarks.
from benchmarks.common import CHILD_ENV as ENV, CHROMIUM, PAGE_ARGS as ARGS, ROOT
from benchmarks.common import SHIPPED_MODELS as MODELS, free_port, wait_for, write_y4m

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("starlette")

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium"),
    pytest.mark.skipif(not (MODELS / "fer.json").exists(), reason="needs the shipped model fer.json + fer.h5"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "ferkit", "serve", "--no-browser", "--port", str(port)],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url + "models/index.json", process)
    except Exception:
        process.kill()
        pytest.fail("ferkit serve did not start:\n" + log.read_text()[-3000:])
    yield url
    process.terminate()
    process.wait(20)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 640x480 still with two faces of different sizes, as PNG (lossless, so both sides see the same pixels)."""
    from ferkit.images import sample_image

    astronaut = sample_image()
    frame = np.full((480, 640, 3), 70, np.uint8)
    frame[60:60 + 220, 30:30 + 220] = cv2.resize(astronaut[20:240, 110:330], (220, 220))
    frame[150:150 + 150, 400:400 + 150] = cv2.resize(astronaut[20:240, 110:330], (150, 150))[:, ::-1]
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    cv2.imwrite(str(path), frame)
    return path


class Page:
    """One Chromium page on the app, with every request it makes recorded."""

    def __init__(self, browser, url, screenshots, setup=None):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.requests, self.logs = [], []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: self.logs.append(message.text))
        self.page.on("pageerror", lambda error: self.logs.append(f"page error: {error}"))
        if setup:  # before the page loads: routes, dialog handlers
            setup(self.page)
        self.page.goto(url)
        self.page.wait_for_function("window.ferkitState && window.ferkitState.ready", timeout=120000)
        self.screenshots = screenshots

    def state(self):
        return self.page.evaluate("JSON.parse(JSON.stringify(window.ferkitState))")

    def shoot(self, name):
        if self.screenshots:
            Path(self.screenshots).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(self.screenshots) / f"webapp_{name}.png"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory, scene):
    from ferkit.images import sample_image

    y4m = write_y4m(tmp_path_factory.mktemp("camera") / "face.y4m", sample_image())
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=ARGS + [f"--use-file-for-fake-video-capture={y4m}"])
        yield chromium
        chromium.close()


def photo_in_page(page, path):
    page.page.click("button[data-view=photo]")
    page.page.evaluate("window.ferkitState.faces = []")
    with page.page.expect_file_chooser() as chooser:
        page.page.click("#photo-choose")
    chooser.value.set_files(str(path))
    page.page.wait_for_function("window.ferkitState.faces.length > 0", timeout=60000)
    return page.state()


@pytest.mark.parametrize("model", ["fer", "fer_lite"])  # each model the page serves (fer_lite is its default)
def test_the_page_gives_predictors_answers_on_the_same_frame(server, browser, scene, model):
    from ferkit.prediction import Predictor

    page = Page(browser, f"{server}?model={model}", os.environ.get("FERKIT_SCREENSHOTS") if model == "fer" else None)
    assert page.state()["model"] == model
    in_page = photo_in_page(page, scene)["faces"]
    page.shoot("photo")
    expected = Predictor(model).predict(scene).faces
    assert len(in_page) == len(expected) == 2
    for ours, theirs in zip(in_page, expected):
        assert np.abs(np.subtract(ours["box"], theirs.box)).max() <= 2, (ours["box"], theirs.box)
        assert ours["label"] == theirs.label
        for name, p in theirs.probabilities.items():
            assert abs(ours["probabilities"][name] - p) <= 0.02, (name, ours["probabilities"][name], p)
    assert_same_origin(page, server)


def test_the_pages_two_searches_merge_as_detect_faces_does(server, browser, monkeypatch):
    """pipeline.js's detect against ferkit.faces.detect_faces, both given the same made-up answers per search."""
    from ferkit import faces

    index = json.loads(urllib.request.urlopen(server + "models/index.json").read())
    answers = {1.0: [faces.Face((100, 100, 120, 120), 0.9), faces.Face((500, 50, 100, 100), 0.45),
                     faces.Face((20, 300, 90, 90), 0.45), faces.Face((250, 20, 90, 90), 0.35)],
               2.0: [faces.Face((104, 98, 118, 122), 0.95), faces.Face((400, 200, 80, 80), 0.7),
                     faces.Face((300, 380, 40, 40), 0.8), faces.Face((600, 440, 90, 90), 0.75),
                     faces.Face((503, 52, 98, 98), 0.42), faces.Face((252, 22, 88, 88), 0.36)]}
    monkeypatch.setattr(faces, "_search", lambda image, detector, min_score, scale: [
        f for f in answers[scale] if f.score >= min_score])
    expected = faces.detect_faces(np.zeros((480, 640, 3), np.uint8), upscale_search=True)
    page = Page(browser, server, None)
    in_page = page.page.evaluate(
        """async ([search, answers]) => {
             const { Pipeline } = await import("./pipeline.js");
             const pipeline = new Pipeline(null, null, null, {}, search);
             pipeline.search = async (image, scale, minScore) => answers[String(scale)]
               .filter((f) => f.score >= minScore).map((f) => ({ ...f, landmarks: [] }));
             return (await pipeline.detect({ width: 640, height: 480 }, { upscaleSearch: true })).map((f) => f.box);
           }""",
        [index["detector"], {str(int(k)): [{"box": list(f.box), "score": f.score} for f in v] for k, v in answers.items()}])
    assert in_page == [list(f.box) for f in expected]
    assert len(expected) == 4 and expected[-1].box == (600, 440, 40, 40)  # clipped to the frame
    assert (500, 50, 100, 100) in [f.box for f in expected]  # seen by both searches, kept under 0.6


def test_the_pages_tracker_follows_faces_as_the_video_tracker_does(server, browser):
    """tracking.js against ferkit.prediction's tracker: the same detections, the same ids and smoothed scores."""
    from dataclasses import asdict

    from ferkit.tracking import Tracker
    from ferkit.settings import TRACKING
    from ferkit import faces

    index = json.loads(urllib.request.urlopen(server + "models/index.json").read())
    assert index["tracking"] == asdict(TRACKING)  # one definition, received by the page
    names = index["models"][0]["class_names"]
    rng = np.random.default_rng(4)
    frames, boxes = [], [[40, 40, 100, 100], [300, 60, 90, 90], [500, 300, 80, 80]]
    for frame in range(40):  # three faces drifting; the second gone for 12 frames (its track ends), then back
        present = [0, 2] if 10 <= frame < 22 else [0, 1, 2] if frame % 7 else [2, 1, 0]
        faces_now = []
        for k in present:
            boxes[k] = [int(v) for v in np.add(boxes[k], [rng.integers(-6, 7), rng.integers(-6, 7), 0, 0])]
            faces_now.append({"box": list(boxes[k]), "probabilities": dict(zip(names, rng.dirichlet(np.ones(7))))})
        frames.append(faces_now)
    tracker, expected = Tracker(TRACKING.smoothing, TRACKING.min_iou, TRACKING.max_missed), []
    for faces_now in frames:
        found = [faces.Face(tuple(f["box"]), 0.9) for f in faces_now]
        probabilities = np.array([[f["probabilities"][n] for n in names] for f in faces_now])
        expected.append([[track_id, list(smoothed)] for _, track_id, smoothed in tracker.update(found, probabilities)])
    page = Page(browser, server, None)
    in_page = page.page.evaluate(
        """async ([tracking, frames, names]) => {
             const { Tracker } = await import("./tracking.js");
             const tracker = new Tracker(tracking);
             return frames.map((faces) => tracker.update(faces).map(({ id, probabilities }) =>
               [id, names.map((n) => probabilities[n])]));
           }""", [index["tracking"], frames, names])
    assert [[face[0] for face in frame] for frame in in_page] == [[face[0] for face in frame] for frame in expected]
    assert max(face[0] for frame in expected for face in frame) == 3  # the second face came back as a new track
    np.testing.assert_allclose([p for frame in in_page for face in frame for p in face[1]],
                               [p for frame in expected for face in frame for p in face[1]], atol=1e-9)


@pytest.mark.parametrize("degrees, offset, dim", [(0, 0.0, False), (17, 0.05, False), (-23, -0.03, False),
                                                  (0, 0.0, True)])
def test_the_pages_crop_equals_crop_face_also_turned_and_moved(server, browser, degrees, offset, dim):
    """pipeline.js's cropFace against ferkit.faces.crop_face on a tilted face, with and without levelling, and
    on a dim frame with the low-contrast lift."""
    from ferkit import faces
    from ferkit.images import sample_image, to_gray

    gray = to_gray(sample_image())
    lift = {"below_std": 32.6, "mean": 129.5, "std": 53.6} if dim else {}
    if dim:
        gray = np.rint(gray * 0.35 + 20).astype(np.uint8)
    face = faces.detect_faces(sample_image())[0]
    turn = cv2.getRotationMatrix2D(face.center, degrees, 1.0)
    landmarks = (np.c_[face.landmarks, np.ones(5)] @ turn.T).astype(np.float32)
    face = faces.Face(face.box, face.score, landmarks)
    page = Page(browser, server, None)
    for align in (False, True):
        in_page = page.page.evaluate(
            """async ([data, width, height, face, offset, align, lowContrast]) => {
                 const { cropFace, toGray, grayRegion } = await import("./pipeline.js");
                 const gray = { data: Uint8Array.from(data), width, height };
                 const options = { margin: -0.05, offset, align, lowContrast };
                 const crop = Array.from(cropFace(gray, face, 48, options));
                 // The page converts only the pixels the frame's crops read: the same crop (an RGBA frame of
                 // this grey reads back exactly), also for the face moved into a corner.
                 const rgba = new Uint8ClampedArray(4 * data.length).map((_, i) => (i % 4 === 3 ? 255 : data[i >> 2]));
                 const image = { data: rgba, width, height };
                 const cornered = { ...face, box: [-face.box[2] / 3, height - face.box[3] / 2, face.box[2], face.box[3]] };
                 for (const f of [face, cornered]) {
                   const region = grayRegion([f], image, -0.05, offset, align);
                   const fromRegion = Array.from(cropFace(toGray(image, region), f, 48, options));
                   const full = Array.from(cropFace(toGray(image), f, 48, options));
                   if (fromRegion.some((v, i) => v !== full[i])) throw new Error(`region ${region} misses pixels`);
                 }
                 return crop;
               }""",
            [gray.ravel().tolist(), gray.shape[1], gray.shape[0],
             {"box": list(face.box), "landmarks": face.landmarks.tolist()}, offset, align, lift])
        expected = faces.crop_face(gray, face, 48, -0.05, offset, align, lift).astype(int)
        if dim:  # the lift ran: the flat crop came out with the Training faces' contrast
            assert abs(expected.std() - lift["std"]) < 2 and abs(np.mean(in_page) - lift["mean"]) < 2
        difference = np.abs(np.array(in_page).reshape(48, 48) - expected)
        # OpenCV's bilinear warp works in 1/32-pixel steps; the page in floating point.
        assert difference.max() <= (0 if not align or not degrees else 3), (align, difference.max())
        assert difference.mean() <= 0.5


def test_live_view_labels_the_camera_face_and_measures_fps(server, browser):
    page = Page(browser, server, os.environ.get("FERKIT_SCREENSHOTS"))
    if page.page.is_enabled("#live-start"):  # live starts by itself once camera permission is granted
        page.page.click("#live-start")
    page.page.wait_for_function("window.ferkitState.fps > 0 && window.ferkitState.faces.length > 0", timeout=60000)
    page.page.wait_for_timeout(10000)
    state = page.state()
    assert [face["label"] for face in state["faces"]] == ["happy"]
    # Not a speed test (the CPU may be shared, and frames take uneven times then): the rate shown must agree,
    # within a factor of 5 or so, with the time the last frame took (a rate in the wrong units is 1000x off),
    # and the loop must keep going.
    # Each camera frame is analysed once (the fake camera sends 30 a second), so the rate is the camera's or the
    # page's, whichever is lower: never above the camera's, which the tracker's frame counts rely on.
    assert 0 < state["fps"] * state["latencyMs"]["total"] / 1000 <= 5, state
    assert state["fps"] <= 36, state
    assert state["frames"] >= 3, state
    assert set(state["latencyMs"]) >= {"frame", "detector", "crop", "classifier", "drawing"}
    # The readout averages each stage over recent frames: the detector, run on some frames only, never reads 0.
    readout = dict(part.rsplit(" ", 2)[:2] for part in page.page.text_content("#live-readout").split(" · ")[1:])
    assert float(readout["detector"]) > 0.1 and float(readout["classifier"]) > 0.1, readout
    box = state["faces"][0]["box"]
    assert 80 <= box[0] + box[2] / 2 <= 560  # the face sits in the middle of the fake camera's frame
    print(f"\nlive view, shipped model, WASM {state['threads']} thread(s): {state['fps']:.1f} FPS; "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in state["latencyMs"].items()))
    page.shoot("live")
    with page.page.expect_download() as png:
        page.page.click("#live-snapshot")
    assert png.value.suggested_filename.endswith((".png", ".json"))
    assert_same_origin(page, server)


#: Class names as a hostile MODEL.meta.json could hold them: each would run script or add elements as markup.
HOSTILE = ['<img src=x onerror=alert("img")>', "<b id=injected-b>angry</b>", "<script>alert('script')</script>",
           '"><svg id=injected-svg onload=alert("svg")>', '<iframe id=injected-iframe srcdoc="<p>x</p>"></iframe>',
           "&lt;happy&gt;", "<style id=injected-style>body{display:none}</style>"]
INJECTED = "img[src=x], [id^=injected], main script, main svg, main iframe, main style"


def test_model_strings_reach_the_page_as_text(server, browser, scene):
    """A model's class names and name are markup here (index.json rewritten on its way to the page, so the page
    is tested whatever Python accepts); the live bars, the photo's table and readout show them as text."""
    dialogs = []

    def hostile_models(page):
        def rewrite(route):
            index = route.fetch().json()
            for model in index["models"]:
                model["name"] += '<img src=x onerror=alert("name")>'
                model["class_names"] = HOSTILE[:len(model["class_names"])]
                model["architecture"] = "<b id=injected-arch>x</b>"
            route.fulfill(status=200, json=index)

        page.route("**/models/index.json", rewrite)
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page = Page(browser, server, None, setup=hostile_models)
    if page.page.is_enabled("#live-start"):
        page.page.click("#live-start")
    page.page.wait_for_function("window.ferkitState.faces.length > 0", timeout=60000)
    page.page.wait_for_function("document.querySelectorAll('#live-bars .bar').length > 0", timeout=30000)
    bars = page.page.locator("#live-bars .bar span:first-child").all_text_contents()
    assert set(bars) == set(HOSTILE), bars
    assert HOSTILE[3] in page.page.locator("#live-bars strong").first.text_content()  # the label: "happy"'s place
    faces = photo_in_page(page, scene)["faces"]
    assert [f["label"] for f in faces] == [HOSTILE[3]] * 2
    headers = page.page.locator("#photo-table th").all_text_contents()
    assert headers == ["face", "box (x, y, w, h)", "label", "score", *HOSTILE]
    assert page.page.locator("#photo-table td:nth-child(3)").all_text_contents() == [HOSTILE[3]] * 2
    assert HOSTILE[3] in page.page.locator("#photo-readout").text_content()
    # the option is "NAME · accuracy": the name, markup and all, as text
    assert page.page.locator("#model option").first.text_content().split(" · ")[0].endswith(
        '<img src=x onerror=alert("name")>')
    page.page.wait_for_timeout(500)  # an injected onerror/onload would have fired by now
    assert dialogs == [] and page.page.locator(INJECTED).count() == 0, dialogs
    assert page.page.evaluate("getComputedStyle(document.body).display") != "none"
    assert_same_origin(page, server)


def small_video(path, frames=24):
    from ferkit.images import sample_image

    face = cv2.resize(sample_image(), (240, 240))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 12, (320, 240))
    for i in range(frames):
        frame = np.full((240, 320, 3), 50, np.uint8)
        frame[:, 40 + i % 3:280 + i % 3] = face
        writer.write(frame)
    writer.release()
    return path


def test_video_view_end_to_end(server, browser, tmp_path):
    page = Page(browser, server, os.environ.get("FERKIT_SCREENSHOTS"))
    page.page.click("button[data-view=video]")
    for idle in ("#video-result", "#video-plot", "#video-links"):  # no empty player or broken image before a job
        assert not page.page.is_visible(idle), idle
    video = small_video(tmp_path / "clip.mp4")
    page.page.set_input_files("#video-file", str(video))
    page.page.locator("#video-result").wait_for(state="visible", timeout=180000)
    page.page.wait_for_function("document.getElementById('video-result').readyState >= 1", timeout=30000)
    duration = page.page.evaluate("document.getElementById('video-result').duration")
    assert duration > 1.0  # 24 frames at 12 fps, played in the page
    downloaded = {}
    for link in ("#video-download", "#video-csv"):
        with page.page.expect_download() as download:
            page.page.click(link)
        downloaded[link] = Path(download.value.path())
    assert downloaded["#video-download"].read_bytes()[:4] == b"\x1aE\xdf\xa3"  # WebM, what the page played
    rows = list(csv.DictReader(io.StringIO(downloaded["#video-csv"].read_text())))
    assert sorted({int(r["frame"]) for r in rows}) == list(range(24))  # one row per frame: one face in each
    assert {r["label"] for r in rows} == {"happy"}
    page.shoot("video")
    assert_same_origin(page, server)


def test_a_video_job_can_be_cancelled_and_bad_uploads_get_their_status(server, tmp_path):
    def post(body, headers=None):
        request = urllib.request.Request(server + "api/videos", data=body, method="POST", headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, reply = post(b"just some text, not a video", {"X-Filename": "notes.txt"})
    assert status == 415 and "not a video" in reply["error"]
    status, reply = post(b"x", {"Content-Length": str(300 * 2**20)})
    assert status == 413 and "limit" in reply["error"]
    status, reply = post(b"\x1aE\xdf\xa3 broken webm", {"X-Filename": "broken.webm"})
    assert status == 202
    for _ in range(240):
        job = json.loads(urllib.request.urlopen(f"{server}api/videos/{reply['id']}").read())
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.25)
    assert job["status"] == "failed" and job["error"], job  # the job ends with the reason
    assert "broken.webm" in job["error"] and "ferkit-serve-" not in job["error"], job  # named as uploaded
    long = small_video(tmp_path / "long.mp4", frames=400)
    status, reply = post(long.read_bytes(), {"X-Filename": "long.mp4"})
    assert status == 202
    request = urllib.request.Request(f"{server}api/videos/{reply['id']}", method="DELETE")
    urllib.request.urlopen(request, timeout=30)
    for _ in range(240):
        job = json.loads(urllib.request.urlopen(f"{server}api/videos/{reply['id']}").read())
        if job["status"] == "cancelled":
            break
        time.sleep(0.25)
    assert job["status"] == "cancelled"
    assert urllib.request.urlopen(server + "models/index.json").status == 200  # still serving
    # The last two aim at the shipped models, ferkit/models/, beside the page's folder ferkit/web/.
    for escape in ("static/../../fer.h5", "..%2F..%2Ffer.h5", "models/..%2F..%2Ffer.h5", "..%2Fmodels%2Ffer.h5",
                   "vendor/..%2F..%2Fmodels%2Ffer.h5"):
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(server + escape)
        assert error.value.code == 404


def test_concurrent_video_jobs_give_the_sequential_results(server, tmp_path):
    clip = small_video(tmp_path / "clip.mp4", frames=12).read_bytes()

    def run_job():
        request = urllib.request.Request(server + "api/videos", data=clip, method="POST",
                                         headers={"X-Filename": "clip.mp4"})
        job = json.loads(urllib.request.urlopen(request, timeout=60).read())
        for _ in range(600):
            job = json.loads(urllib.request.urlopen(f"{server}api/videos/{job['id']}").read())
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
        assert job["status"] == "done", job
        return urllib.request.urlopen(f"{server}api/videos/{job['id']}/faces.csv").read()

    alone = run_job()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda _: run_job(), range(3)))
    assert together == [alone] * 3 and alone.count(b"\n") == 13  # a header and one face per frame


def test_the_static_build_works_from_a_plain_file_server(browser, scene, tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "ferkit", "export-web", str(site)], env=ENV, cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    # fer's int8 copy for the Live view travels with it, gzip copy included
    index = json.loads((site / "models" / "index.json").read_text())
    assert next(m for m in index["models"] if m["name"] == "fer")["live_url"] == "models/fer.int8.onnx"
    assert (site / "models" / "fer.int8.onnx").is_file() and (site / "models" / "fer.int8.onnx.gz").is_file()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(site)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, process, 30)
        page = Page(browser, url, None)
        assert page.state()["threads"] == 1  # no cross-origin isolation on a plain host: one WASM thread
        faces = photo_in_page(page, scene)["faces"]
        assert [f["label"] for f in faces] == ["happy", "happy"]
        assert page.page.locator("#video-tab").is_hidden()  # no server: no Video view
        assert_same_origin(page, url)
    finally:
        process.terminate()


def assert_same_origin(page, origin):
    outside = [url for url in page.requests if not url.startswith((origin, "data:", "blob:"))]
    assert not outside, outside
    assert not [line for line in page.logs if line.startswith("page error")], page.logs
