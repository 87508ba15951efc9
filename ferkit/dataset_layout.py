"""The Kaggle image layout, in a zip or a folder, as records to decode.

The layout is ``train/<class>/Training_<id>.jpg`` and
``test/<class>/PublicTest_<id>.jpg`` / ``PrivateTest_<id>.jpg``. Each image
file becomes an :class:`ImageRecord`: its split, label, sort order and a way
to read its bytes. Files that break the layout (an unknown class folder, a
test image without its split in the name, one image filed under two classes,
a folder link that loops ...) become records carrying their problem, so that
every bad record is listed together, not the first one raised.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from ferkit import files
from ferkit.dataset_zip import ZipMembers
from ferkit.errors import DatasetError
from ferkit.settings import CLASS_NAMES, IMAGE_SUFFIXES, SPLITS

#: Largest image file read from a zip or folder (FER-2013's are ~2 KB); zip members by their declared size.
MAX_IMAGE_BYTES = 32 * 2**20
_FOLDER_SPLIT = {"train": "Training", "test": None}  # test/ holds Public and Private
_NAME_SPLIT = re.compile(r"^(Training|PublicTest|PrivateTest)_(\d+)")
#: Sort order of records with a problem: after every image, by name.
_PROBLEM_ORDER = 99


@dataclass(frozen=True)
class ImageRecord:
    """One image file of the layout; ``problem`` says why it cannot be used (None: decode it)."""

    name: str  # path inside the zip / relative to the folder, for messages
    split: int  # index into SPLITS
    label: int  # index into CLASS_NAMES
    order: tuple  # (split, id in the file name or -1, name): the dataset's row order
    read: Callable[[], bytes]  # the file's bytes; raises DatasetError naming it
    problem: str | None = None


def is_os_junk(parts: Sequence[str]) -> bool:
    """Whether a path (split into its parts) is an operating system's litter: hidden files, ``__MACOSX``."""
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def zip_records(archive: zipfile.ZipFile, path: Path, members: ZipMembers) -> list[ImageRecord]:
    """The records of the images in ``archive`` (read through ``members``), in the dataset's order."""
    records = []
    for info in archive.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name):
            # Never trust member names: a crafted archive could point outside any
            # folder it is extracted to ("zip slip").
            raise DatasetError(f"{path}: unsafe member path {name!r} escapes the archive; refusing to read it")
        if info.is_dir() or is_os_junk(parts):
            continue
        records.append(_make_record(parts, name, lambda info=info: members.read(info)))
    return _finish_records(records, path)


def folder_records(root: Path) -> list[ImageRecord]:
    """The records of the images under ``root``, in the dataset's order; linked folders are followed once."""
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
        dirnames[:] = _new_folders(dirpath, prefix, sorted(d for d in dirnames if not is_os_junk([d])),
                                   folders, records)
        for filename in filenames:
            if filename.startswith("."):
                continue
            name = prefix + filename
            full = os.path.join(dirpath, filename)
            records.append(_make_record(name.split("/"), name, lambda full=full, name=name: _read_as(name, full)))
    return _finish_records(records, root)


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


def _problem_record(name: str, problem: str) -> ImageRecord:
    return ImageRecord(name, 0, 0, (_PROBLEM_ORDER, 0, name), lambda: b"", problem=problem)


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


def _make_record(parts, name, read) -> ImageRecord | None:
    where = _classify_path(parts)
    if where is None:
        return None  # outside train/ and test/: a README, a licence, ...
    if isinstance(where, str):
        return ImageRecord(name, 0, 0, (_PROBLEM_ORDER, 0, name), read, problem=where)
    if not name.lower().endswith(IMAGE_SUFFIXES):
        return ImageRecord(name, 0, 0, (_PROBLEM_ORDER, 0, name), read,
                           problem=f"not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    split, label, order = where
    return ImageRecord(name, split, label, order, read)


def _finish_records(records, path: Path) -> list[ImageRecord]:
    records = sorted((r for r in records if r is not None), key=lambda r: r.order)
    records = _flag_repeated_ids(records)
    if not records:
        raise DatasetError(
            f"{path}: no images found in the FER-2013 layout "
            "(train/<class>/Training_<id>.jpg, test/<class>/PublicTest_<id>.jpg ...)"
        )
    return records


def _flag_repeated_ids(records: list[ImageRecord]) -> list[ImageRecord]:
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
