"""Video files: frames with their container timestamps, which frames to analyse, chunks, the per-frame table.

:meth:`ferkit.prediction.Predictor.predict_video` reads a video from start to end; ``ferkit analyse``
(:mod:`ferkit.recordings`) first lists every frame's time (:func:`frame_times`), then has each chunk read only
its own frames (:func:`read_frames`, which seeks and checks where it landed against those times).
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ferkit.files import OutputError, require_regular_file, write_text
from ferkit.images import ImageError

# cv2 is imported where needed: importing ferkit must stay fast.

#: Longest video ``predict_video`` reads by default: one hour at 30 frames per second.
MAX_VIDEO_FRAMES = 30 * 3600
#: The per-frame table's columns before the probabilities (``p_<class>``), as ``predict`` writes them.
TABLE_COLUMNS = ("frame", "time", "face_id", "x", "y", "width", "height", "label", "score")


@dataclass
class OpenVideo:
    """An open ``cv2.VideoCapture`` and what its container declares."""

    capture: object
    fps: float  # declared frames per second (25 where none is declared)
    total: int | None  # declared frame count (or counted, for a live recording); None: unknown
    width: int
    height: int
    counted: bool = False  # ``total`` was counted (up to the limit) because the container declares none


def open_video(source: str | Path, max_frames: int | None = MAX_VIDEO_FRAMES,
               max_pixels: int | None = None) -> OpenVideo:
    """Open ``source`` for reading, refusing (ImageError) what cannot be read or is over the limits.

    A live recording declares no length: its frames are counted first, up to one past ``max_frames``.
    """
    import cv2

    require_regular_file(source, "video file")
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise ImageError(f"{source}: cannot open as a video (missing file or unsupported codec)")
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    video = OpenVideo(capture, capture.get(cv2.CAP_PROP_FPS) or 25.0, declared_frames(capture), width, height)
    if video.total is None and max_frames is not None:
        video.total, video.counted = count_frames(str(source), max_frames + 1), True
    if max_frames is not None and video.total is not None and video.total > max_frames:
        capture.release()
        raise ImageError(f"{source}: {f'more than {max_frames}' if video.counted else video.total} frames, over "
                         f"the limit of {max_frames}; pass max_frames= (or --max-frames) to allow it, or cut the "
                         "video")
    if max_pixels is not None and width * height > max_pixels:
        capture.release()
        raise ImageError(f"{source}: frames of {width * height / 1e6:.0f} megapixels, over the limit of "
                         f"{max_pixels / 1e6:g}; pass max_pixels= (or --max-pixels) to allow them")
    return video


def frames(capture):
    """The frames of an open ``cv2.VideoCapture``, in order, until one cannot be read."""
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def declared_frames(capture) -> int | None:
    """The frame count the container declares, or None where it declares none (live recordings give 0 or junk)."""
    import cv2

    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if 0 < count < 2**31 else None


def count_frames(source: str, limit: int) -> int:
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


def raw_seconds(capture) -> float:
    """The container's timestamp of the frame last grabbed, in seconds (NaN or junk where it has none)."""
    import cv2

    return capture.get(cv2.CAP_PROP_POS_MSEC) / 1000


class FrameClock:
    """Each frame's time in seconds from the container's timestamps, so variable-frame-rate videos keep real time.

    Where the backend gives no usable timestamp (none, or not after the
    previous frame's), the frame is placed one frame period after the last.
    """

    def __init__(self, capture, fps: float):
        self.capture, self.fps, self.last = capture, fps, None

    def seconds(self) -> float:
        stamp = raw_seconds(self.capture)
        if self.last is None:
            stamp = stamp if math.isfinite(stamp) and stamp >= 0 else 0.0
        elif not (math.isfinite(stamp) and stamp > self.last):
            stamp = self.last + 1 / self.fps
        self.last = stamp
        return round(stamp, 3)


def frame_times(source: str | Path, max_pixels: int | None = None) -> tuple[list[float], OpenVideo]:
    """Every frame's time (seconds, as :class:`FrameClock` gives them to ``predict``), read in one pass that
    decodes but does not convert the frames; with the video's declared properties (its capture released)."""
    video = open_video(source, None, max_pixels)
    try:
        clock, times = FrameClock(video.capture, video.fps), []
        while video.capture.grab():
            times.append(clock.seconds())
    finally:
        video.capture.release()
    if not times:
        raise ImageError(f"{source}: no frame could be decoded (empty video or unsupported codec)")
    return times, video


def sampled_frames(times: list[float], stride: int = 1, fps: float | None = None) -> list[int]:
    """The frames to analyse: every ``stride``-th (as ``predict --stride``), or with ``fps`` the first frame in
    each 1/``fps`` second interval of the container's time (variable frame rates keep an even pace)."""
    if fps is None:
        return list(range(0, len(times), max(1, stride)))
    picked, last_slot = [], None
    for index, seconds in enumerate(times):
        slot = math.floor(seconds * fps + 1e-9)
        if slot != last_slot:
            picked.append(index)
            last_slot = slot
    return picked


@dataclass(frozen=True)
class Chunk:
    """Frames ``[first, end)`` of a recording, read from ``warm_first`` so that the tracker is warm at ``first``."""

    index: int
    first: int
    end: int
    warm_first: int


def chunk_ranges(times: list[float], analysed: list[int], chunk_seconds: float, overlap_seconds: float,
                 min_warm_up: int) -> list[Chunk]:
    """Cut a recording into chunks of about ``chunk_seconds`` (on frame boundaries of analysed frames).

    Each chunk but the first starts its tracker ``overlap_seconds`` earlier, and at least ``min_warm_up``
    analysed frames earlier (:func:`ferkit.tracking.warm_up_frames`), so its tracks and smoothed probabilities
    at its first frame equal a tracker's that ran from the start, and its ids can be matched to the chunk
    before's in the overlap.
    """
    starts = [0]
    for position, index in enumerate(analysed):
        if position and times[index] - times[starts[-1]] >= chunk_seconds:
            starts.append(index)
    ends = starts[1:] + [len(times)]
    chunks = []
    for number, (first, end) in enumerate(zip(starts, ends)):
        position = bisect.bisect_left(analysed, first)
        back = position
        while back > 0 and (position - back < min_warm_up or times[first] - times[analysed[back]] < overlap_seconds):
            back -= 1
        chunks.append(Chunk(number, first, end, analysed[back] if number else 0))
    return chunks


def read_frames(source: str | Path, start: int, end: int, times: list[float], wanted=None):
    """(index, BGR frame) for frames ``start`` to ``end - 1`` (only those in ``wanted``, when given).

    Seeks near ``start``, identifies the frame it landed on by its timestamp in ``times``
    (:func:`frame_times`) and checks every frame after; where timestamps cannot tell frames apart
    (missing, repeated, or the seek landed past ``start``) it reads from the first frame instead.
    """
    import cv2

    def located(capture) -> int | None:
        stamp = round(raw_seconds(capture), 3)
        position = bisect.bisect_left(times, stamp - 5e-4)
        return position if position < len(times) and abs(times[position] - stamp) < 5e-4 else None

    capture = cv2.VideoCapture(str(source))
    index, checked, last_yielded = None, start > 0, start - 1
    try:
        if checked:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        while index is None or index + 1 < end:
            if not capture.grab():
                raise ImageError(f"{source}: frame {0 if index is None else index + 1} could not be decoded "
                                 "(the file changed, or it cannot be read from the middle)")
            if index is None:
                index = located(capture) if checked else 0
                lost = checked and (index is None or index > start)  # no usable timestamp, or landed past it
            else:
                index += 1
                lost = checked and located(capture) != index
            if lost:
                capture.release()  # read from the first frame instead
                capture, index, checked = cv2.VideoCapture(str(source)), None, False
                continue
            if index > last_yielded and (wanted is None or index in wanted):
                ok, frame = capture.retrieve()
                if not ok:
                    raise ImageError(f"{source}: frame {index} could not be decoded")
                last_yielded = index
                yield index, frame
    finally:
        capture.release()


def open_video_writer(path: Path, output: Path, fps: float, width: int, height: int):
    """An OpenCV writer on ``path`` (the temporary file that becomes ``output``), with the codec the suffix calls
    for."""
    import cv2

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


def face_row(frame: int, seconds: float, prediction) -> dict:
    """One row of the per-frame table for a tracked face (:class:`ferkit.prediction.FacePrediction`)."""
    x, y, width, height = prediction.box
    return {"frame": frame, "time": seconds, "face_id": prediction.face_id, "x": x, "y": y, "width": width,
            "height": height, "label": prediction.label, "score": prediction.score,
            **{f"p_{name}": p for name, p in prediction.probabilities.items()}}


def table_columns(class_names) -> list[str]:
    """The per-frame table's columns: :data:`TABLE_COLUMNS`, then ``p_<class>`` per class."""
    return list(TABLE_COLUMNS) + [f"p_{name}" for name in class_names]


def write_video_table(table, path: str | Path) -> Path:
    """The per-frame table as CSV (written to a temporary file, then renamed into place)."""
    return write_text(path, table.to_csv(index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.4f"))
