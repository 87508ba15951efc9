"""Reading the challenge's CSV (``emotion,pixels,Usage``), from a file or from inside a zip, within size limits.

Rows are parsed by :mod:`ferkit._csvcodec`; this module finds the CSV, bounds
what is read, and shapes the pixels as images. Writing is
:func:`ferkit.data.write_csv`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO

from ferkit import _csvcodec
from ferkit.dataset_layout import is_os_junk
from ferkit.dataset_zip import ZIP_READ_ERRORS, check_member
from ferkit.errors import DatasetError
from ferkit.settings import CLASS_NAMES, IMAGE_SIZE, IMAGE_SUFFIXES, SPLITS

#: Largest CSV read, as a file or as a zip member's declared size (the full FER-2013 is ~290 MB).
MAX_CSV_BYTES = 2 * 2**30


def looks_like_csv(path: Path) -> bool:
    """Whether the file's first line names a ``pixels`` column."""
    with open(path, "rb") as f:
        head = f.read(4096).lower()
    return b"pixels" in head.split(b"\n", 1)[0]


def read_csv(path: Path):
    """``(images, labels, splits, bad)`` from a FER CSV file; see :func:`_csvcodec.read_fer_csv`."""
    if path.stat().st_size > MAX_CSV_BYTES:
        raise DatasetError(f"{path}: {path.stat().st_size / 2**30:.1f} GiB, over the limit of "
                           f"{MAX_CSV_BYTES / 2**30:.0f} GiB for a FER CSV (the full dataset is ~0.3 GiB)")
    with open(path, "rb") as stream:
        return _parse_csv(stream, path.name)


def read_csv_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str):
    """A FER CSV inside a zip, streamed row by row like a CSV file; ``name`` names it in messages."""
    check_member(info, MAX_CSV_BYTES)
    try:
        with archive.open(info) as stream:
            return _parse_csv(stream, name)
    except ZIP_READ_ERRORS as error:
        raise DatasetError(f"{info.filename}: corrupt or unreadable zip member ({error})") from None


def csv_member(archive: zipfile.ZipFile) -> zipfile.ZipInfo | None:
    """The FER CSV inside a zip that holds no image layout, if there is one."""
    infos = [i for i in archive.infolist() if not i.is_dir() and not is_os_junk(i.filename.split("/"))]
    if any(i.filename.lower().endswith(IMAGE_SUFFIXES) for i in infos):
        return None
    for info in infos:
        if info.filename.lower().endswith(".csv"):
            check_member(info, MAX_CSV_BYTES)
            try:
                with archive.open(info) as f:
                    if b"pixels" in f.readline(4096).lower():
                        return info
            except ZIP_READ_ERRORS as error:
                raise DatasetError(f"{info.filename}: corrupt or unreadable zip member ({error})") from None
    return None


def _parse_csv(stream: BinaryIO, name: str):
    labels, splits, pixels, bad = _csvcodec.read_fer_csv(stream, name, len(CLASS_NAMES), SPLITS)
    return pixels.reshape(-1, IMAGE_SIZE, IMAGE_SIZE), labels, splits, bad
