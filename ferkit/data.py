"""FER-2013 in memory (:class:`FerDataset`): read wherever the user has it, written back as CSV or .npz.

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

This module holds the dataset type, the entry point, class subsets, summaries
and the writers; each source's reader has a module of its own:
:mod:`ferkit.dataset_layout` (the image layout in a zip or folder, as records),
:mod:`ferkit.dataset_images` (decoding those images), :mod:`ferkit.dataset_csv`
and :mod:`ferkit.dataset_npz`, all bounded by :mod:`ferkit.dataset_zip`'s
limits on zip members.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ferkit import _csvcodec, files
from ferkit.dataset_csv import csv_member, looks_like_csv, read_csv, read_csv_member
from ferkit.dataset_images import decode_records
from ferkit.dataset_layout import MAX_IMAGE_BYTES, folder_records, zip_records
from ferkit.dataset_npz import read_npz
from ferkit.dataset_zip import ZipMembers
from ferkit.errors import BadRecord, DatasetError
from ferkit.progress import Meter
from ferkit.progress import progress as report
from ferkit.settings import CLASS_NAMES, SPLITS

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
        import kagglehub  # optional: only this function needs it
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
        data = _decode(folder_records(path), path, resize, progress)
    elif path.suffix.lower() == ".npz":
        data = read_npz(path)
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            inner_csv = csv_member(archive)
            if inner_csv is not None:  # e.g. Kaggle's deadskull7/fer2013: fer2013.csv in a zip
                data = read_csv_member(archive, inner_csv, f"{path.name}:{inner_csv.filename}")
            else:
                records = zip_records(archive, path, ZipMembers(archive, raw, MAX_IMAGE_BYTES))
                data = _decode(records, path, resize, progress)
    elif looks_like_csv(path):
        data = read_csv(path)
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


def _decode(records, source: Path, resize: bool, progress: bool):
    """:func:`decode_records`, reporting progress (:mod:`ferkit.progress`)."""
    with Meter(f"reading {source.name}", len(records), "image", progress) as meter:
        return decode_records(records, resize=resize, on_progress=meter.update)


def _bad_summary(path: Path, bad: Sequence[BadRecord], shown: int = 10) -> str:
    lines = [f"{path}: {len(bad)} bad record{'s' * (len(bad) != 1)} "
             "(use on_error='skip' / --skip-bad to leave them out and get this list back):"]
    lines += [f"  {record}" for record in bad[:shown]]
    if len(bad) > shown:
        lines.append(f"  ... and {len(bad) - shown} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# Writing


def write_csv(data: FerDataset, path: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write ``data`` in the original challenge schema ``emotion,pixels,Usage``.

    The file is interchangeable with Kaggle's ``fer2013.csv``: original label
    ids, pixels as 2304 space-separated integers, rows in ``data``'s order.
    """
    _require_full_classes(data, "CSV")
    path = Path(path)
    with files.atomic_path(path) as temporary, open(temporary, "wb") as f:
        _csvcodec.write_fer_csv(f, data.images.reshape(len(data), -1), data.labels, data.splits, SPLITS,
                                progress=lambda chunks, n: report(chunks, f"writing {path.name}", n, "chunk", progress))
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
