"""Turning whatever the user has into one image format: BGR uint8 (H, W, 3).

Accepted: a path, raw bytes, a numpy array (gray, RGB or BGR, RGBA, 16-bit or
float), or a PIL image; JPEG, PNG, BMP, WebP (and anything else OpenCV reads).
EXIF orientation is applied, so phone photos come out upright.
"""

from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ferkit.files import stderr_descriptor_to

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: Largest image decoded by default: a 30000x30000 PNG is 100 KB on disk but 2.7 GB in memory.
MAX_IMAGE_PIXELS = 50_000_000


class ImageError(ValueError):
    """The input is not an image ferkit can read."""


def load_image(source, channel_order: str = "rgb", name: str | None = None,
               max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
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
        they are decoded, so a tiny file cannot take gigabytes of memory.
        None: no limit.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {channel_order!r}")
    if isinstance(source, (str, os.PathLike)):
        from ferkit.files import require_regular_file

        path = Path(source)
        try:
            require_regular_file(path, "image file")
            data = path.read_bytes()
        except OSError as error:
            raise ImageError(str(error) if str(path) in str(error) else f"{path}: cannot read ({error})") from None
        _warn_if_misnamed(path, data)
        return decode_image_bytes(data, name or str(path), max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_image_bytes(bytes(source), name or "image bytes", max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, channel_order, name or "array")
    if type(source).__module__.startswith("PIL."):
        return _from_pil(source)
    raise ImageError(f"{name or type(source).__name__}: unsupported input type {type(source).__name__}; "
                     "pass a path, bytes, a numpy array or a PIL image")


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
    import warnings

    kind = image_format(data)
    suffixes = _SIGNATURES[kind][1] if kind in _SIGNATURES else (".webp",) if kind == "WebP" else ()
    if kind and path.suffix.lower() in IMAGE_SUFFIXES and path.suffix.lower() not in suffixes:
        warnings.warn(f"{path}: named {path.suffix} but holds {kind} data; read as {kind}", ImageWarning, stacklevel=3)


class ImageWarning(UserWarning):
    """An image was read, but not quite as its name promised (e.g. PNG data in a .jpg file)."""


def decode_image_bytes(data: bytes, name: str, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes -> upright BGR uint8 (EXIF orientation applied).

    The size is read from the file's header first and images over
    ``max_pixels`` are refused undecoded; a JPEG without its end marker is
    refused as truncated.
    """
    import cv2

    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    if max_pixels is not None:
        _check_pixel_count(data, name, max_pixels)
    # The last scan must be followed by an end-of-image marker (trailers after it, as phones write, are fine).
    if data[:3] == b"\xff\xd8\xff" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ImageError(f"{name}: truncated JPEG (no end-of-image marker): the file was cut short; "
                         "copy or download it again")
    # IMREAD_COLOR applies the EXIF orientation tag; 16-bit and gray files come back as 8-bit BGR.
    with _native_messages() as messages:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is not None:
        import warnings

        for message in messages:  # decoded, but the library saw damage: say which file
            warnings.warn(f"{name}: {message}", ImageWarning, stacklevel=3)
    else:
        try:  # Pillow reads a few formats this OpenCV build may lack.
            from PIL import Image, ImageOps

            with Image.open(io.BytesIO(data)) as pil:
                return _from_pil(ImageOps.exif_transpose(pil))
        except Exception:
            kind = "corrupt or truncated" if data[:4] in (b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\x89PNG") else \
                "not an image, or an unsupported format"
            raise ImageError(f"{name}: cannot decode ({kind}); expected JPEG, PNG, BMP or WebP") from None
    if max_pixels is not None and image.shape[0] * image.shape[1] > max_pixels:
        raise ImageError(_too_large(name, image.shape[1], image.shape[0], max_pixels))
    return image


_native_lock = threading.Lock()


@contextmanager
def _native_messages():
    """Collect what libjpeg/libpng print while decoding ("Corrupt JPEG data: ...") into the list it yields.

    The C libraries write straight to the process's stderr, where the message
    would appear without a file name; decoding holds a lock while stderr
    points at a temporary file. OpenCV's own log lines ("[ WARN:0@...]") are
    left out: they restate a failure that is then reported as an ImageError.
    """
    import tempfile

    messages: list[str] = []
    with _native_lock, tempfile.TemporaryFile() as capture:
        with stderr_descriptor_to(capture.fileno()):
            yield messages
        capture.seek(0)
        printed = capture.read().decode("utf-8", errors="replace")
        messages += [line.strip() for line in printed.splitlines()
                     if line.strip() and not line.lstrip().startswith(("[ WARN:", "[ERROR:", "[ INFO:"))]


def _too_large(name: str, width: int, height: int, max_pixels: int) -> str:
    return (f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit of "
            f"{max_pixels / 1e6:g}; not decoded. Raise it with max_pixels= (Predictor, load_image) or "
            "--max-pixels on the command line if you trust the file")


def _check_pixel_count(data: bytes, name: str, max_pixels: int) -> None:
    """Refuse an image whose header declares more than ``max_pixels``, without decoding it."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
    except Image.DecompressionBombError as error:  # far over Pillow's own limit, which names the pixel count
        import re

        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{int(found[1]) / 1e6:.0f} megapixels" if found else "far more than Pillow allows"
        raise ImageError(f"{name}: {size}, over the limit of {max_pixels / 1e6:g}; not decoded. Raise it with "
                         "max_pixels= (Predictor, load_image) or --max-pixels on the command line if you trust "
                         "the file") from None
    except Exception:
        return  # not a format Pillow knows: OpenCV decides, and the size is checked after decoding
    if width * height > max_pixels:
        raise ImageError(_too_large(name, width, height, max_pixels))


def _from_pil(image) -> np.ndarray:
    image = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    array = np.asarray(image)
    return _from_array(array, "rgb", "PIL image")


def _from_array(array: np.ndarray, channel_order: str, name: str) -> np.ndarray:
    import cv2

    if array.size == 0:
        raise ImageError(f"{name}: empty array of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{name}: expected (H, W) gray, (H, W, 3) colour or (H, W, 4) with alpha, "
                         f"got shape {array.shape}")
    array = _to_uint8(array, name)
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.shape[2] == 4:
        array = array[:, :, :3]  # alpha dropped: faces are in the colour channels
    return np.ascontiguousarray(array[:, :, ::-1] if channel_order == "rgb" else array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{name}: float image contains NaN or infinity")
        top = 1.0 if array.max() <= 1.0 else 255.0  # 0-1 floats (skimage, matplotlib) or 0-255
        return np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 255:
            raise ImageError(f"{name}: integer pixel values outside 0-255 (dtype {array.dtype})")
        return array.astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    raise ImageError(f"{name}: unsupported pixel type {array.dtype}")


def save_image(path: str | os.PathLike, image_bgr: np.ndarray) -> Path:
    """Encode ``image_bgr`` in the format its suffix names and write it atomically; returns ``path``.

    Raises :class:`ferkit.files.OutputError` when the format cannot be
    encoded or the file cannot be written, so nothing is reported as written
    that was not.
    """
    import cv2

    from ferkit.files import OutputError, check_output_path, write_bytes

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
        from skimage import data
    except ImportError as error:
        raise ImageError("the sample image comes from scikit-image: `pip install scikit-image`") from error
    return load_image(data.astronaut(), "rgb", "skimage.data.astronaut()")
