"""Labelled photos of real faces: read a set, crop its faces with the model's pipeline, split it by person.

A labelled photo set is either a folder of class folders (``happy/x.jpg``)
or a ``labels.csv`` (in the folder, or given itself) with the columns
``file`` (relative to the CSV's folder) and ``label``, and optionally
``identity`` or ``person``: who is in the photo, so that a held-out part
never shares a person with the rest and confidence intervals resample people.

    photos = read_photo_set("real_faces", class_names, label_map={"happiness": "happy"})
    crops = crop_photos(photos, meta)          # one face per photo, as Predictor crops it
    train, validation = photos.split_by_identity(0.2)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ferkit import faces as face_module
from ferkit.files import atomic_path, read_bytes
from ferkit.images import IMAGE_SUFFIXES, MAX_IMAGE_PIXELS, ImageError, load_image, to_gray
from ferkit.progress import progress as report

#: The share of each class's photos ``train --photos`` holds out (by person) for validation.
HELD_OUT_FRACTION = 0.25
#: Column names accepted for who is in a photo.
IDENTITY_COLUMNS = ("identity", "person")
#: A labels.csv far larger than this is not a list of photos.
MAX_LABELS_BYTES = 256 * 2**20


class PhotoSetError(ValueError):
    """A labelled photo set cannot be read; the message names the file and what to do."""


@dataclass
class PhotoSet:
    """Labelled photos: ``files[i]`` shows class ``class_names[labels[i]]`` (and person ``identities[i]``)."""

    source: str
    files: list[Path]
    labels: np.ndarray  # (N,) int64 indices into class_names
    class_names: list[str]
    identities: list[str] | None = None
    #: Labels that are none of ``class_names`` (after ``label_map``), with their counts: listed, never guessed.
    unknown_labels: dict[str, int] = field(default_factory=dict)
    #: Rows or files left out with ``skip_bad`` (missing files, malformed rows): why, one line each.
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, mask: np.ndarray) -> "PhotoSet":
        mask = np.asarray(mask, bool)
        return replace(self, files=[f for f, keep in zip(self.files, mask) if keep], labels=self.labels[mask],
                       identities=None if self.identities is None else
                       [i for i, keep in zip(self.identities, mask) if keep])

    def split_by_identity(self, fraction: float = HELD_OUT_FRACTION) -> tuple["PhotoSet", "PhotoSet"]:
        """(rest, held out): people (never single photos) held out so that each class has about ``fraction`` of
        its photos in the held-out part.

        People are visited in a fixed pseudo-random order (a hash of their
        name) and each is held out if that brings the held-out share of every
        class nearer to ``fraction`` (errors relative to each class's target,
        so rare classes count as much as common ones). A plain random split
        of people would leave a rare class that a few people carry (disgust
        in real_faces: two actors, 154 of 164 photos) wholly on one side. The
        same set always gives the same split.
        """
        if self.identities is None:
            raise PhotoSetError(f"{self.source}: no identity column ({' or '.join(IDENTITY_COLUMNS)}); a "
                                "held-out part needs to know who is in each photo, so no person is on both sides: "
                                "give a labels.csv with file, label and identity columns, or train with "
                                "--photos-held-out 0 to hold none out")
        if not 0 < fraction < 1:
            raise PhotoSetError(f"held-out fraction {fraction}: must be between 0 and 1")
        people, person = np.unique(np.asarray(self.identities), return_inverse=True)
        counts = np.zeros((len(people), len(self.class_names)))
        np.add.at(counts, (person, self.labels), 1)
        target = fraction * counts.sum(0)
        cost = lambda held: (((held - target) / np.maximum(target, 1)) ** 2).sum()
        order = sorted(range(len(people)), key=lambda i: hashlib.sha256(people[i].encode("utf-8")).digest())
        held, chosen = np.zeros(len(self.class_names)), np.zeros(len(people), bool)
        for i in order:
            if cost(held + counts[i]) < cost(held):
                held += counts[i]
                chosen[i] = True
        return self.subset(~chosen[person]), self.subset(chosen[person])


def parse_label_map(pairs: str | list[str] | None) -> dict[str, str]:
    """``"happiness=happy,anger=angry"`` (or a list of such strings) -> {"happiness": "happy", "anger": "angry"}."""
    if not pairs:
        return {}
    items = [item.strip() for text in ([pairs] if isinstance(pairs, str) else pairs) for item in text.split(",")]
    mapping = {}
    for item in filter(None, items):
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise PhotoSetError(f"--labels {item!r}: expected THEIRS=OURS, e.g. happiness=happy")
        mapping[name.strip()] = target.strip()
    return mapping


def is_photo_set(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a labelled photo set rather than FER-2013 (which has train/ and test/)."""
    path = Path(path)
    if path.is_file():  # a labels.csv has file and label columns; FER-2013's CSV has emotion, pixels, Usage
        return path.suffix.lower() == ".csv" and {"file", "label"} <= set(_csv_header(path))
    if not path.is_dir():
        return False
    if (path / "labels.csv").is_file():
        return True
    folders = {entry.name.lower() for entry in os.scandir(path) if entry.is_dir()}
    return bool(folders) and not folders & {"train", "test"}


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [name.strip().lower() for name in next(csv.reader([handle.readline()]), [])]
    except (OSError, UnicodeDecodeError):
        return []


def read_photo_set(path: str | os.PathLike, class_names: list[str], label_map: dict[str, str] | None = None,
                   skip_bad: bool = False) -> PhotoSet:
    """A :class:`PhotoSet` from a folder of class folders (photos anywhere below each, hidden files left out) or
    a labels.csv; labels are matched case-insensitively to ``class_names`` after ``label_map``. Missing files and
    bad rows raise :class:`PhotoSetError` naming them, or with ``skip_bad`` are left out and listed in
    ``skipped``."""
    path = Path(path)
    label_map = {k.lower(): v for k, v in (label_map or {}).items()}
    unknown_targets = sorted(set(label_map.values()) - set(class_names))
    if unknown_targets:
        raise PhotoSetError(f"--labels maps to {', '.join(unknown_targets)}, not among the model's classes "
                            f"({', '.join(class_names)})")
    csv_path = path if path.is_file() else path / "labels.csv"
    if csv_path.is_file():
        rows, identities, problems = _read_labels_csv(csv_path)
        root, listing = csv_path.parent, csv_path
    elif path.is_dir():
        rows, identities, problems = _class_folder_rows(path), None, []
        root, listing = path, path
    else:
        raise PhotoSetError(f"{path}: no such folder or labels.csv")
    by_name = {name.lower(): index for index, name in enumerate(class_names)}
    files, labels, kept, unknown = [], [], [], {}
    missing = []
    for number, (relative, label) in enumerate(rows):
        if relative is None:  # a bad row, already in problems
            continue
        target = label_map.get(label.lower(), label).lower()
        if target not in by_name:
            unknown[label] = unknown.get(label, 0) + 1
            continue
        if not (root / relative).is_file():
            missing.append(relative)
            continue
        files.append(root / relative)
        labels.append(by_name[target])
        kept.append(number)
    if missing:
        hint = " (paths are read with / between folders, not \\)" if any("\\" in m for m in missing) else ""
        problems.append(f"{root / missing[0]}: listed in {listing} but missing ({len(missing)} file(s) in all"
                        f"{hint}); restore them or remove their rows")
    if problems and not skip_bad:
        more = f" ({len(problems)} problems in all; --skip-bad leaves the bad rows out and lists them)" \
            if len(problems) > 1 else " (--skip-bad leaves the bad rows out and lists them)"
        raise PhotoSetError(problems[0] + more)
    if not files:
        raise PhotoSetError(f"{path}: no photo with a label among {', '.join(class_names)}"
                            + (f" (found labels: {', '.join(sorted(unknown))}; map them with --labels "
                               "THEIRS=OURS)" if unknown else ""))
    return PhotoSet(str(path), files, np.array(labels, np.int64), list(class_names),
                    None if identities is None else [identities[i] for i in kept], unknown, problems)


def _class_folder_rows(path: Path) -> list[tuple[str, str]]:
    """(relative file, label) for every image below each class folder of ``path``, hidden ones left out
    (``.DS_Store``, macOS's ``._photo.jpg``): photos sorted into sub-folders (by person, by session) count."""
    rows = []
    for folder in sorted(path.iterdir()):
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        for parent, folders, names in os.walk(folder):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for name in sorted(names):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    rows.append(((Path(parent) / name).relative_to(path).as_posix(), folder.name.strip()))
    return rows


def _read_labels_csv(path: Path) -> tuple[list[tuple[str | None, str | None]], list[str] | None, list[str]]:
    """(rows, identities, problems): one (file, label) row per data line, (None, None) for a bad one, whose
    reason is in problems."""
    raw = read_bytes(path, "labels file", MAX_LABELS_BYTES)
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise PhotoSetError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[error.start]:02x}); save the file as "
                            "UTF-8 (in a spreadsheet: CSV UTF-8)") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = {name.strip().lower(): name for name in reader.fieldnames or []}
    if not {"file", "label"} <= set(columns):
        header = ", ".join(columns) or "none"
        separator = next((s for s in (";", "\t", "|") if s in "".join(columns)), None)
        hint = f"; the header is separated by {separator!r}: labels.csv needs commas" if separator else ""
        raise PhotoSetError(f"{path}: needs the columns file and label (found: {header}){hint}")
    identity = next((columns[c] for c in IDENTITY_COLUMNS if c in columns), None)
    rows, identities, problems, first_line = [], [], [], {}
    for row in reader:
        line = reader.line_num  # the physical line, blank lines counted
        relative, label = (row.get(columns["file"]) or "").strip(), (row.get(columns["label"]) or "").strip()
        person = (row.get(identity) or "").strip() if identity else ""
        problem = None
        if not relative or not label:
            problem = f"{path}, line {line}: empty file or label"
        elif Path(relative).is_absolute() or ".." in Path(relative).parts:
            problem = f"{path}, line {line}: {relative!r} leaves the labels file's folder; give paths relative to it"
        elif relative in first_line:
            problem = f"{path}, line {line}: {relative!r} is listed again (first on line {first_line[relative]})"
        elif identity and not person:
            problem = (f"{path}, line {line}: empty {identity} (who is in the photo); fill it in on every row, or "
                       "remove the column")
        if problem:
            problems.append(problem)
            rows.append((None, None))
        else:
            first_line[relative] = line
            rows.append((relative, label))
        identities.append(person)
    return rows, identities if identity else None, problems


@dataclass
class PhotoCrops:
    """One face per photo, cut as the model's pipeline cuts it, or none where no face was found."""

    crops: np.ndarray  # (N, S, S) uint8; zeros where no face was found
    found: np.ndarray  # (N,) bool
    boxes: np.ndarray  # (N, 4) int32 x, y, width, height; zeros where no face was found
    scores: np.ndarray  # (N,) float32 detection scores; 0 where no face was found
    errors: dict[int, str] = field(default_factory=dict)  # photo index -> why it could not be read

    def subset(self, mask: np.ndarray) -> "PhotoCrops":
        mask = np.asarray(mask, bool)
        renumbered = np.cumsum(mask) - 1
        return PhotoCrops(self.crops[mask], self.found[mask], self.boxes[mask], self.scores[mask],
                          {int(renumbered[i]): why for i, why in self.errors.items() if mask[i]})


def crop_photos(photos: PhotoSet, meta, detector: str = "yunet", align: bool | None = None,
                cache_dir: str | os.PathLike | None = None, progress: bool = True,
                whole_image: bool = False, max_pixels: int | None = MAX_IMAGE_PIXELS) -> PhotoCrops:
    """Find each photo's face (the largest, where there are several) and cut it as ``Predictor`` does.

    Detection is :func:`ferkit.faces.detect_faces` with the predictor's
    defaults (both searches), the crop :func:`ferkit.faces.crop_faces`
    with ``meta``'s settings. With ``cache_dir`` the result is kept in a file
    named by a hash of the photos (paths, sizes, times), the settings and the
    detector, and reused while none of them changes.

    ``whole_image``: each photo is one face already cut out, framed like
    FER-2013's crops (a crop set such as CK+48): no search, no margin or
    alignment; its centred square is resized to the model's input (and a flat
    one lifted, as every crop is) and counted as found, with score NaN.
    """
    align = meta.face_align if align is None else align
    settings = {"input_size": meta.input_size, "face_margin": meta.face_margin, "face_offset": meta.face_offset,
                "face_align": align, "face_low_contrast": meta.face_low_contrast, "detector": detector,
                "min_score": face_module.MIN_FACE_SCORE, "version": 1}
    cache = None
    if cache_dir is not None and not whole_image:  # nothing to search, nothing worth keeping
        cache = Path(cache_dir) / f"crops-{_fingerprint(photos, settings)}.npz"
        if cache.is_file():
            with np.load(cache) as stored:
                errors = {int(k): v for k, v in json.loads(str(stored["errors"])).items()}
                return PhotoCrops(stored["crops"], stored["found"], stored["boxes"], stored["scores"], errors)
    size = meta.input_size
    result = PhotoCrops(np.zeros((len(photos), size, size), np.uint8), np.zeros(len(photos), bool),
                        np.zeros((len(photos), 4), np.int32), np.zeros(len(photos), np.float32))
    work = "reading face crops" if whole_image else "finding faces"
    for index, path in enumerate(report(photos.files, work, unit="photo", enabled=progress and len(photos) > 0)):
        try:
            image = load_image(path, max_pixels=max_pixels)
        except ImageError as error:
            result.errors[index] = str(error)
            continue
        if whole_image:
            face = face_module.whole_image_face(image)
            crop = face_module.crop_face(to_gray(image), face, size, margin=0.0, low_contrast=meta.face_low_contrast)
        else:
            found = face_module.detect_faces(image, detector, upscale_search=True)
            if not found:
                continue
            face = max(found, key=lambda f: f.box[2] * f.box[3])  # the photo's subject: its largest face
            crop = face_module.crop_faces(to_gray(image), [face], meta, align)[0]
        result.crops[index], result.found[index], result.boxes[index] = crop, True, face.box
        result.scores[index] = face.score
    if cache is not None:
        with atomic_path(cache) as temporary:
            with open(temporary, "wb") as out:
                np.savez(out, crops=result.crops, found=result.found, boxes=result.boxes, scores=result.scores,
                         errors=json.dumps(result.errors))
    return result


#: Photos whose longer side is at most this many pixels are likely face crops, not photos of people.
CROP_LIKE_SIDE = 100


def small_misses_hint(photos: PhotoSet, crops: PhotoCrops, option: str = "--crops", share: float = 0.1) -> str | None:
    """A hint for a set of face crops searched as photos: when more than ``share`` of the photos had no face
    found and most of those are small (the size of face crops), say so and name ``option``; else None."""
    from PIL import Image

    missed = [path for index, path in enumerate(photos.files) if not crops.found[index] and index not in crops.errors]
    if not photos or len(missed) <= share * len(photos):
        return None
    sides = []
    for path in missed[:200]:
        try:
            with Image.open(path) as image:
                sides.append(max(image.size))
        except (OSError, ValueError):
            continue
    if not sides or np.median(sides) > CROP_LIKE_SIDE:
        return None
    return (f"no face found in {len(missed)} of {len(photos)} photos, most of them {int(np.median(sides))} px or "
            f"smaller: if the images are faces already cut out, add {option} to use each one whole")


def _fingerprint(photos: PhotoSet, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in photos.files:
        status = path.stat()
        digest.update(f"{path}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
