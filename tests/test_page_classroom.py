"""The Live view in a classroom, in Debian's Chromium with its fake media: a camera picked from the list, a shared
screen (Chromium's fake screen: a moving test pattern, no face), ids that survive a face looking away, the session
panel's CSV and JSON exports equal to the page's own history (window.ferkitState.session), and the
aggregate-only mode that keeps no per-person rows at all.

The fake camera plays a clip in which the face is there for 27 frames and gone for 3 (30 frames a second): a look
away short enough for the tracker (10 missed analysed frames) at any analysis rate up to 60 frames a second.
"""

import csv
import io
import json
import os
from pathlib import Path

import pytest

from benchmarks.common import CHROMIUM, PAGE_ARGS, write_y4m
# The server, the page helper and the checks the browser tests share (tests/ is on sys.path under pytest).
from test_webapp import Page, assert_same_origin, server  # noqa: F401  (server is a fixture)

sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium: apt-get install chromium")

FACE_FRAMES, AWAY_FRAMES = 27, 3


def looking_away_clip(path):
    """write_y4m's face clip, the face there for FACE_FRAMES frames and then gone (a grey frame) for AWAY_FRAMES."""
    from ferkit.images import sample_image

    header, face = write_y4m(path, sample_image(), frames=1).read_bytes().split(b"\n", 1)
    away = b"FRAME\n" + bytes([60]) * (640 * 480) + bytes([128]) * (640 * 480 // 2)  # grey 60 in YUV 4:2:0
    path.write_bytes(header + b"\n" + face * FACE_FRAMES + away * AWAY_FRAMES)
    return path


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    clip = looking_away_clip(tmp_path_factory.mktemp("camera") / "looking_away.y4m")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=PAGE_ARGS + [f"--use-file-for-fake-video-capture={clip}"])
        yield Page(chromium, server, os.environ.get("FERKIT_SCREENSHOTS"))
        chromium.close()


def start(page, source_text, aggregate=False):
    """Live stopped if it runs (it starts by itself where the camera is allowed), then started on the source whose
    option text contains `source_text`, in aggregate-only mode or not."""
    if page.page.is_enabled("#live-stop"):
        page.page.click("#live-stop")
    page.page.wait_for_function("document.querySelectorAll('#live-source option').length > 1")
    options = page.page.locator("#live-source option").all_text_contents()
    page.page.select_option("#live-source", label=next(text for text in options if source_text in text))
    page.page.set_checked("#session-aggregate", aggregate)
    page.page.evaluate("window.previousSession = window.ferkitState.session")  # kept after Stop, until Start
    page.page.click("#live-start")
    page.page.wait_for_function("window.ferkitState.session !== window.previousSession"
                                " && window.ferkitState.session.frames.length >= 3", timeout=60000)


def stop(page):
    page.page.click("#live-stop")
    # The session stays after Stop: what the page holds now is what it exports.
    return page.page.evaluate("JSON.parse(JSON.stringify({settings: window.ferkitState.session.settings, "
                              "rows: window.ferkitState.session.rows, frames: window.ferkitState.session.frames}))")


def exports(page):
    """The session panel's two downloads: (CSV rows as dicts, JSON)."""
    files = {}
    for button in ("#session-csv", "#session-json"):
        with page.page.expect_download() as download:
            page.page.click(button)
        files[button] = Path(download.value.path()).read_text()
    return list(csv.DictReader(io.StringIO(files["#session-csv"]))), json.loads(files["#session-json"])


def test_a_picked_camera_keeps_a_face_s_id_and_the_exports_equal_the_session(page):
    options = page.page.locator("#live-source option").all_text_contents()
    assert any("looking_away.y4m" in text for text in options), options  # the fake camera, by its name
    assert "Share a window or screen" in options
    start(page, "looking_away.y4m")
    # Wait for the face to look away (an analysed frame without it) and come back.
    page.page.wait_for_function("""(() => { const frames = window.ferkitState.session.frames;
                                           const away = frames.findIndex((f) => f.faces === 0);
                                           return away > 0 && frames.slice(away).some((f) => f.faces === 1); })()""",
                                timeout=60000)
    page.shoot("live_session")
    session = stop(page)
    assert not page.state()["error"]
    rows, frames = session["rows"], session["frames"]
    assert {row["id"] for row in rows} == {0}, [(f["time"], f["faces"]) for f in frames]  # away a moment, one id
    people = page.page.locator("#session-person option").all_text_contents()
    assert len(people) == 1 and people[0].startswith("#0 "), people
    assert [frame["faces"] for frame in frames] == [sum(row["frame"] == k for row in rows) for k in range(len(frames))]
    assert {row["label"] for row in rows} == {"happy"}
    assert session["settings"]["source"].startswith("camera: ") and not session["settings"]["aggregateOnly"]
    names = session["settings"]["classNames"]

    csv_rows, exported = exports(page)
    assert exported["rows"] == rows and exported["frames"] == frames and exported["settings"] == session["settings"]
    assert [{**row, "box": [float(v) for v in row["box"]]} for row in rows] == [
        {"time": float(r["time"]), "frame": int(r["frame"]), "model": r["model"], "id": int(r["id"]),
         "box": [float(r[k]) for k in ("x", "y", "width", "height")], "label": r["label"],
         "probabilities": {name: float(r[name]) for name in names}} for r in csv_rows]
    shares = exported["bins"][0]["shares"]
    assert shares["happy"] == 1 and sum(shares.values()) == 1
    assert_same_origin(page, page.page.url)


def test_ids_are_drawn_on_tracked_faces_only(page):
    texts = page.page.evaluate("""() => {
        const context = document.createElement("canvas").getContext("2d"), texts = [];
        context.fillText = (text) => texts.push(text);
        ferkitDrawFaces(context, [{box: [10, 10, 50, 50], label: "happy", score: 0.8, id: 3},
                                  {box: [90, 10, 50, 50], label: "sad", score: 0.5}],
                        {colors: {happy: "#ffd54f", sad: "#64b5f6"}, unknownColor: "#9e9e9e"});
        return texts; }""")
    assert texts == ["#3 happy 80%", "sad 50%"]


def test_a_shared_screen_is_analysed(page):
    start(page, "Share a window or screen")
    page.page.wait_for_function("window.ferkitState.session.frames.length >= 5", timeout=60000)
    session = stop(page)
    assert not page.state()["error"]
    assert session["settings"]["source"].startswith("screen: "), session["settings"]
    # Chromium's fake screen shows a moving test pattern: frames are analysed, and no face is found in them.
    assert len(session["frames"]) >= 5
    assert sum(frame["faces"] for frame in session["frames"]) == len(session["rows"])


def test_aggregate_only_keeps_and_exports_no_per_person_rows(page):
    start(page, "looking_away.y4m", aggregate=True)
    page.page.wait_for_function("window.ferkitState.session.frames.filter((f) => f.faces).length >= 3", timeout=60000)
    assert page.page.evaluate("window.ferkitState.faces.every((face) => !('id' in face))")
    session = stop(page)
    assert session["settings"]["aggregateOnly"] and session["rows"] == []
    assert page.page.evaluate("window.ferkitState.session.byId.size") == 0
    assert page.page.is_visible("#session-note") and page.page.is_disabled("#session-person")
    names = session["settings"]["classNames"]

    csv_rows, exported = exports(page)
    assert list(csv_rows[0]) == ["time", "frame", "model", "faces", *names]
    assert [{"time": float(r["time"]), "model": r["model"], "faces": int(r["faces"]),
             "counts": {n: int(r[n]) for n in names}} for r in csv_rows] == session["frames"]
    assert set(exported) == {"settings", "frames", "bins"} and exported["frames"] == session["frames"]

    def keys(value):
        if isinstance(value, dict):
            return set(value) | set().union(*map(keys, value.values()))
        return set().union(*map(keys, value)) if isinstance(value, list) else set()

    assert not keys(exported) & {"id", "box", "rows", "probabilities"}, keys(exported)
    assert page.page.evaluate("window.ferkitState.session.frames.some((f) => f.counts.happy > 0)")


def test_a_model_switched_mid_session_is_recorded_with_each_frame(page):
    start(page, "looking_away.y4m")
    first = page.page.evaluate("window.ferkitState.session.settings.model")
    other = next(name for name in page.page.locator("#model option").evaluate_all("(os) => os.map((o) => o.value)")
                 if name != first)
    page.page.select_option("#model", other)
    page.page.wait_for_function(f"window.ferkitState.session.frames.filter((f) => f.model === {other!r} && f.faces)"
                                ".length >= 3", timeout=120000)
    session = stop(page)
    assert not page.state()["error"]
    models = session["settings"]["models"]
    assert [m["model"] for m in models] == [first, other] and models[0]["from"] == 0 and models[1]["from"] > 0
    assert session["settings"]["model"] == other
    # Each frame names the model that classified it: the first model's frames, then only the other's.
    names = [frame["model"] for frame in session["frames"]]
    switch = names.index(other)
    assert set(names[:switch]) == {first} and set(names[switch:]) == {other}
    assert session["frames"][switch]["time"] >= models[1]["from"]
    assert all(row["model"] == session["frames"][row["frame"]]["model"] for row in session["rows"])
    assert len({row["id"] for row in session["rows"]}) == 1  # the same person, one id across the switch
    csv_rows, _ = exports(page)
    assert [r["model"] for r in csv_rows] == [row["model"] for row in session["rows"]]


def test_quick_switches_end_on_the_model_the_switch_shows(page):
    start(page, "looking_away.y4m")
    first = page.page.evaluate("window.ferkitState.model")  # the default: the smaller model, the quicker to load
    other = next(name for name in page.page.locator("#model option").evaluate_all("(os) => os.map((o) => o.value)")
                 if name != first)
    for name in (other, first) * 3:  # each before the previous one has loaded; the larger one slower to load
        page.page.select_option("#model", name)
    page.page.wait_for_function("window.ferkitState.ready", timeout=120000)
    page.page.wait_for_timeout(5000)  # an earlier choice arriving late must not take over
    assert page.page.evaluate("window.ferkitState.model") == first == page.page.input_value("#model")
    page.page.wait_for_function(f"window.ferkitState.session.frames.at(-1).model === {first!r}", timeout=60000)
    session = stop(page)
    assert not page.state()["error"]
    assert session["settings"]["model"] == first and session["settings"]["models"][-1]["model"] == first


def test_a_new_model_s_first_answer_is_not_averaged_with_the_old_one_s(page):
    followed = page.page.evaluate("""async () => {
        const { Tracker } = await import("./tracking.js");
        const tracker = new Tracker({ min_iou: 0.3, max_missed: 10, smoothing: 0.6 });
        const face = (happy) => ({ box: [10, 10, 50, 50], probabilities: { happy, sad: 1 - happy } });
        const answers = [tracker.update([face(0.9)]), tracker.update([face(0.5)])];
        tracker.restartSmoothing();
        answers.push(tracker.update([face(0.2)]), tracker.update([face(0.4)]));
        return answers.map(([{ id, probabilities }]) => [id, probabilities.happy]); }""")
    ids, happy = zip(*followed)
    assert ids == (0, 0, 0, 0)  # the same person throughout
    assert happy[1] == pytest.approx(0.6 * 0.9 + 0.4 * 0.5)  # smoothed while one model answers
    assert happy[2] == pytest.approx(0.2)  # the new model's first answer, alone
    assert happy[3] == pytest.approx(0.6 * 0.2 + 0.4 * 0.4)  # then smoothed again
