"""Classifying the faces in images and videos, and drawing the results.

    from ferkit.prediction import Predictor
    predictor = Predictor("fer")            # fer.json + fer.h5 (+ fer.meta.json)
    result = predictor.predict("photo.jpg")
    result.faces[0].label, result.faces[0].score, result.faces[0].probabilities
    cv2.imwrite("out.jpg", result.annotate())
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ferkit import faces as face_module
from ferkit import files, video
from ferkit.images import MAX_IMAGE_PIXELS, ImageError, load_image, to_gray
from ferkit.inference import predict_probabilities, traced_forward
from ferkit.model import load_model
from ferkit.progress import progress as report
from ferkit.settings import EMOTION_COLORS, TRACKING, UNKNOWN_COLOR  # noqa: F401 - EMOTION_COLORS re-exported
from ferkit.tracking import Tracker
from ferkit.video import MAX_VIDEO_FRAMES

if TYPE_CHECKING:  # only named in annotations: pandas is imported where a table is made
    import pandas


@dataclass
class FacePrediction:
    """One classified face."""

    box: tuple[int, int, int, int]  # x, y, width, height in the input image
    detection_score: float
    label: str
    score: float  # probability of ``label``
    probabilities: dict[str, float]
    face_id: int | None = None  # stable across video frames

    def as_dict(self) -> dict:
        return {"box": list(self.box), "detection_score": round(self.detection_score, 4), "label": self.label,
                "score": round(self.score, 4), "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
                **({"face_id": self.face_id} if self.face_id is not None else {})}


@dataclass
class ImagePrediction:
    """All faces found in one image (possibly none), with the image they were found in."""

    image: np.ndarray = field(repr=False)  # BGR uint8
    faces: list[FacePrediction]
    source: str = ""
    annotated: Path | None = None  # the annotated copy, once one is written

    def as_dict(self) -> dict:
        """JSON-ready: the source, every face, and the annotated file if one was written."""
        return {"file": self.source, "faces": [f.as_dict() for f in self.faces],
                "annotated": str(self.annotated) if self.annotated else None}

    @property
    def message(self) -> str:
        if not self.faces:
            return f"{self.source or 'image'}: no face found"
        return f"{self.source or 'image'}: " + ", ".join(f"{f.label} {f.score:.0%}" for f in self.faces)

    def annotate(self) -> np.ndarray:
        """A BGR copy of the image with a box, label and confidence per face."""
        return annotate(self.image, self.faces)

    def table(self) -> str:
        """One row per face: number, box, label, score and every class probability."""
        if not self.faces:
            return self.message
        names = list(self.faces[0].probabilities)
        header = f"{'face':>4}  {'box (x,y,w,h)':<20} {'label':<9} {'score':>5}  " + " ".join(f"{n[:7]:>7}" for n in names)
        rows = [f"{i:>4}  {str(tuple(f.box)):<20} {f.label:<9} {f.score:>5.2f}  "
                + " ".join(f"{f.probabilities[n]:>7.3f}" for n in names) for i, f in enumerate(self.faces)]
        return "\n".join([header, *rows])


class Predictor:
    """A trained model plus a face detector: images in, labelled faces out.

    One predictor may be shared by several threads (a web server's): each
    thread gets its own face detector, and results equal sequential calls.
    Not across processes: TensorFlow cannot run in a ``fork()``ed child once
    the parent has used it, so a predictor used in another process than the
    one that made it raises RuntimeError instead of hanging. Make one
    predictor per process (in the worker), or start workers with
    ``multiprocessing.get_context("spawn")``.

    Parameters
    ----------
    model : str or Path, optional
        Stem or .json/.h5 path of a model saved by ``python -m ferkit train``;
        default ``$FERKIT_MODEL``, else the shipped fer.json + fer.h5
        (found from any working directory).
    detector : {"yunet", "mtcnn", "haar"}
    tta : bool
        Test-time augmentation: average each face over its mirror image and
        small shifts (:func:`ferkit.inference.tta_views`, as ``evaluate`` does).
    min_face_score : float
        Detections below this confidence are ignored.
    max_pixels : int or None
        Images larger than this (width x height) are refused before decoding
        (default 50 megapixels); None: no limit.
    align : bool or None
        Turn each face so its eyes are level before classifying it; default
        the model's ``face_align`` (chosen on PublicTest, docs/experiments/pipeline-fidelity.md).
    upscale_search : bool
        Also search each photo at twice its size for faces the first search
        missed (small or blurred ones; docs/experiments/pipeline-fidelity.md):
        5x the detection time. Video frames are searched once, for speed.
    """

    def __init__(self, model: str | Path | None = None, detector: str = "yunet", tta: bool = False,
                 min_face_score: float = face_module.MIN_FACE_SCORE, max_pixels: int | None = MAX_IMAGE_PIXELS,
                 align: bool | None = None, upscale_search: bool = True):
        self.model, self.meta = load_model(model)
        self.class_names = list(self.meta.class_names)
        self.detector, self.tta, self.min_face_score = detector, tta, min_face_score
        self.max_pixels, self.upscale_search = max_pixels, upscale_search
        self.align = self.meta.face_align if align is None else bool(align)
        face_module.get_detector(detector)  # fail now, with the reason, if it cannot run here
        self._forward = traced_forward(self.model)
        self._process = os.getpid()

    def _check_process(self) -> None:
        if os.getpid() != self._process:
            raise RuntimeError(
                f"this Predictor was made in process {self._process} and used in process {os.getpid()} (a fork): "
                "TensorFlow cannot run in a forked child and would hang. Make one Predictor per process, inside "
                "the worker, or start workers with multiprocessing.get_context('spawn')")

    def classify_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 face crops -> (N, classes) float32 probabilities (:func:`ferkit.inference.predict_probabilities`)."""
        self._check_process()
        return predict_probabilities(self.model, crops, tta=self.tta, forward=self._forward)

    def crops(self, image_bgr: np.ndarray, found: list[face_module.Face]) -> np.ndarray:
        """(N, S, S) uint8: each face of ``found`` cut from ``image_bgr`` by :func:`ferkit.faces.crop_faces`."""
        return face_module.crop_faces(to_gray(image_bgr), found, self.meta, self.align)

    def predict(self, image, channel_order: str = "rgb", name: str | None = None,
                upscale_search: bool | None = None, value_range: tuple[float, float] | None = None) -> ImagePrediction:
        """Detect and classify every face in ``image`` (path, bytes, array or PIL image).

        An image without faces gives an empty ``faces`` list, not an error.
        ``upscale_search`` overrides the predictor's for this call (live frames: False, for speed).
        Array and PIL pixel values are read by :mod:`ferkit.images`' rule (uint8 as is, floats in 0-1 or
        0-255, 16-bit; ambiguous ranges refused) unless ``value_range=(black, white)`` says what they mean.
        """
        self._check_process()
        image_bgr = load_image(image, channel_order, name, self.max_pixels, value_range)
        source = name or (str(image) if isinstance(image, (str, Path)) else "")
        found = face_module.detect_faces(image_bgr, self.detector, self.min_face_score,
                                         upscale_search=self.upscale_search if upscale_search is None
                                         else upscale_search)
        probabilities = self.classify_crops(self.crops(image_bgr, found))
        predictions = [self._face(f, p) for f, p in zip(found, probabilities)]
        return ImagePrediction(image_bgr, predictions, source)

    def _face(self, face: face_module.Face, probabilities: np.ndarray, face_id: int | None = None) -> FacePrediction:
        best = int(np.argmax(probabilities))
        return FacePrediction(face.box, face.score, self.class_names[best], float(probabilities[best]),
                              {n: float(p) for n, p in zip(self.class_names, probabilities)}, face_id)

    def track_frame(self, frame: np.ndarray, tracker: Tracker, timings: dict | None = None) -> list[FacePrediction]:
        """Detect, classify and track the faces of one video frame (BGR uint8), as ``predict_video`` does for
        each analysed frame: one search (no upscaled second search), then ``tracker``
        (:class:`ferkit.tracking.Tracker`) gives each face its id and smoothed probabilities. ``timings``, when
        given, accumulates the seconds spent in "detect" and "classify"."""
        started = time.perf_counter()
        found = face_module.detect_faces(frame, self.detector, self.min_face_score)
        detected = time.perf_counter()
        probabilities = self.classify_crops(self.crops(frame, found))
        if timings is not None:
            timings["detect"] = timings.get("detect", 0.0) + detected - started
            timings["classify"] = timings.get("classify", 0.0) + time.perf_counter() - detected
        return [self._face(face, smoothed, face_id) for face, face_id, smoothed in tracker.update(found, probabilities)]

    def predict_video(self, source: str | Path, output: str | Path | None = None, stride: int = 1,
                      smoothing: float = TRACKING.smoothing, progress: bool = True, max_frames: int | None = MAX_VIDEO_FRAMES,
                      on_progress=None):
        """Classify faces through a video; returns a pandas DataFrame with one row per face per analysed frame.

        Faces are tracked across frames (stable ``face_id``: each detection joins
        the track whose last box overlaps it most) and each track's probabilities
        are smoothed over time (exponential moving average, weight ``smoothing``
        on the past). ``stride`` analyses every n-th frame; ``output`` (e.g.
        ``out.mp4``) gets every frame, annotated with the latest result, and
        appears only once the whole video is written. Videos longer than
        ``max_frames`` (default one hour at 30 fps) are refused; frames over
        ``max_pixels`` too. ``on_progress(frames_done, frames_total or None)``
        is called after every frame; an exception it raises stops the run
        (the web app's Cancel), leaving no output behind.
        """
        self._check_process()
        opened = video.open_video(source, max_frames, self.max_pixels)
        if output is not None:
            output = files.check_output_path(output, source)
        tracker = Tracker(smoothing)
        rows, current = [], []
        index = 0
        with contextlib.ExitStack() as cleanup:  # unwound last-in first-out: the writer closes before the rename
            cleanup.callback(opened.capture.release)
            writer = None
            clock = video.FrameClock(opened.capture, opened.fps)
            frames = report(video.frames(opened.capture), f"video {Path(source).name}", opened.total, "frame",
                            enabled=progress)
            for frame in frames:
                seconds = clock.seconds()
                if index % max(1, stride) == 0:
                    current = self.track_frame(frame, tracker)
                    rows.extend(video.face_row(index, seconds, prediction) for prediction in current)
                if output is not None:
                    if writer is None:
                        # The video appears at `output` only once complete (files.atomic_path).
                        writer = video.open_video_writer(cleanup.enter_context(files.atomic_path(output)), output,
                                                         opened.fps, frame.shape[1], frame.shape[0])
                        cleanup.callback(writer.release)
                    writer.write(annotate(frame, current))
                index += 1
                if max_frames is not None and index > max_frames:
                    raise ImageError(f"{source}: more than {max_frames} frames; pass max_frames= "
                                     "(or --max-frames) to allow it, or cut the video")
                if on_progress is not None:
                    on_progress(index, opened.total)
            if index == 0:
                raise ImageError(f"{source}: no frame could be decoded (empty video or unsupported codec)")
        import pandas as pd

        table = pd.DataFrame(rows, columns=video.table_columns(self.class_names))
        table.attrs["frames"] = index
        return table


def annotate(image_bgr: np.ndarray, predictions: list[FacePrediction]) -> np.ndarray:
    """Draw each face's box and "label score" on a copy of the image.

    Line width and font size follow the image size, so labels stay legible on
    a 320-pixel thumbnail and a 4000-pixel photo alike.
    """
    import cv2

    out = image_bgr.copy()
    height, width = out.shape[:2]
    unit = max(height, width) / 640
    thickness = max(1, round(2 * unit))
    font_scale = max(0.4, 0.6 * unit)
    for prediction in predictions:
        x, y, w, h = prediction.box
        color = EMOTION_COLORS.get(prediction.label, UNKNOWN_COLOR)
        cv2.rectangle(out, (x, y), (x + w, y + h), color, thickness, cv2.LINE_AA)
        # a tracked face (video) shows its id, as the page draws it: "#3 happy 80%"
        person = f"#{prediction.face_id} " if prediction.face_id is not None else ""
        text = f"{person}{prediction.label} {prediction.score:.0%}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = y - th - baseline - 2 * thickness
        if top < 0:  # no room above the box: put the label inside it
            top = y
        cv2.rectangle(out, (x, top), (x + tw + 2 * thickness, top + th + baseline + 2 * thickness), color, -1)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        cv2.putText(out, text, (x + thickness, top + th + thickness), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0) if luminance > 128 else (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def face_rows(results, class_names) -> "pandas.DataFrame":
    """One row per face over ``results`` (ImagePrediction): file, face, box, label, score, p_<class>.

    An image without faces gives one row with an empty face number, so that
    every image processed appears.
    """
    import pandas as pd

    columns = ["file", "face", "x", "y", "width", "height", "detection_score", "label", "score"] + \
        [f"p_{name}" for name in class_names]
    rows = []
    for result in results:
        if not result.faces:
            rows.append({"file": result.source})
        for number, face in enumerate(result.faces):
            rows.append({"file": result.source, "face": number, "x": face.box[0], "y": face.box[1],
                         "width": face.box[2], "height": face.box[3], "detection_score": face.detection_score,
                         "label": face.label, "score": face.score,
                         **{f"p_{name}": p for name, p in face.probabilities.items()}})
    table = pd.DataFrame(rows, columns=columns)
    table["face"] = table["face"].astype("Int64")
    return table
