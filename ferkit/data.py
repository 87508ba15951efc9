"""Reading FER-2013 wherever the user has it, and writing it back as CSV.

One entry point, :func:`load_fer2013`, takes a path and works out the format:

- the Kaggle ``msambare/fer2013`` zip (``train/<class>/Training_<id>.jpg``,
  ``test/<class>/PublicTest_<id>.jpg`` ...), read without extracting;
- the same layout extracted to a folder;
- the original challenge ``fer2013.csv`` (``emotion,pixels,Usage``), which is
  also the format :func:`write_csv` produces;
- the ``.npz`` cache that :func:`write_npz` produces (fastest to reload).

Every source is mapped onto one canonical class order, :data:`CLASS_NAMES`,
which is the original challenge's label order (0=angry ... 6=neutral), so a
label id means the same thing everywhere in the project.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import re
import struct
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ferkit import _csvcodec, files
from ferkit.errors import BadRecord, DatasetError
from ferkit.images import IMAGE_SUFFIXES

#: Canonical class names; the index is the original fer2013.csv ``emotion`` id.
CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: The challenge's splits. Select models on PublicTest, report PrivateTest.
SPLITS: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest")
IMAGE_SIZE = 48
#: Environment variable naming the dataset (zip, folder, CSV or .npz).
DATA_ENV = "FERKIT_DATA"

#: Named class subsets for :func:`select_classes`: (classes kept, merges).
SUBSETS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "fer7": (CLASS_NAMES, {}),
    # The common 5-class variant: the two rarest/most confused classes removed.
    "fer5": (("angry", "happy", "sad", "surprise", "neutral"), {}),
    # Disgust (1.5% of the data) folded into angry, its most frequent confusion.
    "fer6": (("angry", "fear", "happy", "sad", "surprise", "neutral"), {"disgust": "angry"}),
}

#: Largest image member read from a zip or folder (FER-2013's are ~2 KB), and largest CSV (the full one is ~290 MB).
#: Zip members are judged by these sizes from the zip directory (inflating never goes past them) and
#: images by the pixel count their header declares, never by compression ratio: uniform faces and
#: CSVs of them legitimately compress 1000:1.
MAX_IMAGE_BYTES = 32 * 2**20
MAX_CSV_BYTES = 2 * 2**30
#: Largest image decoded, by the size its header declares. FER-2013's are 48x48; this leaves room for
#: ``resize`` of large face crops while one image costs at most ~17 MB to decode.
MAX_DATASET_IMAGE_PIXELS = 4096 * 4096
#: Largest array read from a .npz (the full dataset's images are 83 MB).
MAX_NPZ_ARRAY_BYTES = 2 * 2**30
_FOLDER_SPLIT = {"train": "Training", "test": None}  # test/ holds Public and Private
_NAME_SPLIT = re.compile(r"^(Training|PublicTest|PrivateTest)_(\d+)")


@dataclass(frozen=True)
class FerDataset:
    """FER-2013 in memory.

    Attributes
    ----------
    images : ndarray of shape (N, 48, 48), uint8
    labels : ndarray of shape (N,), int64 -- indices into ``class_names``
    splits : ndarray of shape (N,), int8 -- indices into :data:`SPLITS`
    class_names : tuple of str
    source : str -- where the data came from, for messages
    label_map : dict -- each original class name -> its class here (or None if
        dropped); identity for the full dataset, recorded by :func:`select_classes`
    skipped : tuple of BadRecord -- records left out because ``on_error="skip"``
    """

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES
    source: str = ""
    label_map: Mapping[str, str | None] = field(default_factory=lambda: {c: c for c in CLASS_NAMES})
    skipped: tuple[BadRecord, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> "FerDataset":
        """The rows of one split (``"Training"``, ``"PublicTest"`` or ``"PrivateTest"``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return self._take(self.splits == SPLITS.index(name))

    def _take(self, mask: np.ndarray) -> "FerDataset":
        return replace(self, images=self.images[mask], labels=self.labels[mask], splits=self.splits[mask])

    def limit(self, per_split: int | None, seed: int = 0) -> "FerDataset":
        """At most ``per_split`` random rows of each split (order kept), for quick runs."""
        if per_split is None:
            return self
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(self), bool)
        for split in range(len(SPLITS)):
            rows = np.flatnonzero(self.splits == split)
            keep[rng.permutation(rows)[:per_split]] = True
        return self._take(keep)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {class_name: count}}`` for every split and class, zeros included."""
        table = np.zeros((len(SPLITS), len(self.class_names)), dtype=np.int64)
        np.add.at(table, (self.splits.astype(np.int64), self.labels), 1)
        return {s: dict(zip(self.class_names, map(int, row))) for s, row in zip(SPLITS, table)}


# ----------------------------------------------------------------------------
# Locating and loading


def dataset_path(path: str | os.PathLike | None = None) -> Path:
    """The dataset location: ``path`` if given, else ``$FERKIT_DATA``."""
    if path is None:
        path = os.environ.get(DATA_ENV)
        if not path:
            raise DatasetError(
                f"no dataset given and ${DATA_ENV} is not set. Download FER-2013 from Kaggle "
                "(`kaggle datasets download msambare/fer2013`, see docs/datasets.md) and pass its path, "
                f"or set {DATA_ENV}=/path/to/fer2013.zip"
            )
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    return path


def download_fer2013() -> Path:
    """Download the Kaggle dataset ``msambare/fer2013`` with kagglehub; returns its folder.

    Needs your Kaggle credentials (Colab secrets ``KAGGLE_USERNAME`` and
    ``KAGGLE_KEY``, or ``~/.kaggle/kaggle.json``) and network access.
    """
    try:
        import kagglehub
    except ImportError as error:
        raise DatasetError("downloading needs kagglehub: `pip install kagglehub` (preinstalled in Colab), "
                           "or download fer2013.zip from Kaggle by hand and pass its path") from error
    return Path(kagglehub.dataset_download("msambare/fer2013"))


def load_fer2013(
    path: str | os.PathLike | None = None,
    *,
    resize: bool = False,
    on_error: str = "raise",
    progress: bool = True,
) -> FerDataset:
    """Read FER-2013 from a zip, folder, CSV or .npz cache, whichever ``path`` is.

    Parameters
    ----------
    path : path-like, optional
        The dataset; defaults to ``$FERKIT_DATA``.
    resize : bool
        Resize images that are not 48x48 (area interpolation) instead of
        reporting them as bad.
    on_error : {"raise", "skip"}
        ``"raise"`` (default) raises :class:`DatasetError` listing every bad
        record; ``"skip"`` leaves them out and lists them in ``.skipped``.
    progress : bool
        Show a progress bar while decoding images.

    Returns
    -------
    FerDataset
        Rows ordered by split (Training, PublicTest, PrivateTest), then by the
        id in the file name for image sources, or in file order for CSV.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = dataset_path(path)
    if not path.is_dir():
        try:
            files.require_regular_file(path, "dataset file")
        except OSError as error:
            raise DatasetError(str(error)) from None
    if path.is_dir():
        records = _folder_records(path)
        data = _decode_records(records, str(path), resize=resize, progress=progress)
    elif path.suffix.lower() == ".npz":
        data = _read_npz(path)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            inner_csv = _csv_member(archive)
            if inner_csv is not None:  # e.g. Kaggle's deadskull7/fer2013: fer2013.csv in a zip
                data = _read_csv_member(archive, inner_csv, f"{path.name}:{inner_csv.filename}")
            else:
                records = _zip_records(archive, path, _ZipMembers(archive, raw))
                data = _decode_records(records, str(path), resize=resize, progress=progress)
    elif _looks_like_csv(path):
        data = _read_csv(path)
    else:
        hint = " (it ends in .zip but is not a zip archive: is the download complete?)" if path.suffix.lower() == ".zip" else ""
        raise DatasetError(
            f"{path}: not a FER-2013 zip, folder, CSV or .npz{hint}. Expected the Kaggle "
            "msambare/fer2013 zip or folder, or a CSV with columns emotion,pixels,Usage"
        )
    images, labels, splits, bad = data
    if bad and on_error == "raise":
        raise DatasetError(_bad_summary(path, bad))
    if len(labels) == 0:
        raise DatasetError(f"{path}: no usable images; " + (f"all {len(bad)} records are bad, e.g. {bad[0]}" if bad
                                                             else "it holds only a header, or nothing in the FER-2013 layout"))
    return FerDataset(images=images, labels=labels, splits=splits, source=str(path), skipped=tuple(bad))


def _bad_summary(path: Path, bad: Sequence[BadRecord], shown: int = 10) -> str:
    lines = [f"{path}: {len(bad)} bad record{'s' * (len(bad) != 1)} "
             "(use on_error='skip' / --skip-bad to leave them out and get this list back):"]
    lines += [f"  {record}" for record in bad[:shown]]
    if len(bad) > shown:
        lines.append(f"  ... and {len(bad) - shown} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Image sources: zip and folder share the path rules and the decoder


@dataclass(frozen=True)
class _ImageRecord:
    name: str  # path inside the zip / relative to the folder, for messages
    split: int
    label: int
    order: tuple
    read: Callable[[], bytes]
    problem: str | None = None


def _classify_path(parts: Sequence[str]) -> tuple[int, int, tuple] | str | None:
    """(split, label, sort key) for ``.../train|test/<class>/<file>``, a problem
    string for an image that breaks the layout, or None for a file outside it."""
    if len(parts) < 3 or parts[-3].lower() not in _FOLDER_SPLIT:
        if any(p.lower() in _FOLDER_SPLIT for p in parts[:-3]) and parts[-1].lower().endswith(IMAGE_SUFFIXES):
            return "in a subfolder of a class folder; images go directly in train/<class>/ or test/<class>/"
        return None
    folder, class_folder, filename = parts[-3].lower(), parts[-2], parts[-1]
    if class_folder.lower() not in CLASS_NAMES:
        return f"unknown class folder {class_folder!r} (expected one of {', '.join(CLASS_NAMES)})"
    match = _NAME_SPLIT.match(filename)
    if match is None:
        if folder == "test":
            return "file name must start with PublicTest_ or PrivateTest_ to tell the two test splits apart"
        split_name, number = "Training", -1
    else:
        split_name, number = match[1], int(match[2])
    expected = _FOLDER_SPLIT[folder]
    if (expected and split_name != expected) or (folder == "test" and split_name == "Training"):
        return f"a {split_name} image inside {folder}/"
    split = SPLITS.index(split_name)
    return split, CLASS_NAMES.index(class_folder.lower()), (split, number, "/".join(parts))


def _is_os_junk(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class _ZipMembers:
    """Reads members straight from a memory map of the archive.

    ``ZipFile.read`` costs ~20 us of Python per call, which for 35,887 tiny
    JPEGs is most of the load time; slicing the mapped file and inflating with
    zlib (CRC still checked) is ~6x faster. Other compressions and encrypted
    members go through ``ZipFile.read``.
    """

    def __init__(self, archive: zipfile.ZipFile, raw) -> None:
        self.archive = archive
        self.buffer = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ)

    def read(self, info: zipfile.ZipInfo) -> bytes:
        check_member(info, MAX_IMAGE_BYTES)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            return read_member(self.archive, info, MAX_IMAGE_BYTES)
        offset = info.header_offset
        if self.buffer[offset:offset + 4] != b"PK\x03\x04":
            raise DatasetError(f"{info.filename}: corrupt zip entry (bad local header)")
        name_length, extra_length = struct.unpack_from("<HH", self.buffer, offset + 26)
        start = offset + 30 + name_length + extra_length
        stored = self.buffer[start:start + info.compress_size]
        try:
            # Never inflate past the declared size: a lying header cannot make this allocate more.
            data = zlib.decompressobj(-15).decompress(stored, info.file_size + 1) \
                if info.compress_type == zipfile.ZIP_DEFLATED else stored
        except zlib.error as error:
            raise DatasetError(f"{info.filename}: corrupt zip entry ({error})") from error
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise DatasetError(f"{info.filename}: corrupt zip entry (CRC mismatch)")
        return data


def check_member(info: zipfile.ZipInfo, max_bytes: int, where: str | None = None) -> None:
    """Refuse a zip member before reading it: encrypted, or larger than ``max_bytes`` uncompressed.

    The uncompressed size is the zip directory's, which the readers never
    inflate past, so it bounds the memory a member can take however well it
    compresses. ``where`` names the member in messages (default: its name).
    """
    where = where or info.filename
    if info.flag_bits & 0x1:
        raise DatasetError(f"{where}: encrypted zip member; FER-2013 archives are not encrypted: "
                           "extract it with its password and give the folder")
    if info.file_size > max_bytes:
        raise DatasetError(f"{where}: {info.file_size / 2**20:.0f} MiB uncompressed, over the limit of "
                           f"{max_bytes / 2**20:.0f} MiB for this kind of member; not read")


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """A zip member's bytes, within the limits of :func:`check_member`; every failure is a DatasetError naming it."""
    check_member(info, max_bytes)
    try:
        with archive.open(info) as member:
            data = member.read(max_bytes + 1)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as error:
        raise DatasetError(f"{info.filename}: corrupt or unreadable zip member ({error})") from None
    if len(data) > max_bytes:
        raise DatasetError(f"{info.filename}: larger than its header says, over {max_bytes / 2**20:.0f} MiB; not read")
    return data


def _zip_records(archive: zipfile.ZipFile, path: Path, members: _ZipMembers) -> list[_ImageRecord]:
    records = []
    for info in archive.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
            # Never trust member names: a crafted archive could point outside any
            # folder it is extracted to ("zip slip").
            raise DatasetError(f"{path}: unsafe member path {name!r} escapes the archive; refusing to read it")
        if info.is_dir() or _is_os_junk(parts):
            continue
        records.append(_make_record(parts, name, lambda info=info: members.read(info)))
    return _finish_records(records, path)


def _folder_records(root: Path) -> list[_ImageRecord]:
    records = []
    top = str(root)
    folders = {_folder_id(top): ""}  # each real folder read, by the name it was read under

    def unlistable(error: OSError) -> None:  # os.walk would otherwise skip the folder without a word
        name = os.path.relpath(error.filename or top, top).replace(os.sep, "/")
        records.append(_problem_record(name, f"cannot list this folder ({error.strerror or error}); "
                                             "check its permissions"))

    # Plain strings rather than pathlib: ~10 us less per file, which is most of
    # the cost for 35,887 tiny images.
    for dirpath, dirnames, filenames in os.walk(top, onerror=unlistable, followlinks=True):
        relative = os.path.relpath(dirpath, top).replace(os.sep, "/")
        prefix = "" if relative == "." else relative + "/"
        dirnames[:] = _new_folders(dirpath, prefix, sorted(d for d in dirnames if not _is_os_junk([d])),
                                   folders, records)
        for filename in filenames:
            if filename.startswith("."):
                continue
            name = prefix + filename
            full = os.path.join(dirpath, filename)
            records.append(_make_record(name.split("/"), name, lambda full=full, name=name: _read_as(name, full)))
    return _finish_records(records, root)


def _folder_id(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


def _new_folders(dirpath: str, prefix: str, names: list[str], folders: dict, records: list) -> list[str]:
    """The subfolders of ``dirpath`` to walk into: links are followed (a linked class folder is data), but
    each real folder is read once, so a link back to an enclosing folder is reported instead of looping,
    and a second path to a folder already read is reported instead of reading its images twice."""
    keep = []
    for name in names:
        try:
            key = _folder_id(os.path.join(dirpath, name))
        except OSError:
            keep.append(name)  # os.walk reports it through onerror
            continue
        first = folders.setdefault(key, prefix + name)
        if first == prefix + name:
            keep.append(name)
        elif (prefix + name).startswith(first + "/") or not first:
            records.append(_problem_record(prefix + name, f"link to the enclosing folder {first or '.'!r}; not "
                                                          "followed, it would loop forever. Remove the link"))
        else:
            records.append(_problem_record(prefix + name, f"the same folder as {first!r}, which is read; not read "
                                                          "twice. Remove the link or the copy"))
    return keep


def _problem_record(name: str, problem: str) -> _ImageRecord:
    return _ImageRecord(name, 0, 0, (99, 0, name), lambda: b"", problem=problem)


def _read_as(name: str, path: str) -> bytes:
    try:
        return _read_file(path)
    except DatasetError as error:  # messages name the record as the dataset lists it
        raise DatasetError(f"{name}: {str(error).split(': ', 1)[-1]}") from None


def _read_file(path: str) -> bytes:
    """A dataset file's bytes; links that lead nowhere, FIFOs and oversized files are DatasetErrors naming it."""
    try:
        files.require_regular_file(path, "image file")
        if os.path.getsize(path) > MAX_IMAGE_BYTES:
            raise DatasetError(f"{path}: {os.path.getsize(path) / 2**20:.0f} MiB, over the limit of "
                               f"{MAX_IMAGE_BYTES / 2**20:.0f} MiB for one image; not read")
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise DatasetError(str(error) if path in str(error) else f"{path}: cannot read ({error})") from None


def _make_record(parts, name, read) -> _ImageRecord | None:
    where = _classify_path(parts)
    if where is None:
        return None  # outside train/ and test/: a README, a licence, ...
    if isinstance(where, str):
        return _ImageRecord(name, 0, 0, (99, 0, name), read, problem=where)
    if not name.lower().endswith(IMAGE_SUFFIXES):
        return _ImageRecord(name, 0, 0, (99, 0, name), read, problem=f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    split, label, order = where
    return _ImageRecord(name, split, label, order, read)


def _finish_records(records, path: Path) -> list[_ImageRecord]:
    records = sorted((r for r in records if r is not None), key=lambda r: r.order)
    records = _flag_repeated_ids(records)
    if not records:
        raise DatasetError(
            f"{path}: no images found in the FER-2013 layout "
            "(train/<class>/Training_<id>.jpg, test/<class>/PublicTest_<id>.jpg ...)"
        )
    return records


def _flag_repeated_ids(records: list[_ImageRecord]) -> list[_ImageRecord]:
    """One image filed under two classes has no single label: every copy becomes a bad record.

    Ids alone are not unique (the Kaggle copy has different faces sharing an
    id in different classes), so copies are the files with one id and the
    same bytes.
    """
    by_id: dict[tuple[int, int], list[int]] = {}
    for i, record in enumerate(records):
        if record.problem is None and record.order[1] >= 0:
            by_id.setdefault(record.order[:2], []).append(i)
    flagged = list(records)
    for indices in (group for group in by_id.values() if len(group) > 1):
        contents: dict[bytes, list[int]] = {}
        for i in indices:
            try:
                contents.setdefault(records[i].read(), []).append(i)
            except DatasetError:
                continue  # reported when it is decoded
        for copies in (group for group in contents.values() if len(group) > 1):
            names = [records[i].name for i in copies]
            for i in copies:
                others = ", ".join(n for n in names if n != records[i].name)
                flagged[i] = replace(records[i], problem=f"the same image is also at {others}, under another "
                                                         "label; keep the copy whose class is right")
    return flagged


def decode_image(data: bytes, name: str, *, resize: bool = False) -> np.ndarray:
    """Decode one image file's bytes to a (48, 48) uint8 grayscale array.

    Raises :class:`DatasetError` naming ``name`` when the bytes are empty,
    truncated, not an image, or not 48x48 (unless ``resize``).
    """
    import cv2

    if not data:
        raise DatasetError(f"{name}: empty file (0 bytes)")
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00\r\n").endswith(b"\xff\xd9"):
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


#: JPEG start-of-frame markers (SOF0-SOF15 but DHT, JPG and DAC), which hold the image size.
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


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
    import warnings

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


def _decode_records(records, source: str, *, resize: bool, progress: bool):
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
    bar = _progress(None, len(records), f"reading {Path(source).name}", progress)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for n in pool.map(decode, range(0, len(records), chunk)):
            if bar is not None:
                bar.update(n)
    if bar is not None:
        bar.close()
    labels = np.fromiter((r.label for r in records), np.int64, len(records))
    splits = np.fromiter((r.split for r in records), np.int8, len(records))
    bad.sort(key=lambda b: b.where)
    return images[ok], labels[ok], splits[ok], bad


def _progress(iterable: Iterable | None, total: int, desc: str, enabled: bool, unit: str = "img"):
    """A tqdm bar over ``iterable`` (or a bar to ``update`` by hand when None)."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, mininterval=0.5, leave=False, file=sys.stderr)


# ----------------------------------------------------------------------------
# CSV and npz


def _looks_like_csv(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lower()
    return b"pixels" in head.split(b"\n", 1)[0]


def _read_csv(path: Path):
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DatasetError(f"{path}: {path.stat().st_size / 2**30:.1f} GiB, over the limit of "
                           f"{MAX_CSV_BYTES / 2**30:.0f} GiB for a FER CSV (the full dataset is ~0.3 GiB)")
    with open(path, "rb") as stream:
        return _parse_csv(stream, path.name)


def _read_csv_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str):
    """A FER CSV inside a zip, streamed row by row like a CSV file."""
    check_member(info, MAX_CSV_BYTES)
    try:
        with archive.open(info) as stream:
            return _parse_csv(stream, name)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as error:
        raise DatasetError(f"{info.filename}: corrupt or unreadable zip member ({error})") from None


def _parse_csv(stream, name: str):
    labels, splits, pixels, bad = _csvcodec.read_fer_csv(stream, name, len(CLASS_NAMES), SPLITS)
    return pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels, splits, bad


def _csv_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo | None:
    """The FER CSV inside a zip that holds no image layout, if there is one."""
    infos = [i for i in archive.infolist() if not i.is_dir() and not _is_os_junk(i.filename.split("/"))]
    if any(i.filename.lower().endswith(IMAGE_SUFFIXES) for i in infos):
        return None
    for info in infos:
        if info.filename.lower().endswith(".csv"):
            check_member(info, MAX_CSV_BYTES)
            try:
                with archive.open(info) as f:
                    if b"pixels" in f.readline(4096).lower():
                        return info
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError, NotImplementedError) as error:
                raise DatasetError(f"{info.filename}: corrupt or unreadable zip member ({error})") from None
    return None


def write_csv(data: FerDataset, path: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write ``data`` in the original challenge schema ``emotion,pixels,Usage``.

    The file is interchangeable with Kaggle's ``fer2013.csv``: original label
    ids, pixels as 2304 space-separated integers, rows in ``data``'s order.
    """
    _require_full_classes(data, "CSV")
    path = Path(path)
    with files.atomic_path(path) as temporary, open(temporary, "wb") as f:
        _csvcodec.write_fer_csv(f, data.images.reshape(len(data), -1), data.labels, data.splits, SPLITS,
                                progress=lambda it, n: _progress(it, n, f"writing {path.name}", progress, "chunk"))
    return path


def write_npz(data: FerDataset, path: str | os.PathLike) -> Path:
    """Write ``data`` as an uncompressed .npz that :func:`load_fer2013` reloads in milliseconds."""
    _require_full_classes(data, "npz")
    path = Path(path)
    # Through a file object, so NumPy writes exactly ``path`` (it appends ".npz" to names like DATA.NPZ).
    with files.atomic_path(path) as temporary, open(temporary, "wb") as f:
        np.savez(f, images=data.images, labels=data.labels, splits=data.splits, class_names=np.array(CLASS_NAMES))
    return path


def _require_full_classes(data: FerDataset, what: str) -> None:
    if tuple(data.class_names) != CLASS_NAMES:
        raise ValueError(f"{what} files hold the full 7-class dataset with its original label ids; "
                         "write the dataset before select_classes() and select when loading")


_NPZ_ARRAYS = ("images", "labels", "splits", "class_names")


def _read_npz(path: Path):
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not a .npz archive (a .npz is a zip of arrays, as `ferkit convert DATA out.npz` "
                           "writes); give the dataset zip, folder or CSV instead")
    try:
        with zipfile.ZipFile(path) as archive:
            present = set(archive.namelist())
            missing = [name for name in _NPZ_ARRAYS if f"{name}.npy" not in present]
            if missing:
                raise DatasetError(f"{path}: not a ferkit .npz (missing {', '.join(sorted(missing))})")
            images, labels, splits, names = (_read_npy(archive, archive.getinfo(f"{name}.npy"), path)
                                             for name in _NPZ_ARRAYS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable .npz ({error})") from error
    if names.shape != (len(CLASS_NAMES),) or tuple(str(n) for n in names) != CLASS_NAMES:
        raise DatasetError(f"{path}: classes {tuple(names.ravel()[:10].tolist())} differ from {CLASS_NAMES}")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DatasetError(f"{path}: images are {images.dtype} of shape {images.shape}; expected uint8 "
                           f"(N, {IMAGE_SIZE}, {IMAGE_SIZE})")
    for name, values, count in (("labels", labels, len(CLASS_NAMES)), ("splits", splits, len(SPLITS))):
        if values.ndim != 1 or len(values) != len(images) or not np.issubdtype(values.dtype, np.integer):
            raise DatasetError(f"{path}: {name} are {values.dtype} of shape {values.shape}; expected "
                               f"{len(images)} integers, one per image")
        bad = np.flatnonzero((values < 0) | (values >= count))
        if len(bad):
            raise DatasetError(f"{path}: {name}[{bad[0]}] is {values[bad[0]]}, outside 0-{count - 1} "
                               f"({len(bad)} such rows)")
    return images, labels.astype(np.int64), splits.astype(np.int8), []


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One array of a .npz, read only once its header's shape and dtype fit the bytes the member holds.

    NumPy allocates the declared shape before reading any data, so without
    this check a 1 KB file declaring (99999999, 48, 48) asks for 215 GiB.
    """
    where = f"{path}: {info.filename}"
    check_member(info, MAX_NPZ_ARRAY_BYTES, where)
    with archive.open(info) as member:
        shape, dtype = _npy_header(member, where)
        available = info.file_size - member.tell()
    if min(shape, default=0) < 0:
        raise DatasetError(f"{where}: its header declares the shape {shape}, with a negative size: the file is "
                           "damaged. Write it again with `ferkit convert DATA out.npz`")
    # Every element costs at least a byte to read or loop over, even of a zero-size dtype.
    declared = math.prod(shape) * max(dtype.itemsize, 1)
    if declared > available:
        raise DatasetError(f"{where}: its header declares {dtype} of shape {shape} ({declared:,} bytes) but "
                           f"{available:,} bytes follow: the file is truncated or damaged. Write it again "
                           "with `ferkit convert DATA out.npz`")
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _npy_header(member, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a .npy header; a DatasetError naming ``where`` for anything NumPy cannot parse."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(member)
        if version not in readers:
            raise ValueError(f".npy format version {version}, which ferkit does not write")
        shape, _, dtype = readers[version](member)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
        raise  # the archive's damage, not the header's: reported as such by _read_npz
    except Exception as error:  # the header is a Python literal: parsing it can fail in many ways
        raise DatasetError(f"{where}: not a readable .npy header ({error})") from None
    return shape, dtype


# ----------------------------------------------------------------------------
# Class subsets


def select_classes(
    data: FerDataset,
    keep: str | Sequence[str] | None = None,
    merge: Mapping[str, str] | None = None,
) -> FerDataset:
    """Keep some classes and/or fold others into them, remapping labels.

    Parameters
    ----------
    keep : str or sequence of str, optional
        A preset name from :data:`SUBSETS` (``"fer5"``, ``"fer6"``, ``"fer7"``)
        or the class names to keep, in the order their new ids take. Defaults
        to every class not merged away.
    merge : mapping, optional
        ``{source: target}``: images of ``source`` are relabelled ``target``.

    Returns
    -------
    FerDataset
        Only rows of kept (or merged) classes, ``class_names`` = ``keep``, and
        ``label_map`` recording where each original class went (None = dropped).
    """
    merge = dict(merge or {})
    if isinstance(keep, str):
        if keep not in SUBSETS:
            raise ValueError(f"unknown subset {keep!r}; presets are {', '.join(SUBSETS)}")
        keep, preset_merge = SUBSETS[keep]
        merge = {**preset_merge, **merge}
    originals = {data.class_names[i]: i for i in range(len(data.class_names))}
    for name in list(merge) + list(merge.values()) + list(keep or []):
        if name not in originals:
            raise ValueError(f"unknown class {name!r}; this dataset has {', '.join(data.class_names)}")
    if keep is None:
        keep = [c for c in data.class_names if c not in merge]
    keep = tuple(keep)
    if len(set(keep)) != len(keep):
        raise ValueError(f"classes to keep repeat a name: {keep}")
    for source, target in merge.items():
        if target not in keep:
            raise ValueError(f"cannot merge {source!r} into {target!r}: {target!r} is not among the kept classes")
        if source in keep:
            raise ValueError(f"{source!r} is both kept and merged into {target!r}")
    # Compose with any earlier selection so label_map always starts from the original classes.
    destination = {c: (c if c in keep else merge.get(c)) for c in data.class_names}
    remap = np.array([keep.index(destination[c]) if destination[c] else -1 for c in data.class_names])
    new_labels = remap[data.labels]
    rows = new_labels >= 0
    label_map = {orig: (destination[now] if now is not None else None) for orig, now in data.label_map.items()}
    return replace(data, images=data.images[rows], labels=new_labels[rows], splits=data.splits[rows],
                   class_names=keep, label_map=label_map)


# ----------------------------------------------------------------------------
# Summaries


def image_stats(images: np.ndarray, chunk: int = 4096) -> dict[str, float]:
    """Per-image statistics averaged over ``images`` (N, H, W) uint8.

    ``mean``: brightness; ``contrast``: pixel standard deviation; ``sharpness``:
    variance of the 4-neighbour Laplacian. A blurred or contrast-filtered copy
    of a split shows up as a clearly lower sharpness or contrast than the others.
    """
    if len(images) == 0:
        return {"mean": float("nan"), "contrast": float("nan"), "sharpness": float("nan")}
    sums = np.zeros(3)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].astype(np.float32)
        lap = (x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4 * x[:, 1:-1, 1:-1])
        sums += (x.mean(axis=(1, 2)).sum(), x.std(axis=(1, 2)).sum(), lap.var(axis=(1, 2)).sum())
    mean, contrast, sharpness = sums / len(images)
    return {"mean": float(mean), "contrast": float(contrast), "sharpness": float(sharpness)}


def summary_table(data: FerDataset, stats: bool = True) -> str:
    """Counts per split and class (and image statistics per split) as text."""
    counts = data.counts()
    names = list(data.class_names)
    header = ["split", *names, "total"] + (["mean", "contrast", "sharpness"] if stats else [])
    rows = []
    for split in SPLITS:
        row = [split, *(str(counts[split][c]) for c in names), str(sum(counts[split].values()))]
        if stats:
            s = image_stats(data.images[data.splits == SPLITS.index(split)])
            row += [f"{s['mean']:.1f}", f"{s['contrast']:.1f}", f"{s['sharpness']:.0f}"]
        rows.append(row)
    totals = [sum(counts[s][c] for s in SPLITS) for c in names]
    rows.append(["all", *map(str, totals), str(sum(totals))] + ([""] * 3 if stats else []))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), *map(fmt, rows)])
