"""Turning whatever the user has into one image format: BGR uint8 (H, W, 3).

Accepted: a path, raw bytes, a numpy array (gray, RGB or BGR, RGBA, 16-bit or
float), or a PIL image; JPEG, PNG, BMP, WebP, TIFF (and anything else OpenCV
or Pillow reads). EXIF orientation is applied, so phone photos come out upright.

Pixel values follow one rule (:func:`to_uint8`), the same for arrays, PIL
images and decoded files:

- uint8 is taken as it is; bool is black and white.
- Other integers holding only 0-255 are taken as 0-255; uint16 (and PIL's
  16-bit modes) with larger values as 16-bit, 0-65535. Any other integer
  range is refused.
- Floats within 0-1 (to 1/255) are 0-1; floats within 0-255 (to half a
  level) that reach 2 or more are 0-255. Anything else (negative values, values over 255, a
  maximum between 1 and 2) is refused as ambiguous.
- ``value_range=(low, high)`` overrides the rule: low is black, high white.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np

from ferkit.files import OutputError, check_output_path, read_bytes, write_bytes
from ferkit.settings import IMAGE_SUFFIXES

# cv2 and PIL are imported where pixels are decoded or converted: importing ferkit must stay fast.

#: Largest image decoded by default: a 30000x30000 PNG is 100 KB on disk but 2.7 GB in memory.
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(ValueError):
    """The input is not an image ferkit can read."""


def load_image(source, channel_order: str = "rgb", name: str | None = None,
               max_pixels: int | None = MAX_IMAGE_PIXELS, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Any supported image input -> BGR uint8 array of shape (H, W, 3).

    Parameters
    ----------
    source : str, Path, bytes, numpy array or PIL.Image
    channel_order : {"rgb", "bgr"}
        How to read a 3- or 4-channel numpy array: "rgb" for arrays from PIL,
        matplotlib or scikit-image (the default), "bgr" for arrays from OpenCV.
    name : str, optional
        What to call the input in error messages.
    max_pixels : int or None
        Encoded images larger than this (width x height) are refused before
        they are decoded, so a tiny file cannot take gigabytes of memory,
        and files larger than such an image could be are refused unread.
        None: no limit.
    value_range : (low, high), optional
        The values that mean black and white in an array or PIL image;
        default: the module's rule (above), which refuses ambiguous ranges.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {channel_order!r}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            data = read_bytes(path, "image file", max_file_bytes(max_pixels))
        except OSError as error:
            raise ImageError(str(error) if str(path) in str(error) else f"{path}: cannot read ({error})") from None
        _warn_if_misnamed(path, data)
        return decode_image_bytes(data, name or str(path), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(source), name or "image bytes", max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, channel_order, name or "array", value_range)
    if type(source).__module__.startswith("PIL."):
        return _from_pil(source, name or "PIL image", value_range)
    raise ImageError(f"{name or type(source).__name__}: unsupported input type {type(source).__name__}; "
                     "pass a path, bytes, a numpy array or a PIL image")


def max_file_bytes(max_pixels: int | None) -> int | None:
    """The largest image file worth reading for images of at most ``max_pixels``: 16-bit RGBA uncompressed, plus
    64 MiB of metadata. A larger file is not such an image, whatever it claims (e.g. a JPEG padded with gigabytes)."""
    return None if max_pixels is None else 8 * max_pixels + 64 * 2**20


#: Leading bytes of each format, and the suffixes that name it.
_SIGNATURES = {"JPEG": ((b"\xff\xd8\xff",), (".jpg", ".jpeg")), "PNG": ((b"\x89PNG",), (".png",)),
               "BMP": ((b"BM",), (".bmp",)), "TIFF": ((b"II*\x00", b"MM\x00*"), (".tif", ".tiff"))}


def image_format(data: bytes) -> str | None:
    """The format the bytes hold ("JPEG", "PNG", "BMP", "TIFF", "WebP"), from their signature, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for kind, (magic, _) in _SIGNATURES.items() if data.startswith(magic)), None)


def _warn_if_misnamed(path: Path, data: bytes) -> None:
    """A file whose suffix names another format is read by its content, and the user is told."""
    kind = image_format(data)
    suffixes = _SIGNATURES[kind][1] if kind in _SIGNATURES else (".webp",) if kind == "WebP" else ()
    if kind and path.suffix.lower() in IMAGE_SUFFIXES and path.suffix.lower() not in suffixes:
        warnings.warn(f"{path}: named {path.suffix} but holds {kind} data; read as {kind}", ImageWarning, stacklevel=3)


class ImageWarning(UserWarning):
    """An image was read, but not quite as its name promised (e.g. PNG data in a .jpg file)."""


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes -> upright BGR uint8 (EXIF orientation applied).

    The size is read from the file's header first and images over
    ``max_pixels`` are refused undecoded; a JPEG cut short is refused as
    truncated, and one whose compressed data shows damage is decoded with an
    :class:`ImageWarning` naming it. Decoders' own messages are left on the
    process's stderr, untouched.
    """
    import cv2

    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if max_pixels is not None:
        _check_pixel_count(data, name, max_pixels)
    if data[:3] == b"\xff\xd8\xff":
        problem = jpeg_problem(data)
        if problem == TRUNCATED:
            raise ImageError(f"{name}: truncated JPEG (no end-of-image marker): the file was cut short; "
                             "copy or download it again")
        if problem:
            warnings.warn(f"{name}: damaged JPEG data ({problem}); parts of the image may be wrong",
                          ImageWarning, stacklevel=3)
    encoded = np.frombuffer(data, np.uint8)
    # IMREAD_COLOR applies the EXIF orientation tag; 16-bit and gray files come back as 8-bit BGR.
    image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    if image is None:  # float TIFFs decode only at their own depth
        deep = cv2.imdecode(encoded, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
        image = None if deep is None else _from_array(deep, "bgr", name)
    if image is None:
        try:  # Pillow reads a few formats this OpenCV build lacks (one-channel float TIFF, ...).
            from PIL import Image, ImageOps

            with Image.open(io.BytesIO(data)) as pil:
                pil.load()
                image = _from_pil(ImageOps.exif_transpose(pil), name)
        except ImageError:
            raise
        except Exception:
            kind = "corrupt or truncated" if data[:4] in (b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\x89PNG") else \
                "not an image, or an unsupported format"
            raise ImageError(f"{name}: cannot decode ({kind}); expected JPEG, PNG, BMP, WebP or TIFF") from None
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(_too_large(name, image.shape[1], image.shape[0], max_pixels))
    return image


#: :func:`jpeg_problem`'s answer for a JPEG that ends before its end-of-image marker.
TRUNCATED = "truncated"
#: Markers out of place between segments: TEM, RST0-7, SOI, and 0x00 (which only follows 0xFF inside a scan).
_STRAY_MARKERS = frozenset({0x00, 0x01, *range(0xD0, 0xD9)})
#: Inside a scan's compressed data: a 0xFF that is neither stuffing (0xFF00) nor fill (0xFFFF), i.e. a marker.
_SCAN_MARKER = re.compile(rb"\xff[^\x00\xff]")


def jpeg_problem(data: bytes) -> str | None:
    """What a JPEG's markers show to be wrong with it: :data:`TRUNCATED`, a description of damage, or None.

    The one rule for JPEGs cut short, for photos and dataset images alike.
    Walks the segments to each scan, then the scan's compressed data, where a
    0xFF byte may only precede a stuffed 0x00, the next restart marker in
    sequence, or the marker that ends the scan. Data after the end-of-image
    marker (phones' trailers) is ignored. Damage that keeps the markers
    intact (a flipped bit) shows only in the decoded picture. Under 2 us for
    one of FER-2013's 1.6 KB faces: it runs on every image of the dataset.
    """
    position, restart_interval, end = 2, 0, len(data)
    while True:
        if position >= end - 1:
            return TRUNCATED
        if data[position] != 0xFF:  # segments normally follow each other directly: look only when one does not
            position = data.find(b"\xff", position)
            if position < 0 or position >= end - 1:
                return TRUNCATED
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker
            position += 1
            continue
        if marker == 0xD9:
            return None
        if marker in _STRAY_MARKERS:
            return f"a stray marker 0x{marker:02x} at byte {position}"
        if position + 4 > end:
            return TRUNCATED
        length = data[position + 2] << 8 | data[position + 3]
        if marker == 0xDD and length >= 4 and position + 6 <= end:  # DRI: restart markers every N blocks
            restart_interval = data[position + 4] << 8 | data[position + 5]
        position += 2 + length
        if marker != 0xDA:
            continue
        expected = 0xD0  # the compressed data of a scan: up to the marker that ends it
        while True:
            found = _SCAN_MARKER.search(data, position)
            if found is None:
                return TRUNCATED
            position = found.start()
            following = data[position + 1]
            if not 0xD0 <= following <= 0xD7:
                break
            if not restart_interval or following != expected:
                return f"restart marker RST{following - 0xD0} out of sequence at byte {position}"
            expected = 0xD0 + (following - 0xD0 + 1) % 8
            position += 2


def _too_large(name: str, width: int, height: int, max_pixels: int) -> str:
    return (f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g}; not decoded. Raise it with max_pixels= (Predictor, load_image) or "
            "--max-pixels on the command line if you trust the file")


def _check_pixel_count(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels``, without decoding it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
    except Image.DecompressionBombError as error:  # far over Pillow's own limit, which names the pixel count
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found[1]) / 1e6:.0f} megapixels" if found else "far more than Pillow allows"
        raise ImageError(f"{name}: {size}, over the limit of {max_pixels / 1e6:g}; not decoded. Raise it with "
                         "max_pixels= (Predictor, load_image) or --max-pixels on the command line if you trust "
                         "the file") from None
    except Exception:
        return  # not a format Pillow knows: OpenCV decides, and the size is checked after decoding
    if width * height > max_pixels:
        raise ImageError(_too_large(name, width, height, max_pixels))


def _from_pil(image, name: str = "PIL image", value_range: tuple[float, float] | None = None) -> np.ndarray:
    if image.mode.startswith(("I", "F")):  # 16-bit, 32-bit integer and float modes: their values, not a clip
        return _from_array(np.asarray(image), "rgb", name, value_range)
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    return _from_array(np.asarray(image), "rgb", name, value_range)


def _from_array(array: np.ndarray, channel_order: str, name: str,
                value_range: tuple[float, float] | None = None) -> np.ndarray:
    import cv2

    if array.size == 0:
        raise ImageError(f"{name}: empty array of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected (H, W) gray, (H, W, 3) colour or (H, W, 4) with alpha, "
                         f"got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # alpha dropped: faces are in the colour channels
    array = to_uint8(array, name, value_range)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(array[:, :, ::-1] if channel_order == "rgb" else array)


#: Floats this far beyond 0-1 still count as 0-1 (rounding in a conversion); it is under one grey level.
FLOAT_TOLERANCE = 1 / 255


def to_uint8(array: np.ndarray, name: str = "array", value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Pixel values -> uint8 0-255 by the module's rule (see the module docstring); ImageError where it is ambiguous."""
    if array.dtype == np.uint8 and value_range is None:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageError(f"{name}: unsupported pixel type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ImageError(f"{name}: float image contains NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if value_range is None:
        value_range = _implied_range(array.dtype, low, high, name)
    black, white = map(float, value_range)
    if not white > black:
        raise ImageError(f"{name}: value_range {value_range!r}: white must be above black")
    scaled = (array.astype(np.float64) - black) * (255.0 / (white - black))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _implied_range(dtype, low: float, high: float, name: str) -> tuple[float, float]:
    found = f"{dtype} values from {low:g} to {high:g}"
    if np.issubdtype(dtype, np.integer):
        if low >= 0 and high <= 255:
            return 0, 255
        if dtype == np.uint16:
            return 0, 65535
        raise ImageError(f"{name}: {found}, not 0-255; pass value_range=(black, white) to say what they mean")
    if low >= -FLOAT_TOLERANCE and high <= 1 + FLOAT_TOLERANCE:
        return 0, 1
    if low >= -0.5 and 2 <= high <= 255.5:  # rounding of half a grey level either way
        return 0, 255
    raise ImageError(f"{name}: {found}: neither 0-1 nor 0-255; pass value_range=(0, 1), (0, 255) or "
                     "(black, white) to say what they mean")


def save_image(path: str | os.PathLike, image_bgr: np.ndarray) -> Path:
    """Encode ``image_bgr`` in the format its suffix names and write it atomically; returns ``path``.

    Raises :class:`ferkit.files.OutputError` when the format cannot be
    encoded or the file cannot be written, so nothing is reported as written
    that was not.
    """
    import cv2

    path = check_output_path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".jpg", image_bgr)
    except cv2.error:
        ok = False
    if not ok:
        raise OutputError(f"{path}: OpenCV cannot write {path.suffix or 'this'} images; use .jpg or .png")
    return write_bytes(path, encoded.tobytes())


def to_gray(image_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 -> grayscale uint8, with the same weights FER-2013's images were made with (ITU-R 601)."""
    import cv2

    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)


def sample_image() -> np.ndarray:
    """The embedded default input: scikit-image's ``astronaut()`` (Eileen Collins, smiling), as BGR.

    It ships inside the scikit-image wheel, so it needs no download.
    """
    try:
        from skimage import data  # optional: only the sample image needs scikit-image
    except ImportError as error:
        raise ImageError("the sample image comes from scikit-image: `pip install scikit-image`") from error
    return load_image(data.astronaut(), "rgb", "skimage.data.astronaut()")
