"""The page's fixes for what users found (issue 41), in a real Chromium on `python -m ferkit serve`.

Keyboard-only use (tabs, "choose a file", "Choose a video", visible focus); the Video view annotating with the
model chosen in the switch and saying which, and how many faces its plot shows; stale state cleared (a header
error after the next success, a photo after a failed one or a model switch, a stopped camera's bars and frame
rate); a large photo scaled in a worker without blocking the page, and one over ferkit's pixel limit refused;
the page opened from file://; roles, live regions, contrast and no sideways scroll at 390 px. With
$FERKIT_SCREENSHOTS set, each view is also saved at 390 px wide (test_webapp.py saves them at 1280).
"""

import csv
import io
import json
import os
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

# The fixtures and helpers of the page's main tests: one server and one Chromium for this file too.
from tests.test_webapp import Page, assert_same_origin, browser, scene, server, small_video  # noqa: F401

SCREENSHOTS = os.environ.get("FERKIT_SCREENSHOTS")
NARROW = {"width": 390, "height": 844}
PAGE_FOLDER = Path(__file__).resolve().parents[1] / "ferkit" / "web"


def shoot(page, name):
    """The view as it is, 390 px wide, saved as webapp_<name>_390.png where $FERKIT_SCREENSHOTS says."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.page.screenshot(path=str(Path(SCREENSHOTS) / f"webapp_{name}_390.png"), full_page=True)


def tab_to(page, element_id, key="Tab", presses=30):
    """Press `key` until the element `element_id` has the keyboard focus (AssertionError if it never does)."""
    for _ in range(presses):
        page.page.keyboard.press(key)
        if page.page.evaluate("document.activeElement && document.activeElement.id") == element_id:
            return
    raise AssertionError(f"{element_id} cannot be reached with {key}")


def choose_with_enter(page, file_input, path):
    """Enter on the focused button must open ``file_input``'s chooser; then pick ``path`` in it.

    The chooser is asked for by the input's click: that click is what the test checks (Chromium opens the dialog
    only with a fresh user activation, which a busy machine can let lapse between the key and the dialog), and the
    file goes in through the input, as the dialog would put it.
    """
    page.page.evaluate("""(selector) => { window.ferkitChooserOpened = false;
        document.querySelector(selector).addEventListener('click', () => { window.ferkitChooserOpened = true; },
                                                          { once: true }); }""", file_input)
    page.page.keyboard.press("Enter")
    page.page.wait_for_function("window.ferkitChooserOpened === true", timeout=10000)
    page.page.set_input_files(file_input, str(path))


def focus_is_visible(page):
    return page.page.evaluate("""(() => { const style = getComputedStyle(document.activeElement);
        return style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2; })()""")


def no_sideways_scroll(page):
    return page.page.evaluate("document.documentElement.scrollWidth") <= page.page.viewport_size["width"]


def crowd_video(path, faces=5, frames=10):
    """A clip of `faces` copies of the sample face side by side (more faces than the timeline plot shows)."""
    from ferkit.images import sample_image

    face = cv2.resize(sample_image()[20:240, 110:330], (120, 120))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (160 * faces, 200))
    for _ in range(frames):
        frame = np.full((200, 160 * faces, 3), 60, np.uint8)
        for k in range(faces):
            frame[40:160, 160 * k + 20:160 * k + 140] = face
        writer.write(frame)
    writer.release()
    return path


def video_job(server, clip: bytes, model=None):
    """An upload through the API -> (status, reply): the job once it ended, or the refusal."""
    query = f"?model={model}" if model else ""
    request = urllib.request.Request(server + "api/videos" + query, data=clip, method="POST",
                                     headers={"X-Filename": "clip.mp4"})
    try:
        job = json.loads(urllib.request.urlopen(request, timeout=60).read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    for _ in range(600):
        job = json.loads(urllib.request.urlopen(f"{server}api/videos/{job['id']}").read())
        if job["status"] in ("done", "failed"):
            break
        time.sleep(0.25)
    return 200, job


def test_keyboard_only_photo_and_video_with_the_chosen_model(server, browser, scene, tmp_path):
    """Tabs, "choose a file" and "Choose a video" by keyboard alone; the video job runs the switch's model (not
    the server's first), names it, and says its plot shows 4 of 5 faces; a model switch clears the photo
    without moving the header."""
    index = json.loads(urllib.request.urlopen(server + "models/index.json").read())
    names = [m["name"] for m in index["models"]]
    assert len(names) >= 2, "needs fer and fer_lite"
    page = Page(browser, server, None)
    chosen = page.state()["model"]
    assert chosen != names[0], "the page's default model should differ from the server's first, for this test"
    page.page.focus("body")
    tab_to(page, "live-tab")
    assert focus_is_visible(page)
    page.page.keyboard.press("ArrowRight")  # the tabs pattern: arrows move between tabs
    assert page.page.evaluate("document.activeElement.id") == "photo-tab"
    assert page.page.get_attribute("#photo-tab", "aria-selected") == "true"
    assert page.page.get_attribute("#live-tab", "aria-selected") == "false"
    assert page.page.is_visible("#photo") and not page.page.is_visible("#live")
    tab_to(page, "photo-choose")
    assert focus_is_visible(page)
    choose_with_enter(page, "#photo-file", scene)
    page.page.wait_for_function("window.ferkitState.faces.length == 2", timeout=60000)
    assert page.page.locator("#photo-table tr").count() == 3

    tab_to(page, "photo-tab", "Shift+Tab")
    page.page.keyboard.press("ArrowRight")
    assert page.page.evaluate("document.activeElement.id") == "video-tab" and page.page.is_visible("#video")
    tab_to(page, "video-choose")
    assert focus_is_visible(page)
    clip = crowd_video(tmp_path / "crowd.mp4")
    choose_with_enter(page, "#video-file", clip)
    page.page.locator("#video-result").wait_for(state="visible", timeout=120000)
    readout = page.page.text_content("#video-readout")
    assert f"annotated by {chosen}" in readout and "5 faces" in readout, readout
    assert "4 of 5 faces" in page.page.text_content("#video-plot-note")
    with page.page.expect_download() as download:
        page.page.click("#video-csv")
    in_page = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len({r["face_id"] for r in in_page}) == 5
    page.page.set_viewport_size(NARROW)
    assert no_sideways_scroll(page)
    shoot(page, "video")

    # The same clip through the API: the server's first model by default, and different numbers from it.
    status, default_job = video_job(server, clip.read_bytes())
    assert status == 200 and default_job["status"] == "done" and default_job["model"] == names[0], default_job
    theirs = urllib.request.urlopen(f"{server}api/videos/{default_job['id']}/faces.csv").read().decode()
    theirs = list(csv.DictReader(io.StringIO(theirs)))
    assert [r["p_happy"] for r in theirs] != [r["p_happy"] for r in in_page]
    status, refused = video_job(server, b"\x1aE\xdf\xa3", model="no_such_model")
    assert status == 400 and "unknown model 'no_such_model'" in refused["error"], refused
    assert all(name in refused["error"] for name in names)

    # A model switch clears the Photo view, and leaves the header where it was (here at 390 px wide).
    layout = "[...document.querySelectorAll('header > *')].map((e) => JSON.stringify(e.getBoundingClientRect()))"
    before = page.page.evaluate(layout)
    page.page.select_option("#model", names[0])
    page.page.wait_for_function(f"window.ferkitState.model === {json.dumps(names[0])} && "
                                "document.getElementById('status').textContent.startsWith('ready')", timeout=60000)
    assert page.page.evaluate(layout) == before
    assert page.page.locator("#photo-table tr").count() == 0 and page.page.evaluate(
        "document.getElementById('photo-canvas').hidden")
    assert page.page.is_disabled("#photo-png") and page.page.text_content("#photo-readout") == ""
    assert_same_origin(page, server)


def png_header(width, height):
    """A PNG that declares width x height (its pixel data is a few bytes): the header is what a limit reads."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_a_large_photo_is_scaled_off_the_main_thread_and_a_huge_one_refused(server, browser, tmp_path):
    """An 8000x6000 photo: no main-thread task over 200 ms, an indicator while it works, its faces found with
    boxes in its own pixels. Over ferkit's pixel limit (Python's too) it is refused, with the reason."""
    from ferkit.images import MAX_IMAGE_PIXELS, ImageError, load_image, sample_image

    face = sample_image()
    photo = np.full((6000, 8000, 3), 90, np.uint8)
    photo[1500:3500, 1600:3600] = cv2.resize(face, (2000, 2000))
    photo[2000:4000, 4400:6400] = cv2.resize(face, (2000, 2000))[:, ::-1]
    large = tmp_path / "large.jpg"
    cv2.imwrite(str(large), photo, [cv2.IMWRITE_JPEG_QUALITY, 80])
    del photo
    page = Page(browser, server, None)
    page.page.click("#photo-tab")
    page.page.evaluate("""() => {
        window.longTasks = [];
        new PerformanceObserver((list) => list.getEntries().forEach((e) => window.longTasks.push(e.duration)))
          .observe({ type: 'longtask' });
        window.sawIndicator = false;  // the progress bar shown and the readout saying what happens
        new MutationObserver(() => { if (!document.getElementById('photo-progress').hidden
                                         && document.getElementById('photo-readout').textContent) window.sawIndicator = true; })
          .observe(document.getElementById('photo'), { attributes: true, subtree: true, childList: true });
        window.ferkitState.faces = [];
      }""")
    page.page.set_input_files("#photo-file", str(large))
    page.page.wait_for_function("window.ferkitState.faces.length > 0", timeout=90000)
    page.page.wait_for_timeout(300)  # the last drawing's task, if any, is reported
    long_tasks = page.page.evaluate("window.longTasks")
    assert not [t for t in long_tasks if t > 200], long_tasks
    assert page.page.evaluate("window.sawIndicator") and page.page.is_hidden("#photo-progress")
    faces = page.state()["faces"]
    assert len(faces) == 2 and {f["label"] for f in faces} == {"happy"}, faces
    for found, (left, top) in zip(faces, [(1600, 1500), (4400, 2000)]):  # in the 8000x6000 photo's pixels
        x, y, w, h = found["box"]
        assert left < x + w / 2 < left + 2000 and top < y + h / 2 < top + 2000, found["box"]
    assert "scaled from 8000x6000" in page.page.text_content("#photo-readout")
    page.page.set_viewport_size(NARROW)
    assert no_sideways_scroll(page)
    shoot(page, "photo")

    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(10000, 6000))  # 60 megapixels declared
    with pytest.raises(ImageError):
        load_image(huge)  # Python refuses it as well (MAX_IMAGE_PIXELS, the --max-pixels default)
    page.page.set_input_files("#photo-file", str(huge))
    page.page.wait_for_function("document.getElementById('photo-readout').textContent.includes('megapixels')",
                                timeout=30000)
    message = page.page.text_content("#photo-readout")
    assert "10000x6000" in message and f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels" in message, message
    assert page.page.locator("#photo-table tr").count() == 0 and page.page.is_hidden("#photo-canvas")  # stale


def test_stale_state_goes_after_the_next_success_or_a_stop(server, browser, scene, tmp_path):
    """A header error goes with the next success; a failed photo takes the previous one and its table away;
    stopping the camera clears its bars and frame rate."""
    state = {"refuse": True}

    def refuse_fer(page):  # the first switch to the server's first model fails to load it (float or int8 copy)
        page.route("**/models/*.onnx", lambda route: route.abort() if state["refuse"] and
                   route.request.url.rsplit("/", 1)[-1] in (f"{first}.onnx", f"{first}.int8.onnx")
                   else route.fallback())

    index = json.loads(urllib.request.urlopen(server + "models/index.json").read())
    first = index["models"][0]["name"]
    page = Page(browser, server, None, setup=refuse_fer)
    if page.page.is_enabled("#live-stop"):  # the camera started by itself: its next frame would be the success
        page.page.click("#live-stop")
    page.page.select_option("#model", first)
    page.page.wait_for_function("window.ferkitState.error !== null", timeout=60000)
    assert page.page.text_content("#status").startswith("error")
    page.page.click("#photo-tab")
    page.page.set_input_files("#photo-file", str(scene))
    page.page.wait_for_function("window.ferkitState.faces.length == 2", timeout=60000)
    assert page.state()["error"] is None and page.page.text_content("#status").startswith("ready")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    page.page.set_input_files("#photo-file", str(broken))
    page.page.wait_for_function("document.getElementById('photo-readout').textContent.includes('cannot decode')",
                                timeout=30000)
    assert page.page.locator("#photo-table tr").count() == 0 and page.page.is_hidden("#photo-canvas")
    assert page.page.is_disabled("#photo-json")

    page.page.click("#live-tab")
    if page.page.is_enabled("#live-start"):
        page.page.click("#live-start")
    page.page.wait_for_function("window.ferkitState.fps > 0 && document.querySelectorAll('#live-bars .bar').length",
                                timeout=60000)
    assert no_sideways_scroll(page)
    page.page.set_viewport_size(NARROW)
    page.page.wait_for_timeout(300)
    assert no_sideways_scroll(page)
    shoot(page, "live")
    page.page.click("#live-stop")
    assert page.page.locator("#live-bars > *").count() == 0
    assert page.page.text_content("#live-readout") == "" and page.state()["fps"] == 0


def contrast(foreground, background):
    """WCAG's contrast ratio of two sRGB colours, each (r, g, b) 0-255."""
    def luminance(rgb):
        linear = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    high, low = sorted([luminance(foreground), luminance(background)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_roles_contrast_favicon_narrow_screens_and_file_urls(server, browser, scene):
    """Heading, tabs and live regions; text at 4.5:1 and the emotion colours at 3:1 on the page; the favicon;
    no sideways scroll at 390 px in any view; from file:// the page says it must be served."""
    from ferkit.settings import EMOTION_COLORS

    page = Page(browser, server, None)
    missing = []
    page.page.on("response", lambda response: response.status == 404 and missing.append(response.url))
    page.page.reload()
    page.page.wait_for_function("window.ferkitState && window.ferkitState.ready", timeout=120000)
    assert page.page.locator("h1").count() == 1
    assert page.page.locator("[role=tablist] [role=tab]").count() == 3
    assert page.page.locator("[role=tab][aria-selected=true]").count() == 1
    for view in ("live", "photo", "video"):
        assert page.page.get_attribute(f"#{view}", "role") == "tabpanel"
    for region in ("#status", "#photo-readout", "#video-readout"):
        assert page.page.get_attribute(region, "aria-live") == "polite", region
    assert not missing, missing  # the favicon (and everything else) is there
    assert page.page.evaluate("document.querySelector('link[rel=icon]').href").endswith("favicon.svg")

    page.page.click("#photo-tab")
    page.page.set_input_files("#photo-file", str(scene))
    page.page.wait_for_function("window.ferkitState.faces.length == 2", timeout=60000)
    colours = page.page.evaluate("""() => {
        const rgb = (value) => value.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number);
        const background = (node) => { for (; node; node = node.parentElement) {
            const colour = getComputedStyle(node).backgroundColor;
            if (!colour.startsWith('rgba(0, 0, 0, 0)') && colour !== 'transparent') return rgb(colour); }
          return [255, 255, 255]; };
        return [...document.querySelectorAll('header *, main p, main .readout, main label, main td, main th, ' +
                                             'button.link, .muted, .notice')]
          .filter((e) => e.offsetParent && e.textContent.trim() && !e.disabled)
          .map((e) => [e.id || e.className || e.tagName, rgb(getComputedStyle(e).color), background(e)]);
      }""")
    low = [(name, fg, bg) for name, fg, bg in colours if contrast(fg, bg) < 4.5]
    assert colours and not low, low
    page_background = page.page.evaluate("getComputedStyle(document.body).backgroundColor")
    page_background = [int(v) for v in page_background[4:-1].split(",")]
    for name, (b, g, r) in EMOTION_COLORS.items():
        assert contrast((r, g, b), page_background) >= 3, name  # legends, bars and plot lines read on the page
    rgb = [np.array(c[::-1], float) for c in EMOTION_COLORS.values()]
    assert min(np.abs(a - b).sum() for i, a in enumerate(rgb) for b in rgb[i + 1:]) >= 60  # and apart

    page.page.set_viewport_size(NARROW)
    for view in ("photo", "video", "live"):
        page.page.click(f"#{view}-tab")
        page.page.wait_for_timeout(200)
        assert no_sideways_scroll(page), view

    local = browser.new_page()
    local.goto((PAGE_FOLDER / "index.html").as_uri())
    local.locator("#not-served").wait_for(timeout=10000)
    assert "must be served" in local.text_content("#not-served")
    assert "python -m ferkit serve" in local.text_content("#not-served")
    local.close()


def test_a_video_jobs_error_names_no_path_on_the_server(tmp_path):
    """A failed job's reason names the upload as uploaded, and no folder of the server (its work folder, the
    system's temporary folder)."""
    import tempfile

    from ferkit.video_jobs import VideoJob, VideoJobs

    jobs = VideoJobs({"fer": Path("fer")}, tmp_path / "work" / "videos")
    folder = tmp_path / "work" / "videos" / "abc"
    job = VideoJob("abc", folder, "holiday.mp4", folder / "input.mp4", "fer")
    scratch = Path(tempfile.gettempdir()) / "ffmpeg-scratch" / "x.tmp"
    reason = jobs.public_error(OSError(f"cannot read {job.source}; writing {folder / 'video.webm'}; {scratch}; "
                                       f"{tmp_path / 'work' / 'uploads' / 'tmpab12'}"), job)
    jobs.close()
    assert "holiday.mp4" in reason and "video.webm" in reason, reason
    assert str(tmp_path) not in reason and tempfile.gettempdir() + os.sep not in reason, reason
    assert jobs.unknown_model("fer") is None and "unknown model 'x'; this server offers fer" == jobs.unknown_model("x")


def test_an_unknown_model_in_the_address_is_named_not_swapped_silently(server, browser):  # noqa: F811
    """?model=NAME with no such model: the page runs its default and says so, naming the models it has."""
    index = json.loads(urllib.request.urlopen(server + "models/index.json").read())
    page = Page(browser, server + "?model=no_such_model", None)
    try:
        assert page.state()["model"] == index["default_model"]
        status = page.page.text_content("#status")
        assert 'no model named "no_such_model"' in status and f"running {index['default_model']}" in status, status
        assert all(m["name"] in status for m in index["models"]), status
        assert "problem" in page.page.get_attribute("#status", "class")
    finally:
        page.page.close()


def test_two_quick_starts_open_one_camera_and_stop_closes_it(server, browser):  # noqa: F811
    """Start clicked twice while the camera opens: one camera, and Stop leaves none running."""
    def record_streams(page):
        page.add_init_script("""{
          const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
          window.openedStreams = [];
          navigator.mediaDevices.getUserMedia = async (...args) => {
            const stream = await open(...args);
            window.openedStreams.push(stream);
            return stream;
          };
        }""")

    page = Page(browser, server, None, setup=record_streams)
    try:
        if page.page.is_enabled("#live-stop"):
            page.page.click("#live-stop")
        page.page.evaluate("() => { const start = document.getElementById('live-start'); start.click(); start.click(); }")
        page.page.wait_for_function("window.ferkitState.frames > 0 && !document.getElementById('live-stop').disabled",
                                    timeout=60000)
        page.page.wait_for_timeout(500)
        assert page.page.locator("#live-stage video").count() == 1
        page.page.click("#live-stop")
        live = page.page.evaluate("""() => window.openedStreams.flatMap((s) => s.getTracks())
                                       .filter((t) => t.readyState === 'live').length""")
        assert live == 0 and page.page.evaluate("window.openedStreams.length") >= 1
    finally:
        page.page.close()
