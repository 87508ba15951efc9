"""Reading back ferkit's .npz cache, each array checked against the bytes that hold it before it is allocated.

Writing is :func:`ferkit.data.write_npz`, which stores exactly :data:`NPZ_ARRAYS`.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ferkit.dataset_zip import check_member
from ferkit.errors import DatasetError
from ferkit.settings import CLASS_NAMES, IMAGE_SIZE, SPLITS

#: Largest array read from a .npz (the full dataset's images are 83 MB).
MAX_NPZ_ARRAY_BYTES = 2 * 2**30
#: The arrays a ferkit .npz holds, each as ``NAME.npy``.
NPZ_ARRAYS = ("images", "labels", "splits", "class_names")


def read_npz(path: Path):
    """``(images, labels, splits, [])`` from a ferkit .npz; a DatasetError naming ``path`` for anything else."""
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not a .npz archive (a .npz is a zip of arrays, as `ferkit convert DATA out.npz` "
                           "writes); give the dataset zip, folder or CSV instead")
    try:
        with zipfile.ZipFile(path) as archive:
            present = set(archive.namelist())
            missing = [name for name in NPZ_ARRAYS if f"{name}.npy" not in present]
            if missing:
                raise DatasetError(f"{path}: not a ferkit .npz (missing {', '.join(sorted(missing))})")
            images, labels, splits, names = (_read_npy(archive, archive.getinfo(f"{name}.npy"), path)
                                             for name in NPZ_ARRAYS)
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
        raise  # the archive's damage, not the header's: reported as such by read_npz
    except Exception as error:  # the header is a Python literal: parsing it can fail in many ways
        raise DatasetError(f"{where}: not a readable .npy header ({error})") from None
    return shape, dtype
