"""Predicting on a path as the command line takes it: an image, a folder of images, or a video.

    from ferkit.batch import predict_path
    from ferkit.prediction import Predictor

    outcome = predict_path(Predictor(), "photos/", "annotated")
    outcome.results      # one ImagePrediction per image read
    outcome.skipped      # (path, why) for each file passed over
    outcome.written      # the annotated copies (a video: the annotated video and its CSV table)

Whatever is written goes into the output folder through a
:class:`ferkit.files.OutputLedger`: a run replaces only files ferkit wrote
there, unless ``overwrite``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ferkit.files import OutputError, OutputLedger, check_output_path
from ferkit.images import ImageError, save_image
from ferkit.prediction import ImagePrediction, Predictor
from ferkit.progress import progress as report
from ferkit.settings import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from ferkit.video import MAX_VIDEO_FRAMES, write_video_table

if TYPE_CHECKING:  # only named in annotations: pandas is imported where a video's table is made
    import pandas


@dataclass
class PathPrediction:
    """What :func:`predict_path` did with one path."""

    kind: str  # "image", "folder" or "video"
    class_names: list[str]
    #: An image's or a folder's results, one per image read, in order.
    results: list[ImagePrediction] = field(default_factory=list)
    #: A folder's files passed over (not images, unreadable, or their output refused), with why.
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: The files written, in order: annotated images, or a video's annotated copy and its CSV table.
    written: list[Path] = field(default_factory=list)
    #: A video's table: one row per face per analysed frame (:meth:`ferkit.prediction.Predictor.predict_video`).
    table: "pandas.DataFrame | None" = None
    #: A video's summary: video, frames, face_rows, tracked_faces, annotated, csv.
    summary: dict = field(default_factory=dict)

    @property
    def exit_status(self) -> int:
        """0: everything was processed; 1: done, but some files were skipped."""
        return 1 if self.skipped else 0


def predict_path(predictor: Predictor | Callable[[], Predictor], path: str | Path, out: str | Path, *,
                 recursive: bool = False, overwrite: bool = False, stride: int = 1,
                 max_frames: int | None = MAX_VIDEO_FRAMES, progress: bool = True,
                 on_skip: Callable[[Path, str], None] | None = None) -> PathPrediction:
    """Find and classify the faces in ``path`` and write annotated copies into the folder ``out``.

    ``path`` is a folder (its images, sorted; subfolders too if ``recursive``:
    :func:`predict_folder`), a video (a suffix in ``settings.VIDEO_SUFFIXES``:
    ``NAME_annotated.mp4`` and ``NAME_faces.csv``, every ``stride``-th frame
    analysed, at most ``max_frames`` frames) or an image
    (``NAME_annotated.SUFFIX``). ``predictor`` may be a function that makes
    one: it is called only once ``path`` exists and ``out`` can be a folder, so
    such mistakes are reported before a model loads. ``on_skip(path, why)`` is
    called as each folder file is passed over; ``progress`` reports on stderr
    (:mod:`ferkit.progress`). Raises FileNotFoundError, OutputError,
    ImageError for what stops the whole run.
    """
    target, out = Path(path), Path(out)
    if not target.exists() and not target.is_symlink():
        raise FileNotFoundError(f"{target}: no such file or folder")
    ledger = OutputLedger(out, overwrite)  # refuses a file as the output folder before the model loads
    if callable(predictor):
        predictor = predictor()
    outcome = PathPrediction("image", list(predictor.class_names))
    if target.is_dir():
        outcome.kind = "folder"
        for item, result in predict_folder(predictor, target, out, recursive=recursive, overwrite=overwrite,
                                           progress=progress):
            if isinstance(result, str):
                outcome.skipped.append((item, result))
                if on_skip is not None:
                    on_skip(item, result)
            else:
                outcome.results.append(result)
                outcome.written.append(result.annotated)
        return outcome
    if target.suffix.lower() in VIDEO_SUFFIXES:
        outcome.kind = "video"
        video_out = ledger.claim(out / f"{target.stem}_annotated.mp4")
        csv_path = ledger.claim(out / f"{target.stem}_faces.csv")
        table = predictor.predict_video(target, video_out, stride=stride, progress=progress, max_frames=max_frames)
        outcome.written.append(ledger.record(video_out))
        outcome.written.append(ledger.record(write_video_table(table, csv_path)))
        outcome.table = table
        outcome.summary = {"video": str(target), "frames": int(table.attrs["frames"]), "face_rows": len(table),
                           "tracked_faces": int(table["face_id"].nunique()) if len(table) else 0,
                           "annotated": str(video_out), "csv": str(csv_path)}
        return outcome
    annotated = check_output_path(ledger.claim(annotated_path(target, target.parent, out)), target)
    result = predictor.predict(target)
    result.annotated = ledger.record(save_image(annotated, result.annotate()))
    outcome.results.append(result)
    outcome.written.append(result.annotated)
    return outcome


def folder_images(folder: str | Path, recursive: bool = False, leave_out=None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The images in ``folder`` (sorted; subfolders too if ``recursive``) and the files passed over, with why.

    Hidden files are ignored, and so is whatever ``leave_out(path)`` is true
    for (a run's own output folder and files). Symbolic links to folders are
    followed, once each: a link back to a folder already walked is passed
    over with the reason. Everything else that is not an image ferkit reads
    (another format, a video, a FIFO, a broken link) is listed as passed
    over, never dropped silently. Raises ImageError for a folder with
    nothing to process, saying whether ``recursive`` would find images.
    """
    folder = Path(folder)
    images, passed = [], []
    walked = set()
    for directory, names, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(directory)
        if real in walked:  # a link to a folder already walked (a loop, or two links to one folder)
            passed.append((Path(directory), "a link to a folder already searched; not searched again"))
            names[:] = []
            continue
        walked.add(real)
        keep = sorted(n for n in names if not n.startswith(".")) if recursive else []
        names[:] = [n for n in keep if not (leave_out and leave_out(Path(directory) / n))]
        for filename in sorted(filenames):
            path = Path(directory) / filename
            if filename.startswith(".") or (leave_out and leave_out(path)):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                passed.append((path, f"not an image ferkit reads (supported: {', '.join(IMAGE_SUFFIXES)})"))
            else:
                images.append(path)
    if not images and not passed:
        subfolders = 0 if recursive or not folder.is_dir() else \
            sum(1 for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
        hint = f"; it has {subfolders} subfolder(s): add --recursive (recursive=True) to look inside" if subfolders else ""
        raise ImageError(f"{folder}: no images found{hint}")
    return images, passed


def annotated_path(image: Path, folder: Path, out_dir: Path) -> Path:
    """Where the annotated copy of ``image`` (inside ``folder``) goes: the same relative path in
    ``out_dir``, with ``_annotated`` before the suffix, which is kept, so photo.jpg and photo.png
    never overwrite each other."""
    relative = image.relative_to(folder) if folder in image.parents else Path(image.name)
    return out_dir / relative.with_name(f"{relative.stem}_annotated{relative.suffix}")


def predict_folder(predictor: Predictor, folder: str | Path, out_dir: str | Path | None = None,
                   recursive: bool = False, overwrite: bool = False, progress: bool = False):
    """Predict every image in ``folder`` (sorted); yields ``(path, ImagePrediction or error message)``.

    A file that cannot be read (or annotated) gives its message and the run
    goes on; files that are not images come first, with the reason. With
    ``out_dir``, annotated copies are written there (:func:`annotated_path`)
    and each result's ``annotated`` attribute names the file written. A run
    never replaces a file it did not write (:class:`ferkit.files.OutputLedger`;
    ``overwrite`` allows it, except for this run's own inputs) and never reads
    its own outputs: ``out_dir`` inside ``folder`` and earlier annotated
    copies are left out of the inputs. ``progress`` reports on stderr
    (:func:`ferkit.progress.progress`).
    """
    folder = Path(folder)
    ledger = OutputLedger(out_dir, overwrite) if out_dir is not None else None
    own_folder = os.path.realpath(out_dir) if out_dir is not None else None

    def leave_out(path: Path) -> bool:
        return ledger is not None and (os.path.realpath(path) == own_folder or ledger.wrote(path))

    images, passed = folder_images(folder, recursive, leave_out)
    inputs = {os.path.realpath(path) for path in images}
    yield from passed
    for path in report(images, f"photos in {folder}", unit="image", enabled=progress):
        try:
            target = annotated_path(path, folder, Path(out_dir)) if ledger is not None else None
            if target is not None:  # checked before the work, which would be lost
                if os.path.realpath(target) in inputs:
                    raise OutputError(f"{target}: is also an input of this run; left as it is (choose another "
                                      "--out)")
                ledger.claim(target)
            result = predictor.predict(path)
            if target is not None:
                result.annotated = ledger.record(save_image(target, result.annotate()))
        except (ImageError, OutputError) as error:
            yield path, str(error)
            continue
        yield path, result
