"""Dataset image files to FER-2013's arrays: (48, 48) uint8 grayscale, judged by their header before decoding.

Decoding allocates what an image's header declares, so each file's declared
size is read first (in under a microsecond for PNG and JPEG) and a JPEG cut
short is refused by :func:`ferkit.images.jpeg_problem`, the rule photos are
read by too. :func:`decode_records` decodes a layout's records in parallel,
listing the bad ones instead of stopping at the first.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np

from ferkit.dataset_layout import ImageRecord
from ferkit.errors import BadRecord, DatasetError
from ferkit.images import TRUNCATED, jpeg_problem
from ferkit.settings import IMAGE_SIZE

# cv2 and PIL are imported where an image is decoded: importing ferkit.data must stay fast.

#: Largest image decoded, by the size its header declares. FER-2013's are 48x48; this leaves room for
#: ``resize`` of large face crops while one image costs at most ~17 MB to decode.
MAX_DATASET_IMAGE_PIXELS = 4096 * 4096
#: JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC), which hold the image size.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def decode_image(data: bytes, name: str, *, resize: bool = False) -> np.ndarray:
    """Decode one image file's bytes to a (48, 48) uint8 grayscale array.

    Raises :class:`DatasetError` naming ``name`` when the bytes are empty,
    truncated, not an image, or not 48x48 (unless ``resize``). Damage inside
    a JPEG's compressed data that leaves its markers whole is decoded as
    libjpeg decodes it.
    """
    import cv2

    if not data:
        raise DatasetError(f"{name}: empty file (0 bytes)")
    if data[:3] == b"\xff\xd8\xff" and jpeg_problem(data) == TRUNCATED:
        raise DatasetError(f"{name}: truncated JPEG (no end-of-image marker)")
    size = _declared_size(data, name)
    if size is None:
        raise DatasetError(f"{name}: not a decodable image (corrupt or unsupported format)")
    # Decoding allocates what the header declares, so a 1 MB PNG can ask for gigabytes: judge it unread.
    if size[0] * size[1] > MAX_DATASET_IMAGE_PIXELS:
        raise DatasetError(_over_pixel_limit(name, size[0] * size[1], size))
    if size != (IMAGE_SIZE, IMAGE_SIZE) and not resize:
        raise DatasetError(_wrong_size(name, *size))
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as error:  # e.g. out of memory: still one named record, not a traceback
        raise DatasetError(f"{name}: OpenCV could not decode it ({str(error).strip().splitlines()[-1]})") from None
    if image is None:
        raise DatasetError(f"{name}: not a decodable image (corrupt or unsupported format)")
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):  # the header may differ, e.g. by EXIF orientation
        if not resize:
            raise DatasetError(_wrong_size(name, image.shape[1], image.shape[0]))
        image = cv2.resize(image, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    return image


def decode_records(records: Sequence[ImageRecord], *, resize: bool,
                   on_progress: Callable[[int], None] | None = None):
    """Decode every record: ``(images, labels, splits, bad)`` for the good ones, in the records' order.

    images: (N, 48, 48) uint8; labels: (N,) int64; splits: (N,) int8; bad: a
    :class:`BadRecord` for each record with a problem or undecodable bytes,
    sorted by name. ``on_progress(n)`` is called, from the calling thread,
    as each run of ``n`` records is done.
    """
    images = np.empty((len(records), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    ok = np.ones(len(records), bool)
    bad: list[BadRecord] = []

    def fail(i: int, error: DatasetError) -> None:
        ok[i] = False
        bad.append(BadRecord(records[i].name, str(error).split(": ", 1)[1]))

    def decode(lo: int) -> int:
        hi = min(lo + chunk, len(records))
        for i in range(lo, hi):
            try:
                if records[i].problem:
                    raise DatasetError(f"{records[i].name}: {records[i].problem}")
                images[i] = decode_image(records[i].read(), records[i].name, resize=resize)
            except DatasetError as error:
                fail(i, error)
        return hi - lo

    # Decoding and inflating release the GIL, so threads use every core; one
    # task per chunk keeps the pool's overhead out of the per-image cost.
    chunk = 256
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for n in pool.map(decode, range(0, len(records), chunk)):
            if on_progress is not None:
                on_progress(n)
    labels = np.fromiter((r.label for r in records), np.int64, len(records))
    splits = np.fromiter((r.split for r in records), np.int8, len(records))
    bad.sort(key=lambda b: b.where)
    return images[ok], labels[ok], splits[ok], bad


def _wrong_size(name: str, width: int, height: int) -> str:
    return (f"{name}: image is {width}x{height}, expected {IMAGE_SIZE}x{IMAGE_SIZE} "
            "(pass resize=True / --resize to resize it)")


def _over_pixel_limit(name: str, pixels: int, size: tuple[int, int] | None = None) -> str:
    shown = f"{size[0]}x{size[1]} ({pixels / 1e6:.0f} megapixels)" if size else f"{pixels / 1e6:.0f} megapixels"
    return (f"{name}: image is {shown}, over the limit of {MAX_DATASET_IMAGE_PIXELS / 1e6:.1f} megapixels for a "
            f"dataset image; not decoded. FER-2013's images are {IMAGE_SIZE}x{IMAGE_SIZE}: shrink it or leave it out")


def _declared_size(data: bytes, name: str) -> tuple[int, int] | None:
    """(width, height) as the image's header declares them, read without decoding; None if it has none.

    PNG and JPEG, FER-2013's formats, are read here in under a microsecond
    (Pillow takes ~12 us, 0.4 s over the full dataset, a third of its load
    time); other formats, and JPEGs this walk cannot follow, go to Pillow.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"\xff\xd8":
        size = _jpeg_frame_size(data)
        if size is not None:
            return size
    return _pillow_size(data, name)


def _jpeg_frame_size(data: bytes) -> tuple[int, int] | None:
    """The size in a JPEG's first start-of-frame segment (the one libjpeg uses), walking the segments."""
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack_from(">HH", data, at + 5)
            return width, height
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker == 0xDA or marker == 0xD9:  # scan data or the end, before any frame
            return None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # segments without a length
            at += 2
        else:
            at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    return None


def _pillow_size(data: bytes, name: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # parses the header only
                return header.size
    except Image.DecompressionBombError as error:  # far over any limit; Pillow's message holds the pixel count
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found[1]) if found else MAX_DATASET_IMAGE_PIXELS + 1
        raise DatasetError(_over_pixel_limit(name, pixels)) from None
    except Exception:  # Pillow raises many kinds for a bad header; all mean the same here
        return None
