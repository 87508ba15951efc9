"""Finding faces and cutting them out the way the model's training images were cut.

Detectors, chosen by name:

- ``"yunet"`` (default): OpenCV's ``FaceDetectorYN`` (OpenCV 4.5.4+ and 5.x)
  with the YuNet model shipped in ``ferkit/assets`` (MIT, OpenCV Zoo). Fast
  (~15 ms per 640x480 frame on 2 CPU cores), gives 5 landmarks.
- ``"mtcnn"``: the ``mtcnn`` package (carries its own weights; TensorFlow).
  Slower, more robust to rotated and small faces.
- ``"haar"``: OpenCV's Haar cascade, only where the installed OpenCV still has
  ``CascadeClassifier`` and its data files (4.x; OpenCV 5 removed them).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ferkit.settings import DETECTOR, FER2013_CROP, LOW_CONTRAST_PERCENTILE  # noqa: F401 - FER2013_CROP re-exported

ASSETS = Path(__file__).parent / "assets"
YUNET_MODEL = ASSETS / "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
DETECTORS = ("yunet", "mtcnn", "haar")
# The search settings live in ferkit.settings (the page receives the same values); these names are kept
# because callers and the docs use them.
DETECT_MAX_PIXELS = DETECTOR.max_pixels
MIN_FACE_SCORE = DETECTOR.min_face_score
CONFIRMED_SCORE_DISCOUNT = DETECTOR.confirmed_score_discount
YUNET_SCORE_FLOOR = DETECTOR.score_floor
UPSCALE_SEARCH_MIN_FACE = DETECTOR.upscale_search_min_face


class DetectorUnavailable(RuntimeError):
    """The requested detector cannot run here; the message says what to install."""


@dataclass(frozen=True)
class Face:
    """One detected face, in the pixel coordinates of the full image.

    ``box`` is (x, y, width, height); ``landmarks`` is (5, 2) float32: right eye,
    left eye, nose tip, right and left mouth corners (as seen in the image:
    the subject's right eye is on the image's left), or None.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False)

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2


def detect_faces(image_bgr: np.ndarray, detector: str = "yunet", min_score: float = MIN_FACE_SCORE,
                 max_pixels: int = DETECT_MAX_PIXELS, upscale_search: bool = False,
                 confirmed_discount: float = CONFIRMED_SCORE_DISCOUNT) -> list[Face]:
    """All faces in a BGR uint8 image, ordered left to right (then top to bottom).

    Images of more than ``max_pixels`` are searched on a copy scaled down to
    that many pixels and the boxes scaled back, which keeps detection time
    flat for 12-megapixel photos. With ``upscale_search`` the image is also
    searched at twice that size, for 5x the detection time
    (docs/experiments/pipeline-fidelity.md): a face of the first search that the second also sees
    (IoU 0.5 or more) is kept from ``min_score - confirmed_discount``, and the
    faces only the second finds (overlapping no face of the first by IoU 0.3
    or more, and at least :data:`UPSCALE_SEARCH_MIN_FACE` pixels) from
    ``min_score``: blurred, dim and low-resolution faces one search misses.
    Safe to call from several threads at once.
    """
    height, width = image_bgr.shape[:2]
    scale = min(1.0, (max_pixels / (height * width)) ** 0.5)
    if upscale_search:
        low = min_score - confirmed_discount
        first, enlarged = _search(image_bgr, detector, low, scale), _search(image_bgr, detector, low, 2 * scale)
        faces = [f for f in first
                 if f.score >= min_score or any(box_iou(f.box, g.box) >= DETECTOR.confirm_iou for g in enlarged)]
        faces += [f for f in enlarged
                  if f.score >= min_score and max(f.box[2], f.box[3]) * scale >= UPSCALE_SEARCH_MIN_FACE
                  and all(box_iou(f.box, g.box) < DETECTOR.new_face_iou for g in faces)]
    else:
        faces = _search(image_bgr, detector, min_score, scale)
    faces = [_clip(f, width, height) for f in faces]
    return sorted((f for f in faces if f.box[2] > 1 and f.box[3] > 1), key=lambda f: (f.box[0], f.box[1]))


def _search(image_bgr: np.ndarray, detector: str, min_score: float, scale: float) -> list[Face]:
    """One detector pass over ``image_bgr`` resized by ``scale``, boxes in the image's own coordinates."""
    if scale == 1.0:
        return [f for f in get_detector(detector)(image_bgr) if f.score >= min_score]
    import cv2

    height, width = image_bgr.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # a 70000x8 strip keeps 1 row
    resized = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    back = np.array([width / size[0], height / size[1]], np.float32)
    return [Face((int(round(f.box[0] * back[0])), int(round(f.box[1] * back[1])),
                  int(round(f.box[2] * back[0])), int(round(f.box[3] * back[1]))), f.score,
                 None if f.landmarks is None else f.landmarks * back)
            for f in get_detector(detector)(resized) if f.score >= min_score]


def box_iou(a, b) -> float:
    """Intersection over union of two (x, y, width, height) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - w * h
    return w * h / union if union else 0.0


def _clip(face: Face, width: int, height: int) -> Face:
    x, y, w, h = face.box
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return Face((x0, y0, max(0, x1 - x0), max(0, y1 - y0)), face.score, face.landmarks)


_per_thread = threading.local()


def get_detector(name: str):
    """A callable ``BGR image -> list[Face]`` for a detector name.

    OpenCV's detectors keep per-call state inside the network, so two
    threads sharing one give wrong boxes or errors: each thread gets its own
    (cached for that thread). MTCNN is one shared model behind a lock.
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    cache = _per_thread.__dict__.setdefault("detectors", {})
    if name not in cache:
        cache[name] = _DETECTOR_FACTORIES[name]()
    return cache[name]


@lru_cache(maxsize=None)
def checked_yunet_model() -> str:
    """The shipped YuNet file's path, once its checksum and this OpenCV are known to run it (else
    DetectorUnavailable saying why); the web server checks it too before serving the detector."""
    import cv2

    if not hasattr(cv2, "FaceDetectorYN"):
        raise DetectorUnavailable(f"yunet needs OpenCV 4.5.4 or newer (cv2.FaceDetectorYN); this is OpenCV "
                                  f"{cv2.__version__}: `pip install -U opencv-python-headless`")
    data = YUNET_MODEL.read_bytes()
    if hashlib.sha256(data).hexdigest() != YUNET_SHA256:
        raise DetectorUnavailable(f"{YUNET_MODEL} is damaged (checksum mismatch); restore it from the repository")
    if hasattr(cv2, "utils") and hasattr(cv2.utils, "logging"):
        # OpenCV 5 warns on every detector creation that its new graph engine ignores targets.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return str(YUNET_MODEL)


def _yunet():
    import cv2

    net = cv2.FaceDetectorYN.create(checked_yunet_model(), "", (320, 320), DETECTOR.score_floor, DETECTOR.nms_threshold,
                                    DETECTOR.top_k)

    def detect(image_bgr: np.ndarray) -> list[Face]:
        net.setInputSize((image_bgr.shape[1], image_bgr.shape[0]))
        _, rows = net.detect(image_bgr)
        if rows is None:
            return []
        return [Face(tuple(int(round(v)) for v in row[:4]), float(row[14]),
                     row[4:14].reshape(5, 2).astype(np.float32)) for row in rows]

    return detect


@lru_cache(maxsize=None)
def _mtcnn():
    try:
        from mtcnn import MTCNN
    except ImportError as error:
        raise DetectorUnavailable("the mtcnn detector needs the mtcnn package: `pip install mtcnn` "
                                  "(it carries its weights; needs TensorFlow)") from error
    model = MTCNN()
    order = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    lock = threading.Lock()

    def detect(image_bgr: np.ndarray) -> list[Face]:
        with lock:
            found = model.detect_faces(np.ascontiguousarray(image_bgr[:, :, ::-1]))
        return [Face(tuple(int(v) for v in f["box"]), float(f["confidence"]),
                     np.array([f["keypoints"][k] for k in order], np.float32)) for f in found]

    return detect


def _haar():
    import cv2

    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise DetectorUnavailable(f"the haar detector needs OpenCV 4.x with its Haar cascades; OpenCV "
                                  f"{cv2.__version__} has none (OpenCV 5 removed them). Use the default "
                                  "'yunet', or `pip install 'opencv-python-headless<5'`")
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))

    def detect(image_bgr: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        boxes = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
        return [Face(tuple(int(v) for v in box), 1.0) for box in boxes]

    return detect


_DETECTOR_FACTORIES = {"yunet": _yunet, "mtcnn": _mtcnn, "haar": _haar}


def eye_angle(face: Face) -> float:
    """The tilt of the eye line in radians (positive: the image-right eye is lower), 0 without landmarks."""
    if face.landmarks is None:
        return 0.0
    (rx, ry), (lx, ly) = face.landmarks[0], face.landmarks[1]
    return float(np.arctan2(ly - ry, lx - rx)) if lx > rx else 0.0


def low_contrast_settings(images: np.ndarray, percentile: float = LOW_CONTRAST_PERCENTILE) -> dict:
    """The ``face_low_contrast`` setting from training images ((N, S, S) uint8): crops whose standard deviation
    is below its ``percentile`` of the images' get the images' median mean and standard deviation."""
    pixels = images.reshape(len(images), -1).astype(np.float64)
    means, stds = pixels.mean(axis=1), pixels.std(axis=1)
    return {"below_std": round(float(np.percentile(stds, percentile)), 2),
            "mean": round(float(np.median(means)), 2), "std": round(float(np.median(stds)), 2)}


def lift_low_contrast(crop: np.ndarray, below_std: float, mean: float, std: float) -> np.ndarray:
    """``crop`` (uint8) stretched linearly to ``mean`` and ``std`` if its standard deviation is below
    ``below_std``, else unchanged. Values are rounded half to even and clipped to 0-255."""
    pixels = crop.astype(np.float64)
    spread = pixels.std()
    if spread >= below_std:
        return crop
    stretched = (pixels - pixels.mean()) * (std / max(spread, 1.0)) + mean
    return np.clip(np.rint(stretched), 0, 255).astype(np.uint8)


def crop_side(face: Face, margin: float) -> float:
    """The side, in image pixels, of the square :func:`crop_face` cuts for ``face`` with ``margin``."""
    return max(face.box[2], face.box[3]) * (1 + 2 * margin)


def crop_face(gray: np.ndarray, face: Face, size: int, margin: float, offset: float = 0.0,
              align: bool = False, low_contrast: dict | None = None) -> np.ndarray:
    """Cut a face out of a grayscale image the way FER-2013's images are framed.

    The crop is a square of side ``max(w, h) * (1 + 2 * margin)`` around the
    box centre moved down by ``offset`` of that side. With ``align`` and eye
    landmarks, the square turns with the eye line so the eyes come out level:
    one similarity transform of the original image (bilinear), not a crop of a
    crop. Edge pixels are repeated where the square runs over the image; the
    square is then resized to ``size`` x ``size`` (area averaging when
    shrinking). With ``low_contrast`` (the model's ``face_low_contrast``: ``below_std``, ``mean``, ``std``),
    a flat crop is then stretched by :func:`lift_low_contrast`. Returns uint8 (size, size).
    """
    import cv2

    cx, cy = face.center
    side = crop_side(face, margin)
    angle = eye_angle(face) if align else 0.0
    if angle:
        n = max(1, int(round(side)))
        cos, sin, half = np.cos(angle), np.sin(angle), (n - 1) / 2
        scale = side / n
        # The crop's centre moves along the face's own downward axis (-sin, cos).
        cx, cy = cx - sin * offset * side, cy + cos * offset * side
        # Crop pixel (u, v) samples the image at centre + scale * R(angle) (u - half, v - half).
        inverse = np.array([[scale * cos, -scale * sin, cx - scale * (cos * half - sin * half) - 0.5],
                            [scale * sin, scale * cos, cy - scale * (sin * half + cos * half) - 0.5]])
        crop = cv2.warpAffine(gray, inverse, (n, n), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)
    else:
        cy += offset * side
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        x1, y1 = x0 + int(round(side)), y0 + int(round(side))
        height, width = gray.shape[:2]
        pad = max(0, -x0, -y0, x1 - width, y1 - height)
        if pad:
            gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
        crop = gray[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    crop = cv2.resize(crop, (size, size), interpolation=interpolation)
    return lift_low_contrast(crop, **low_contrast) if low_contrast else crop


def whole_image_face(image: np.ndarray) -> Face:
    """The face of an image that is one face already cut out (a crop set such as FER-2013's own): the centred
    square of its shorter side, which :func:`crop_face` with no margin cuts and resizes without a search.
    Its score is NaN: nothing was detected."""
    height, width = image.shape[:2]
    side = min(height, width)
    return Face(((width - side) // 2, (height - side) // 2, side, side), float("nan"))


def crop_faces(gray: np.ndarray, found: list[Face], meta, align: bool) -> np.ndarray:
    """(N, S, S) uint8: each face cut from a grayscale image with the model's crop settings (``meta``), the one
    crop that prediction, the web page's tests and training on photos (:mod:`ferkit.photos`) share."""
    size = meta.input_size
    if not found:
        return np.zeros((0, size, size), np.uint8)
    return np.stack([crop_face(gray, f, size, meta.face_margin, meta.face_offset, align,
                             meta.face_low_contrast) for f in found])
