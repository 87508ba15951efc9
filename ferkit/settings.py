"""ferkit's vocabulary: the names and constants every layer shares, written once.

This is the bottom of the house: it imports nothing from ferkit. Python reads these names from here, and
the page receives them through ``models/index.json`` (:func:`page_settings`), so no constant is written
both in Python and in JavaScript. A model's own class names and crop travel with the model
(``NAME.meta.json``); the values here are FER-2013's and the defaults a new model starts from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: Canonical class names; the index is the original fer2013.csv ``emotion`` id.
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: The challenge's splits. Select models on PublicTest, report PrivateTest.
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
#: Side of FER-2013's square grayscale faces, in pixels: the models' default input size.
IMAGE_SIZE = 48

#: Photo file types read from folders (OpenCV and Pillow decode all of them).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Video file types ``predict`` and the page's Video view take.
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")

#: One colour per emotion (BGR, as OpenCV draws), chosen to stay distinguishable: each hue apart, and each at least
#: 3:1 against a white page (WCAG's contrast for graphics: the page's legends, bars and plot lines) while a white
#: or black label on it keeps 4.2:1 or more. Unknown names get grey.
EMOTION_COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (40, 40, 220), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (0, 115, 160),
    "sad": (200, 120, 40), "surprise": (128, 128, 0), "neutral": (105, 105, 105),
}
UNKNOWN_COLOR: tuple[int, int, int] = (120, 120, 120)


@dataclass(frozen=True)
class DetectorSettings:
    """How faces are searched for, in Python (:func:`ferkit.faces.detect_faces`) and in the page (pipeline.js).

    min_face_score: detections below this confidence are not faces (the default everywhere).
    confirmed_score_discount: with the second search, a face both searches see (boxes overlapping by
        ``confirm_iou`` or more) is kept from ``min_face_score`` minus this: two searches at different
        scales rarely agree on a texture, and the faces blur, dim light and busy backgrounds push under the
        threshold are often seen twice. Chosen on PublicTest frames and scikit-image's photos without faces
        (``benchmarks/bench_detection.py``; docs/experiments/pipeline-fidelity.md).
    score_floor: YuNet reports nothing below this score, whatever ``min_face_score`` asks.
    max_pixels: images with more pixels are searched on a downscaled copy (about 1280x960); a pixel budget
        rather than a longest side, so a long strip of faces is not shrunk below the smallest face found.
    upscale_search_min_face: faces found only by the second, enlarged search are kept from this side up, in
        pixels of the image as first searched: below it that search finds mostly texture.
    new_face_iou: a face of the enlarged search is new when it overlaps every kept face by less than this.
    nms_threshold, top_k: OpenCV FaceDetectorYN's non-maximum suppression, as ferkit creates it.
    """

    min_face_score: float = 0.6
    confirmed_score_discount: float = 0.2
    score_floor: float = 0.3
    max_pixels: int = 1280 * 960
    upscale_search_min_face: int = 64
    confirm_iou: float = 0.5
    new_face_iou: float = 0.3
    nms_threshold: float = 0.3
    top_k: int = 5000


@dataclass(frozen=True)
class TrackingSettings:
    """How faces are followed across video frames, in Python's video path and in the page (tracking.js).

    min_iou: the least box overlap (IoU) that continues a track.
    max_missed: the analysed frames a track may miss before it ends.
    smoothing: the weight of the past in each track's moving average of probabilities.
    """

    min_iou: float = 0.3
    max_missed: int = 10
    smoothing: float = 0.6


DETECTOR = DetectorSettings()
TRACKING = TrackingSettings()

#: The crop that reproduces FER-2013's framing from YuNet's boxes, chosen on PublicTest with
#: ``benchmarks/bench_pipeline.py --tune`` (docs/experiments/pipeline-fidelity.md): squared on the box's larger
#: side, 5% smaller per side, not moved; levelling the eyes measured worse, so it is off.
FER2013_CROP = {"face_margin": -0.05, "face_offset": 0.0, "face_align": False}

#: Crops with less contrast (pixel standard deviation) than this percentile of the Training faces are
#: stretched to the Training faces' median brightness and contrast: a dim, flat photo would otherwise show the
#: model a face unlike any it learned from. Chosen on PublicTest with ``benchmarks/bench_pipeline.py
#: --tune-lift`` (docs/experiments/pipeline-fidelity.md).
LOW_CONTRAST_PERCENTILE = 10


def css_color(bgr: tuple[int, int, int]) -> str:
    """An OpenCV BGR colour as CSS ``rgb(r,g,b)``."""
    b, g, r = bgr
    return f"rgb({r},{g},{b})"


def page_settings() -> dict:
    """The vocabulary the page needs, as ``models/index.json`` carries it (JSON-ready)."""
    return {
        "detector": asdict(DETECTOR),
        "tracking": asdict(TRACKING),
        "colors": {name: css_color(bgr) for name, bgr in EMOTION_COLORS.items()},
        "unknown_color": css_color(UNKNOWN_COLOR),
        "image_suffixes": list(IMAGE_SUFFIXES),
        "video_suffixes": list(VIDEO_SUFFIXES),
    }
