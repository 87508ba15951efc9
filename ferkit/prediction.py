"""Classifying the faces in images and videos, and drawing the results.

    from ferkit.prediction import Predictor
    predictor = Predictor("fer")            # fer.json + fer.h5 (+ fer.meta.json)
    result = predictor.predict("photo.jpg")
    result.faces[0].label, result.faces[0].score, result.faces[0].probabilities
    cv2.imwrite("out.jpg", result.annotate())
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ferkit import faces as face_module
from ferkit.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, ImageError, load_image, to_gray
from ferkit.model import load_model, predict_probabilities, traced_forward
from ferkit.progress import progress as report

if TYPE_CHECKING:  # only named in annotations: pandas is imported where a table is made
    import pandas

#: How faces are followed across video frames, here and in the page (``ferkit/web/tracking.js``, which receives
#: these through ``models/index.json``): the least box overlap (IoU) that continues a track, the analysed frames a
#: track may miss before it ends, and the weight of the past in each track's moving average of probabilities.
TRACKING = {"min_iou": 0.3, "max_missed": 10, "smoothing": 0.6}

#: Longest video ``predict_video`` reads by default: one hour at 30 frames per second.
MAX_VIDEO_FRAMES = 30 * 3600

#: One colour per emotion (BGR), chosen to stay distinguishable; unknown names get grey.
EMOTION_COLORS = {
    "angry": (40, 40, 220), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (0, 200, 255),
    "sad": (200, 120, 40), "surprise": (0, 140, 255), "neutral": (190, 190, 190),
}


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
        small shifts (:func:`ferkit.model.tta_views`, as ``evaluate`` does).
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
        """(N, S, S) uint8 face crops -> (N, classes) float32 probabilities (:func:`ferkit.model.predict_probabilities`)."""
        self._check_process()
        return predict_probabilities(self.model, crops, tta=self.tta, forward=self._forward)

    def crops(self, image_bgr: np.ndarray, found: list[face_module.Face]) -> np.ndarray:
        """(N, S, S) uint8: each face of ``found`` cut from ``image_bgr`` by :func:`crop_faces`."""
        return crop_faces(to_gray(image_bgr), found, self.meta, self.align)

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

    def predict_video(self, source: str | Path, output: str | Path | None = None, stride: int = 1,
                      smoothing: float = TRACKING["smoothing"], progress: bool = True, max_frames: int | None = MAX_VIDEO_FRAMES,
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
        import cv2

        from ferkit import files

        self._check_process()
        files.require_regular_file(source, "video file")
        capture = cv2.VideoCapture(str(source))
        if not capture.isOpened():
            raise ImageError(f"{source}: cannot open as a video (missing file or unsupported codec)")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        total = _declared_frames(capture)
        frame_pixels = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) * capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        counted = total is None and max_frames is not None
        if counted:  # a live recording declares no length: count first, up to one past the limit
            total = _count_frames(str(source), max_frames + 1)
        if max_frames is not None and total is not None and total > max_frames:
            capture.release()
            raise ImageError(f"{source}: {f'more than {max_frames}' if counted else total} frames, over the limit of "
                             f"{max_frames}; pass max_frames= (or --max-frames) to allow it, or cut the video")
        if self.max_pixels is not None and frame_pixels > self.max_pixels:
            capture.release()
            raise ImageError(f"{source}: frames of {frame_pixels / 1e6:.0f} megapixels, over the limit of "
                             f"{self.max_pixels / 1e6:g}; pass max_pixels= (or --max-pixels) to allow them")
        if output is not None:
            output = files.check_output_path(output, source)
        tracker = _Tracker(smoothing, TRACKING["min_iou"], TRACKING["max_missed"])
        rows, current = [], []
        index = 0
        with contextlib.ExitStack() as cleanup:  # unwound last-in first-out: the writer closes before the rename
            cleanup.callback(capture.release)
            writer = None
            clock = _FrameClock(capture, fps)
            frames = report(_frames(capture), f"video {Path(source).name}", total, "frame", enabled=progress)
            for frame in frames:
                seconds = clock.seconds()
                if index % max(1, stride) == 0:
                    found = face_module.detect_faces(frame, self.detector, self.min_face_score)
                    probabilities = self.classify_crops(self.crops(frame, found))
                    current = []
                    for face, face_id, smoothed in tracker.update(found, probabilities):
                        prediction = self._face(face, smoothed, face_id)
                        current.append(prediction)
                        rows.append({"frame": index, "time": seconds, "face_id": face_id,
                                     "x": face.box[0], "y": face.box[1], "width": face.box[2], "height": face.box[3],
                                     "label": prediction.label, "score": prediction.score,
                                     **{f"p_{k}": v for k, v in prediction.probabilities.items()}})
                if output is not None:
                    if writer is None:
                        # The video appears at `output` only once complete (files.atomic_path).
                        writer = _open_video_writer(cleanup.enter_context(files.atomic_path(output)), output,
                                                    fps, frame.shape[1], frame.shape[0])
                        cleanup.callback(writer.release)
                    writer.write(annotate(frame, current))
                index += 1
                if max_frames is not None and index > max_frames:
                    raise ImageError(f"{source}: more than {max_frames} frames; pass max_frames= "
                                     "(or --max-frames) to allow it, or cut the video")
                if on_progress is not None:
                    on_progress(index, total)
            if index == 0:
                raise ImageError(f"{source}: no frame could be decoded (empty video or unsupported codec)")
        import pandas as pd

        columns = ["frame", "time", "face_id", "x", "y", "width", "height", "label", "score"] + \
            [f"p_{k}" for k in self.class_names]
        table = pd.DataFrame(rows, columns=columns)
        table.attrs["frames"] = index
        return table


def crop_faces(gray: np.ndarray, found: list[face_module.Face], meta, align: bool) -> np.ndarray:
    """(N, S, S) uint8: each face cut from a grayscale image with the model's crop settings (``meta``), the one
    crop that prediction, the web page's tests and training on photos (:mod:`ferkit.photos`) share."""
    size = meta.input_size
    if not found:
        return np.zeros((0, size, size), np.uint8)
    return np.stack([face_module.crop_face(gray, f, size, meta.face_margin, meta.face_offset, align,
                                           meta.face_low_contrast) for f in found])


def _frames(capture):
    """The frames of an open ``cv2.VideoCapture``, in order, until one cannot be read."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def _declared_frames(capture) -> int | None:
    """The frame count the container declares, or None where it declares none (live recordings give 0 or junk)."""
    import cv2

    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if 0 < count < 2**31 else None


def _count_frames(source: str, limit: int) -> int:
    """Frames in ``source``, counted up to ``limit`` without converting them (far cheaper than analysing them)."""
    import cv2

    capture = cv2.VideoCapture(source)
    try:
        count = 0
        while count < limit and capture.grab():
            count += 1
        return count
    finally:
        capture.release()


class _FrameClock:
    """Each frame's time in seconds from the container's timestamps, so variable-frame-rate videos keep real time.

    Where the backend gives no usable timestamp (none, or not after the
    previous frame's), the frame is placed one frame period after the last.
    """

    def __init__(self, capture, fps: float):
        self.capture, self.fps, self.last = capture, fps, None

    def seconds(self) -> float:
        import cv2

        stamp = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
        if self.last is None:
            stamp = stamp if math.isfinite(stamp) and stamp >= 0 else 0.0
        elif not (math.isfinite(stamp) and stamp > self.last):
            stamp = self.last + 1 / self.fps
        self.last = stamp
        return round(stamp, 3)


def _open_video_writer(path: Path, output: Path, fps: float, width: int, height: int):
    """An OpenCV writer on ``path`` (the temporary file that becomes ``output``), with the codec the suffix calls
    for."""
    import cv2

    from ferkit.files import OutputError

    # MPEG-4 for .mp4 (what players expect); VP8 for .webm, which browsers play (OpenCV's wheels have no H.264).
    codec = {".mp4": "mp4v", ".webm": "VP80"}.get(path.suffix.lower(), "MJPG")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        if min(width, height) < 2:
            raise OutputError(f"{output}: the video's frames are {width}x{height} pixels, too small for the "
                              f"{path.suffix or 'video'} encoder; nothing was written (such frames hold no face)")
        raise OutputError(f"{output}: OpenCV cannot write this video here (codec or folder); try an .mp4 or .avi "
                          "name in a writable folder")
    return writer


class _Tracker:
    """Greedy IoU matching of detections to tracks, with per-track probability smoothing (:data:`TRACKING`;
    ``ferkit/web/tracking.js`` is the same in the page)."""

    def __init__(self, smoothing: float, min_iou: float, max_missed: int):
        self.smoothing, self.min_iou, self.max_missed = smoothing, min_iou, max_missed
        self.tracks: dict[int, dict] = {}
        self.next_id = 0

    def update(self, found, probabilities):
        pairs = sorted(((face_module.box_iou(track["box"], face.box), track_id, i)
                        for track_id, track in self.tracks.items() for i, face in enumerate(found)), reverse=True)
        assigned, used = {}, set()
        for overlap, track_id, i in pairs:
            if overlap >= self.min_iou and i not in assigned and track_id not in used:
                assigned[i] = track_id
                used.add(track_id)
        results = []
        for i, face in enumerate(found):
            if i in assigned:
                track = self.tracks[assigned[i]]
                track["probabilities"] = self.smoothing * track["probabilities"] + (1 - self.smoothing) * probabilities[i]
                track_id = assigned[i]
            else:
                track_id, self.next_id = self.next_id, self.next_id + 1
                track = self.tracks[track_id] = {"probabilities": probabilities[i].astype(np.float64)}
            track.update(box=face.box, missed=0)
            results.append((face, track_id, track["probabilities"]))
        for track_id in list(self.tracks):
            if track_id not in used and track_id not in [r[1] for r in results]:
                self.tracks[track_id]["missed"] += 1
                if self.tracks[track_id]["missed"] > self.max_missed:
                    del self.tracks[track_id]
        return results


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
        color = EMOTION_COLORS.get(prediction.label, (160, 160, 160))
        cv2.rectangle(out, (x, y), (x + w, y + h), color, thickness, cv2.LINE_AA)
        text = f"{prediction.label} {prediction.score:.0%}"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = y - th - baseline - 2 * thickness
        if top < 0:  # no room above the box: put the label inside it
            top = y
        cv2.rectangle(out, (x, top), (x + tw + 2 * thickness, top + th + baseline + 2 * thickness), color, -1)
        luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        cv2.putText(out, text, (x + thickness, top + th + thickness), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0) if luminance > 128 else (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def folder_images(folder: str | Path, recursive: bool = False, leave_out=None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images in ``folder`` (sorted; subfolders too if ``recursive``) and the files passed over, with why.

    Hidden files are ignored, and so is whatever ``leave_out(path)`` is true
    for (a run's own output folder and files). Symbolic links to folders are
    followed, once each: a link back to a folder already walked is passed
    over with the reason. Everything else that is not an image ferkit reads
    (another format, a video, a FIFO, a broken link) is listed as passed
    over, never dropped silently. Raises ImageError for a folder with
    nothing to process, saying whether ``recursive`` would find images.
    """
    folder = Path(folder)
    images, passed = [], []
    walked = set()
    for directory, names, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in walked:  # a link to a folder already walked (a loop, or two links to one folder)
            passed.append((Path(directory), "a link to a folder already searched; not searched again"))
            names[:] = []
            continue
        walked.add(real)
        keep = sorted(n for n in names if not n.startswith(".")) if recursive else []
        names[:] = [n for n in keep if not (leave_out and leave_out(Path(directory) / n))]
        for filename in sorted(filenames):
            path = Path(directory) / filename
            if filename.startswith(".") or (leave_out and leave_out(path)):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                passed.append((path, f"not an image ferkit reads (supported: {', '.join(IMAGE_SUFFIXES)})"))
            else:
                images.append(path)
    if not images and not passed:
        subfolders = 0 if recursive or not folder.is_dir() else \
            sum(1 for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
        hint = f"; it has {subfolders} subfolder(s): add --recursive (recursive=True) to look inside" if subfolders else ""
        raise ImageError(f"{folder}: no images found{hint}")
    return images, passed


def annotated_path(image: Path, folder: Path, out_dir: Path) -> Path:
    """Where the annotated copy of ``image`` (inside ``folder``) goes: the same relative path in
    ``out_dir``, with ``_annotated`` before the suffix, which is kept, so photo.jpg and photo.png
    never overwrite each other."""
    relative = image.relative_to(folder) if folder in image.parents else Path(image.name)
    return out_dir / relative.with_name(f"{relative.stem}_annotated{relative.suffix}")


def predict_folder(predictor: Predictor, folder: str | Path, out_dir: str | Path | None = None,
                   recursive: bool = False, overwrite: bool = False, progress: bool = False):
    """Predict every image in ``folder`` (sorted); yields ``(path, ImagePrediction or error message)``.

    A file that cannot be read (or annotated) gives its message and the run
    goes on; files that are not images come first, with the reason. With
    ``out_dir``, annotated copies are written there (:func:`annotated_path`)
    and each result's ``annotated`` attribute names the file written. A run
    never replaces a file it did not write (:class:`ferkit.files.OutputLedger`;
    ``overwrite`` allows it, except for this run's own inputs) and never reads
    its own outputs: ``out_dir`` inside ``folder`` and earlier annotated
    copies are left out of the inputs. ``progress`` reports on stderr
    (:func:`ferkit.progress.progress`).
    """
    from ferkit.files import OutputError, OutputLedger
    from ferkit.images import save_image

    folder = Path(folder)
    ledger = OutputLedger(out_dir, overwrite) if out_dir is not None else None
    own_folder = os.path.realpath(out_dir) if out_dir is not None else None

    def leave_out(path: Path) -> bool:
        return ledger is not None and (os.path.realpath(path) == own_folder or ledger.wrote(path))

    images, passed = folder_images(folder, recursive, leave_out)
    inputs = {os.path.realpath(path) for path in images}
    yield from passed
    for path in report(images, f"photos in {folder}", unit="image", enabled=progress):
        try:
            target = annotated_path(path, folder, Path(out_dir)) if ledger is not None else None
            if target is not None:  # checked before the work, which would be lost
                if os.path.realpath(target) in inputs:
                    raise OutputError(f"{target}: is also an input of this run; left as it is (choose another "
                                      "--out)")
                ledger.claim(target)
            result = predictor.predict(path)
            if target is not None:
                result.annotated = ledger.record(save_image(target, result.annotate()))
        except (ImageError, OutputError) as error:
            yield path, str(error)
            continue
        yield path, result


def write_video_table(table, path: str | Path) -> Path:
    """The per-frame table as CSV (written to a temporary file, then renamed into place)."""
    from ferkit.files import write_text

    return write_text(path, table.to_csv(index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.4f"))


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
