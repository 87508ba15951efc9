"""The webcam bridge: Colab's eval_js, the anywidget front end, the file source, live mode, failures."""

import asyncio
import base64
import json
import sys
import time
import types

import cv2
import numpy as np
import pytest

pytest.importorskip("anywidget")

from ferkit import webcam  # noqa: E402
from ferkit.images import sample_image  # noqa: E402


def data_url(image_bgr):
    return "data:image/jpeg;base64," + base64.b64encode(cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]).decode()


@pytest.fixture
def photo():
    return sample_image()


@pytest.fixture(autouse=True)
def no_file_source(monkeypatch):
    monkeypatch.delenv(webcam.FILE_ENV, raising=False)


@pytest.fixture(autouse=True)
def in_a_kernel(monkeypatch):
    """These tests play the browser's side; the Python side believes it runs in a notebook kernel."""
    monkeypatch.setattr("IPython.get_ipython", lambda: types.SimpleNamespace(kernel=object()))


def test_data_urls_decode_and_errors_explain(photo):
    decoded = webcam.decode_data_url(data_url(photo))
    assert decoded.shape == photo.shape and np.abs(decoded.astype(int) - photo).mean() < 3
    with pytest.raises(webcam.WebcamError, match="webcam: no camera found"):
        webcam.decode_data_url("error:no camera found")
    with pytest.raises(webcam.WebcamError, match="sent no image"):
        webcam.decode_data_url("<html>")


# ---------------------------------------------------------------- Colab


@pytest.fixture
def fake_colab(monkeypatch):
    calls = []
    output = types.SimpleNamespace(answer=None)

    def eval_js(script, timeout_sec=None):
        calls.append((script, timeout_sec))
        if isinstance(output.answer, Exception):
            raise output.answer
        return output.answer

    output.eval_js = eval_js
    colab = types.ModuleType("google.colab")
    colab.output = output
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    return output, calls


def test_colab_snapshot_runs_our_javascript(fake_colab, photo):
    output, calls = fake_colab
    output.answer = data_url(photo)
    image = webcam.take_photo(quality=0.8, timeout=30)
    assert image.shape == photo.shape
    script, timeout = calls[0]
    assert "getUserMedia" in script and '"Capture"' in script
    assert script.rstrip().endswith("ferkitTakePhoto(null, 0.8, 30000);") and timeout >= 30


@pytest.mark.parametrize("answer, message", [
    ("error:permission to use the camera was denied", "permission to use the camera was denied"),
    ("error:the preview was closed by the user", "closed by the user"),
    (RuntimeError("kernel lost its front end"), "did not answer"),
])
def test_colab_failures_end_the_call(fake_colab, answer, message):
    output, _ = fake_colab
    output.answer = answer
    started = time.monotonic()
    with pytest.raises(webcam.WebcamError, match=message):
        asyncio.run(webcam.take_photo_async())
    assert time.monotonic() - started < 2


# ---------------------------------------------------------------- the widget, played over its comm messages


def front_end_update(widget, **state):
    """What the browser sends when the JavaScript calls model.set(...); model.save_changes()."""
    widget._handle_msg({"content": {"data": {"method": "update", "state": state, "buffer_paths": []}}, "buffers": []})


@pytest.fixture
def shown(monkeypatch):
    widgets = []
    monkeypatch.setattr("IPython.display.display", lambda w: widgets.append(w))
    return widgets


def run_with_front_end(coroutine, shown, delay, **state):
    async def scenario():
        task = asyncio.ensure_future(coroutine)
        await asyncio.sleep(delay)
        if state:
            front_end_update(shown[0], **state)
        return await task

    return asyncio.run(scenario())


def test_widget_snapshot_returns_the_frame(shown, photo):
    image = run_with_front_end(webcam.take_photo_async(timeout=10), shown, 0.05, frame=data_url(photo))
    assert image.shape == photo.shape
    assert shown[0].mode == "snapshot" and shown[0].timeout_ms == 10000
    assert "getUserMedia" in shown[0]._esm and "export default" in shown[0]._esm


@pytest.mark.parametrize("reason", ["permission to use the camera was denied", "no camera found",
                                    "insecure context: the page must be served over https or from localhost",
                                    "the preview was closed by the user", "timed out after 10 s without a capture"])
def test_widget_failures_end_the_call_with_the_reason(shown, reason):
    started = time.monotonic()
    with pytest.raises(webcam.WebcamError, match=reason):
        run_with_front_end(webcam.take_photo_async(timeout=10), shown, 0.05, error=reason)
    assert time.monotonic() - started < 2


def test_silent_front_end_times_out(shown):
    started = time.monotonic()
    with pytest.raises(webcam.WebcamError, match="no answer from the browser within 0 s"):
        run_with_front_end(webcam.take_photo_async(timeout=0.2), shown, 0.0)
    assert time.monotonic() - started < 4


def test_blocking_call_explains_itself_under_ipykernel_7(monkeypatch):
    monkeypatch.setattr(webcam, "_ipykernel_major", lambda: 7)
    with pytest.raises(webcam.WebcamError, match="await take_photo_async"):
        webcam.take_photo()


# ---------------------------------------------------------------- file source and live mode


def test_file_source_says_it_is_a_file(monkeypatch, tmp_path, photo, capsys):
    cv2.imwrite(str(tmp_path / "me.png"), photo)
    monkeypatch.setenv(webcam.FILE_ENV, str(tmp_path / "me.png"))
    np.testing.assert_array_equal(webcam.take_photo(), photo)
    assert "camera: the file me.png (FERKIT_WEBCAM_FILE is set; no real camera is used)" in capsys.readouterr().out
    monkeypatch.setenv(webcam.FILE_ENV, str(tmp_path / "missing.png"))
    with pytest.raises(webcam.WebcamError, match="no such file"):
        webcam.take_photo()


def test_live_widget_answers_each_frame_with_faces(shown, random_model, photo, monkeypatch):
    from ferkit.prediction import Predictor

    widget = webcam.live(Predictor(random_model), frame_width=256)
    sent = []
    monkeypatch.setattr(widget, "send", lambda content, buffers=None: sent.append(content))
    small = cv2.resize(photo, (256, 256))
    widget._handle_msg({"content": {"data": {"method": "custom", "content": {
        "type": "frame", "data": data_url(small), "width": 640}}}, "buffers": []})
    assert sent and sent[0]["type"] == "faces" and len(sent[0]["faces"]) == 1
    face = sent[0]["faces"][0]
    assert face["scale"] == pytest.approx(640 / 256) and 0 <= face["score"] <= 1 and face["color"].startswith("rgb")
    assert "msg:custom" in widget._esm and "FPS" in widget._esm


def test_live_from_file_runs_the_browser_round_trip(monkeypatch, tmp_path, random_model, photo):
    from ferkit.prediction import Predictor

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, photo.shape[1::-1])
    for _ in range(6):
        writer.write(photo)
    writer.release()
    monkeypatch.setenv(webcam.FILE_ENV, str(clip))
    report = webcam.live(Predictor(random_model))
    assert report["frames"] == 6 and report["fps"] > 0
    assert [len(labels) for labels in report["labels"]] == [1] * 6


def test_colab_live_loop_draws_then_stops(fake_colab, random_model, photo):
    from ferkit.prediction import Predictor

    output, calls = fake_colab
    frame = json.dumps({"frame": data_url(cv2.resize(photo, (320, 320))), "width": 640})
    answers = iter([frame, frame, "stop"])
    output.eval_js = lambda script, timeout_sec=None: calls.append(script) or next(answers)
    report = webcam.live(Predictor(random_model))
    assert report["frames"] == 2
    # Each call hands the browser the faces found in the previous frame, to draw over the video.
    assert 'ferkitStream("[]", 320)' in calls[0]
    drawn = json.loads(json.loads(calls[1].rsplit("ferkitStream(", 1)[1].split(", 320)")[0]))
    assert len(drawn) == 1 and drawn[0]["scale"] == pytest.approx(2.0)


def test_colab_live_reports_a_denied_camera(fake_colab, random_model):
    from ferkit.prediction import Predictor

    output, _ = fake_colab
    output.answer = "error:permission to use the camera was denied"
    with pytest.raises(webcam.WebcamError, match="permission to use the camera was denied"):
        webcam.live(Predictor(random_model))


def test_the_widget_colab_and_the_page_share_one_camera_script():
    camera = (webcam.WEB_ASSETS / "camera.js").read_text()
    assert "getUserMedia" in camera and "function ferkitOpenCamera" in camera
    assert webcam._widget_class()._esm.startswith(camera)  # the notebook widget
    assert webcam._COLAB_STREAM_JS.startswith(camera)  # Colab's live loop
    page = (webcam.WEB_ASSETS / "index.html").read_text()
    assert '<script src="camera.js"></script>' in page  # the web page

