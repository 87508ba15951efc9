"""Webcam snapshots and live mode in Colab, Jupyter (Lab, Notebook 7, VS Code) and headless runs.

The browser owns the camera, the kernel owns the model, so the image crosses
a JavaScript bridge:

- **Colab**: ``google.colab.output.eval_js`` runs :data:`CAMERA_JS` and
  returns a JPEG data URL.
- **Elsewhere**: :class:`CameraWidget`, an anywidget running the same
  JavaScript, syncs the frame back through a traitlet (no build step; works in
  JupyterLab 4, Notebook 7, VS Code).
- **Headless** (nbval, CI, scripts): set ``FERKIT_WEBCAM_FILE`` to an image or
  video and the "camera" is that file; every call says so.

Waiting for the browser differs by kernel: with ipykernel 7 a cell must
``await take_photo_async()`` (a blocking wait would stop the kernel from
receiving the widget's reply); with ipykernel 6, ``take_photo()`` polls the
front end with jupyter-ui-poll. Every failure (permission denied, no camera,
insecure page, preview closed, timeout) ends the call with a WebcamError.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path

import numpy as np

from ferkit.files import require_regular_file
from ferkit.images import decode_image_bytes, load_image
from ferkit.notebook import in_colab
from ferkit.settings import EMOTION_COLORS, IMAGE_SUFFIXES, UNKNOWN_COLOR, css_color

FILE_ENV = "FERKIT_WEBCAM_FILE"
#: Frames ``live()`` plays from a still image given as the camera file.
STILL_FRAMES = 5


class WebcamError(RuntimeError):
    """The camera could not deliver an image; the message says why."""


#: The browser side lives in ferkit/web/*.js, one source for the notebook widget, Colab and the web page.
WEB_ASSETS = Path(__file__).parent / "web"


def _web_asset(name: str) -> str:
    return (WEB_ASSETS / name).read_text(encoding="utf-8")


#: The camera (camera.js), the frame-rate meter (framerate.js) and the face drawing (drawing.js): classic scripts
#: the page loads one by one, joined here for the widget's module and Colab's eval_js, where imports do not work.
CAMERA_JS = "\n".join(_web_asset(name) for name in ("camera.js", "framerate.js", "drawing.js"))

_WIDGET_ESM = CAMERA_JS + _web_asset("widget.js")


def _widget_class():
    import anywidget
    import traitlets

    class CameraWidget(anywidget.AnyWidget):
        """The camera in the browser: a snapshot (``mode="snapshot"``) or a live stream (``mode="live"``)."""

        _esm = _WIDGET_ESM
        mode = traitlets.Unicode("snapshot").tag(sync=True)
        quality = traitlets.Float(0.9).tag(sync=True)
        timeout_ms = traitlets.Int(60000).tag(sync=True)
        frame_width = traitlets.Int(320).tag(sync=True)
        frame = traitlets.Unicode("").tag(sync=True)
        error = traitlets.Unicode("").tag(sync=True)
        running = traitlets.Bool(False).tag(sync=True)
        fps = traitlets.Float(0.0).tag(sync=True)  # as measured in the browser (results per second)
        answered = traitlets.Int(0).tag(sync=True)  # live frames the kernel has classified

    return CameraWidget


def __getattr__(name):
    if name == "CameraWidget":  # built lazily: anywidget is only needed in notebooks
        return _widget_class()
    raise AttributeError(name)


# ----------------------------------------------------------------------------
# Snapshots


def decode_data_url(data_url: str) -> np.ndarray:
    """``data:image/...;base64,...`` (or ``error:<reason>``) -> BGR uint8 image."""
    if data_url.startswith("error:"):
        raise WebcamError(f"webcam: {data_url[6:]}")
    header, _, payload = data_url.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise WebcamError(f"webcam: the browser sent no image (got {data_url[:40]!r})")
    return decode_image_bytes(base64.b64decode(payload), "webcam frame")


def file_source() -> Path | None:
    """The file standing in for the camera, if ``FERKIT_WEBCAM_FILE`` is set."""
    value = os.environ.get(FILE_ENV)
    if not value:
        return None
    path = Path(value)
    if not path.exists():
        raise WebcamError(f"{FILE_ENV}={value}: no such file")
    return path


def _read_file_source(path: Path) -> np.ndarray:
    print(f"camera: the file {path.name} ({FILE_ENV} is set; no real camera is used)")
    frames = _video_frames(path, limit=1)
    return frames[0] if frames else load_image(path)


def _video_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    import cv2

    if path.suffix.lower() in IMAGE_SUFFIXES:
        return []
    capture = cv2.VideoCapture(str(require_regular_file(path, "camera stand-in file")))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    if not frames:
        raise WebcamError(f"{path}: neither an image nor a readable video")
    return frames


def _colab_photo(quality: float, timeout: float) -> np.ndarray:
    from google.colab import output

    script = CAMERA_JS + f"\nferkitTakePhoto(null, {float(quality)}, {int(timeout * 1000)});"
    try:
        data_url = output.eval_js(script, timeout_sec=timeout + 2)
    except Exception as error:  # Colab raises its own types on a dead front end
        raise WebcamError(f"webcam: the browser did not answer ({error})") from error
    return decode_data_url(data_url)


def _ipykernel_major() -> int:
    try:
        import ipykernel

        return int(ipykernel.__version__.split(".")[0])
    except (ImportError, ValueError):
        return 0


def _require_notebook(what: str) -> None:
    """The camera is the browser's: without a notebook kernel there is no page to ask (a plain script)."""
    try:
        from IPython import get_ipython
    except ImportError:
        shell = None
    else:
        shell = get_ipython()
    if shell is None or not hasattr(shell, "kernel"):
        raise WebcamError(f"webcam: {what} needs a notebook (Jupyter, Colab or VS Code), where the browser holds the "
                          f"camera; this is a plain Python process. In a script, set {FILE_ENV}=photo.jpg to use a "
                          "file as the camera, or run `python -m ferkit predict photo.jpg`")


def take_photo(quality: float = 0.9, timeout: float = 60.0) -> np.ndarray:
    """Take one webcam snapshot and return it as a BGR uint8 array.

    Works in Colab, in Jupyter with ipykernel 6, and headless with
    ``FERKIT_WEBCAM_FILE``. In Jupyter with ipykernel 7 use
    ``await take_photo_async()`` instead (this function says so).
    """
    source = file_source()
    if source is not None:
        return _read_file_source(source)
    if in_colab():
        return _colab_photo(quality, timeout)
    _require_notebook("take_photo()")
    if _ipykernel_major() >= 7:
        raise WebcamError("webcam: in this Jupyter (ipykernel 7+) a cell cannot block while the browser answers; "
                          "use `photo = await take_photo_async()` instead")
    try:
        from jupyter_ui_poll import ui_events
    except ImportError as error:
        raise WebcamError("webcam: take_photo() in Jupyter needs jupyter-ui-poll (`pip install jupyter-ui-poll`), "
                          "or use `await take_photo_async()`") from error
    widget = _show_widget(quality, timeout)
    deadline = time.monotonic() + timeout + 2
    with ui_events() as poll:
        while not (widget.frame or widget.error):
            if time.monotonic() > deadline:
                raise WebcamError(f"webcam: no answer from the browser within {timeout:.0f} s")
            poll(10)
            time.sleep(0.05)
    return _widget_result(widget)


async def take_photo_async(quality: float = 0.9, timeout: float = 60.0) -> np.ndarray:
    """Take one webcam snapshot without blocking the kernel: ``photo = await take_photo_async()``."""
    source = file_source()
    if source is not None:
        return _read_file_source(source)
    if in_colab():
        return _colab_photo(quality, timeout)
    _require_notebook("take_photo_async()")
    widget = _show_widget(quality, timeout)
    loop = asyncio.get_running_loop()
    answered = loop.create_future()

    def on_change(change):
        if change["new"] and not answered.done():
            loop.call_soon_threadsafe(lambda: answered.done() or answered.set_result(None))

    widget.observe(on_change, names=["frame", "error"])
    try:
        await asyncio.wait_for(answered, timeout + 2)
    except asyncio.TimeoutError:
        raise WebcamError(f"webcam: no answer from the browser within {timeout:.0f} s "
                          "(is the widget displayed? in ipykernel 6 use take_photo())") from None
    finally:
        widget.unobserve(on_change, names=["frame", "error"])
    return _widget_result(widget)


def _show_widget(quality: float, timeout: float):
    from IPython.display import display

    widget = _widget_class()(mode="snapshot", quality=quality, timeout_ms=int(timeout * 1000))
    display(widget)
    return widget


def _widget_result(widget) -> np.ndarray:
    if widget.error:
        raise WebcamError(f"webcam: {widget.error}")
    return decode_data_url(widget.frame)


# ----------------------------------------------------------------------------
# Live mode


def _faces_message(predictor, image_bgr: np.ndarray, display_width: int) -> dict:
    # One search per frame, as the page's live view does: the second, enlarged one would cost 4x its time.
    result = predictor.predict(image_bgr, "bgr", upscale_search=False)
    scale = display_width / image_bgr.shape[1] if display_width else 1.0
    faces = []
    for face in result.faces:
        # drawing.js's face: the text it draws ("happy 80%") is made there from label and score
        faces.append({"box": list(face.box), "scale": scale, "label": face.label, "score": face.score,
                      "color": css_color(EMOTION_COLORS.get(face.label, UNKNOWN_COLOR))})
    return {"type": "faces", "faces": faces}


def live(predictor, frame_width: int = 320, max_frames: int | None = None):
    """Live mode: boxes and labels drawn over the webcam stream, with an FPS read-out and a Stop button.

    In Jupyter this displays a :class:`CameraWidget` and returns it at once; the
    kernel answers each frame from the browser while the notebook stays usable
    (read ``widget.fps``). In Colab it runs the stream in this cell until Stop
    is pressed. With ``FERKIT_WEBCAM_FILE`` it plays the file's frames
    through the same code and returns ``{"frames", "fps", "labels"}``.
    """
    source = file_source()
    if source is not None:
        return _live_from_file(predictor, source, frame_width, max_frames)
    if in_colab():
        return _live_colab(predictor, frame_width, max_frames)
    _require_notebook("live()")
    widget = _widget_class()(mode="live", frame_width=frame_width)

    def on_message(_widget, content, _buffers):
        if content.get("type") != "frame":
            return
        widget.fps = float(content.get("fps") or 0.0)
        try:
            image = decode_data_url(content["data"])
            widget.send(_faces_message(predictor, image, content.get("width", image.shape[1])))
            widget.answered += 1
        except Exception as error:  # keep the stream alive; show the problem instead
            widget.error = str(error)
            widget.send({"type": "faces", "faces": []})

    widget.on_msg(on_message)
    from IPython.display import display

    display(widget)
    return widget


def _live_from_file(predictor, source: Path, frame_width: int, max_frames: int | None):
    import cv2

    print(f"camera: the file {source.name} ({FILE_ENV} is set; no real camera is used)")
    # A still image has no length: it stands for a short stream of STILL_FRAMES identical frames.
    frames = _video_frames(source, max_frames) or [load_image(source)] * (max_frames or STILL_FRAMES)
    labels, started = [], time.perf_counter()
    for frame in frames:
        scale = frame_width / frame.shape[1]
        small = cv2.resize(frame, (frame_width, round(frame.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        # The same round trip a browser frame takes: JPEG, base64 data URL, decode, predict.
        data_url = "data:image/jpeg;base64," + base64.b64encode(cv2.imencode(".jpg", small)[1]).decode()
        message = _faces_message(predictor, decode_data_url(data_url), frame.shape[1])
        labels.append([f["label"] for f in message["faces"]])
    elapsed = time.perf_counter() - started
    return {"frames": len(frames), "fps": len(frames) / elapsed if elapsed else float("inf"), "labels": labels}


_COLAB_STREAM_JS = CAMERA_JS + _web_asset("colab_live.js")


def _live_colab(predictor, frame_width: int, max_frames: int | None):
    from google.colab import output

    faces, frames, started = [], 0, time.perf_counter()
    while max_frames is None or frames < max_frames:
        reply = output.eval_js(_COLAB_STREAM_JS + f"\nferkitStream({json.dumps(json.dumps(faces))}, {frame_width});")
        if reply == "stop":
            break
        if reply.startswith("error:"):
            raise WebcamError(f"webcam: {reply[6:]}")
        message = json.loads(reply)
        faces = _faces_message(predictor, decode_data_url(message["frame"]), message["width"])["faces"]
        frames += 1
    elapsed = time.perf_counter() - started
    return {"frames": frames, "fps": frames / elapsed if elapsed else 0.0}
