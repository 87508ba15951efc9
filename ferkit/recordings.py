"""The work of ``ferkit analyse`` without Ray: which recordings, their plans and chunks, and the chunk files.

A *recording* is a video or a photo. A video is planned once (:func:`plan_video`: every frame's time, the frames
to analyse, chunks of about a minute) and each chunk is analysed on its own (:func:`analyse_chunk`) by any
worker: it reads its frames from a little earlier, so its tracker is warm, and returns rows with the chunk's
own track ids. :func:`stitch` joins the chunks of a recording, mapping each chunk's ids onto the ids of the rows
they share with the chunks before, then numbering people in order of appearance, as ``predict`` does.
:mod:`ferkit.analyse` spreads these calls over Ray; :mod:`ferkit.report` summarises the result.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ferkit import __version__, video
from ferkit.files import atomic_path
from ferkit.model import resolve_model
from ferkit.settings import DETECTOR, IMAGE_SUFFIXES, TRACKING, VIDEO_SUFFIXES
from ferkit.tracking import Tracker, warm_up_frames

# pandas and pyarrow are imported where a table is made: importing ferkit must stay fast.

#: Bumped when the meaning of the outputs changes, so older outputs are redone rather than mixed in.
SCHEMA = 1
#: Folder (inside the output folder) of the plans and the committed chunks, before a recording is complete.
WORK = ".work"


@dataclass(frozen=True)
class Settings:
    """Everything that decides the rows; its :meth:`fingerprint` is kept with every output."""

    model: str | None = None
    detector: str = "yunet"
    tta: bool = False
    align: bool | None = None
    min_face_score: float = DETECTOR.min_face_score
    stride: int = 1
    fps: float | None = None  # frames analysed per second of video (instead of ``stride``)
    chunk_seconds: float = 60.0
    overlap_seconds: float = 2.0
    bin_seconds: float = 10.0
    aggregate_only: bool = False

    def fingerprint(self) -> str:
        """A hash of these settings, the model's files' bytes, the detector and tracking settings and ferkit's
        version: a change to any of them redoes the work."""
        stem = resolve_model(self.model)
        digest = hashlib.sha256()
        for path in (stem.with_suffix(".json"), stem.with_suffix(".h5"), stem.with_name(stem.name + ".meta.json")):
            digest.update(path.read_bytes() if path.exists() else b"-")
        described = {**asdict(self), "model": digest.hexdigest(), "detector_settings": asdict(DETECTOR),
                     "tracking": asdict(TRACKING), "ferkit": __version__, "schema": SCHEMA}
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Recording:
    """One input: ``kind`` "video" or "photo", a stable ``id`` (its partition name) and its ``source`` path."""

    id: str
    source: str
    kind: str

    def fingerprint(self, settings_fingerprint: str) -> str:
        """The settings' fingerprint with this file's identity (size, modification time): a replaced file is
        redone."""
        return hashlib.sha256(f"{settings_fingerprint}|{self.source}|{file_identity(self.source)}".encode()
                              ).hexdigest()[:16]


def recording_id(path: Path | str) -> str:
    """A partition-safe name: the file's stem, then a short hash of its absolute path or URL (two clip.mp4 in
    different folders stay apart)."""
    where = path if is_url(str(path)) else str(Path(path).resolve())
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(path).rstrip("/")).stem)[:60] or "recording"
    return f"{stem}-{hashlib.sha1(str(where).encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- object stores
# An input may be a URL that pyarrow's file systems open (s3://, gs://, hdfs://, abfs://, file://: whichever the
# user's pyarrow was built with and has credentials for, as Ray's own readers take them). Listing and identity
# come from the store; each worker copies the object it analyses into a local cache once, since the video
# decoders read local files.


def is_url(text: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def _store(url: str):
    """(file system, path inside it, URL prefix) for ``url``."""
    from pyarrow import fs  # only for URL inputs

    try:
        filesystem, inside = fs.FileSystem.from_uri(url)
    except Exception as error:  # pyarrow raises ArrowInvalid, ArrowNotImplementedError, OSError ...
        raise ValueError(f"{url}: cannot open this URL ({error}); local paths and the URLs pyarrow's file "
                         "systems take (s3://, gs://, hdfs://, abfs://, file://) are supported") from None
    at = url.find(inside)
    return filesystem, inside, url[:at] if at > 0 else url.split("://", 1)[0] + "://"


def file_identity(source: str) -> str:
    """Size and modification time of a path or URL ("missing" when it cannot be read): a changed file is redone."""
    try:
        if is_url(source):
            filesystem, inside, _ = _store(source)
            info = filesystem.get_file_info(inside)
            return f"{info.size}:{info.mtime_ns}" if info.is_file else "missing"
        status = os.stat(source)
        return f"{status.st_size}:{status.st_mtime_ns}"
    except (OSError, ValueError):
        return "missing"


def list_url(url: str) -> list[str]:
    """The object at ``url``, or every object under it (recursively, hidden names left out), as URLs; [] when
    there is nothing there."""
    from pyarrow import fs

    filesystem, inside, prefix = _store(url)
    info = filesystem.get_file_info(inside)
    if info.is_file:
        return [url]
    if info.type != fs.FileType.Directory:
        return []
    entries = filesystem.get_file_info(fs.FileSelector(inside, recursive=True))
    return sorted(prefix + entry.path for entry in entries if entry.is_file
                  and not any(part.startswith(".") for part in entry.path[len(inside):].split("/")))


def local_copy(source: str, cache: Path | None = None) -> str:
    """``source`` itself for a local path; for a URL, a copy in this machine's cache (made once per object
    version, written to a temporary file and renamed)."""
    if not is_url(source):
        return source
    import tempfile

    cache = Path(cache or Path(tempfile.gettempdir()) / "ferkit-objects")
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{source}|{file_identity(source)}".encode()).hexdigest()[:20]
    copy = cache / f"{key}{Path(source).suffix.lower()}"
    if not copy.exists():
        filesystem, inside, _ = _store(source)
        with atomic_path(copy) as temporary, filesystem.open_input_stream(inside) as stream, \
                open(temporary, "wb") as out:
            while block := stream.read(8 * 2**20):
                out.write(block)
    return str(copy)


def find_recordings(inputs, leave_out: Path | None = None) -> tuple[list[Recording], list[tuple[str, str]]]:
    """Recordings in ``inputs`` (videos, photos, folders searched recursively, manifest .csv files with a
    ``path`` column, relative to the CSV), in order, each once; with the inputs passed over and why."""
    found, passed, seen = [], [], set()

    def add(path: Path | str, given_id: str | None = None) -> None:
        suffix = Path(str(path)).suffix.lower()
        kind = "video" if suffix in VIDEO_SUFFIXES else "photo" if suffix in IMAGE_SUFFIXES else None
        source = str(path) if is_url(str(path)) else str(Path(path).resolve())
        if kind is None:
            passed.append((str(path), "not a video or photo ferkit reads"))
        elif (key := source if is_url(source) else os.path.realpath(path)) not in seen:
            seen.add(key)
            found.append(Recording(given_id or recording_id(path), source, kind))

    def add_url(url: str, given_id: str | None = None) -> None:
        listed = list_url(url)
        if not listed:
            passed.append((url, "no such object or folder"))
        for item in listed:
            if len(listed) == 1 or Path(item).suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                add(item, given_id if len(listed) == 1 else None)

    for text in map(str, inputs):
        if is_url(text):
            add_url(text)
            continue
        given = Path(text)
        if given.is_dir():
            for folder, names, files in os.walk(given, followlinks=False):
                names[:] = sorted(n for n in names if not n.startswith(".")
                                  and not (leave_out and Path(folder, n).resolve() == leave_out.resolve()))
                for name in sorted(files):
                    path = Path(folder, name)
                    if not name.startswith(".") and path.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES:
                        add(path)
        elif given.suffix.lower() == ".csv" and given.is_file():
            with open(given, newline="") as handle:
                for row in csv.DictReader(handle):
                    if not row.get("path"):
                        raise ValueError(f"{given}: a manifest needs a 'path' column (and may have 'recording')")
                    given_id = (row.get("recording") or "").strip() or None
                    if is_url(row["path"]):
                        add_url(row["path"], given_id)
                    else:
                        add(given.parent / row["path"], given_id)
        elif given.exists():
            add(given)
        else:
            passed.append((str(given), "no such file or folder"))
    ids = Counter(r.id for r in found)
    if any(count > 1 for count in ids.values()):
        raise ValueError(f"two inputs share the recording name {next(i for i, c in ids.items() if c > 1)!r}")
    return found, passed


def plan_video(recording: Recording, settings: Settings, max_pixels: int | None) -> dict:
    """Every frame's time, the frames to analyse and the chunks (JSON-ready): one decoding pass, no analysis."""
    times, opened = video.frame_times(local_copy(recording.source), max_pixels)
    analysed = video.sampled_frames(times, settings.stride, settings.fps)
    chunks = video.chunk_ranges(times, analysed, settings.chunk_seconds, settings.overlap_seconds,
                                warm_up_frames())
    gaps = [times[b] - times[a] for a, b in zip(analysed, analysed[1:])]
    return {"times": times, "analysed": analysed, "chunks": [asdict(c) for c in chunks], "fps": opened.fps,
            "width": opened.width, "height": opened.height,
            "frame_seconds": sorted(gaps)[len(gaps) // 2] if gaps else 1 / opened.fps}


def plan_photo() -> dict:
    return {"times": [0.0], "analysed": [0], "chunks": [asdict(video.Chunk(0, 0, 1, 0))], "fps": None,
            "frame_seconds": 1.0}


_PREDICTORS: dict = {}


def cached_predictor(settings: Settings, max_pixels: int | None):
    """One Predictor per worker process and settings: the model loads once per worker, not once per chunk."""
    from ferkit.prediction import Predictor  # keras loads with it: only workers need it

    key = (settings.model, settings.detector, settings.tta, settings.align, settings.min_face_score, max_pixels)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = Predictor(settings.model, detector=settings.detector, tta=settings.tta,
                                     min_face_score=settings.min_face_score, max_pixels=max_pixels,
                                     align=settings.align)
    return _PREDICTORS[key]


def analyse_chunk(recording: Recording, chunk: dict, plan: dict, settings: Settings,
                  max_pixels: int | None = None) -> dict:
    """Analyse one chunk: {"rows": DataFrame (predict's columns, detection_score, and ``warm``: a row of the
    warm-up before the chunk's first frame), "frames": frames read, "analysed": frames analysed, "timings":
    seconds per stage}."""
    import pandas as pd

    started = time.perf_counter()
    timings = {"load": 0.0, "decode": 0.0, "detect": 0.0, "classify": 0.0}
    predictor = cached_predictor(settings, max_pixels)
    timings["load"] = time.perf_counter() - started
    columns = video.table_columns(predictor.class_names)
    rows, frames_read, times = [], 0, plan["times"]
    if recording.kind == "photo":
        result = predictor.predict(local_copy(recording.source))
        for number, face in enumerate(result.faces):
            face.face_id = number
            rows.append({**video.face_row(0, 0.0, face), "detection_score": face.detection_score, "warm": False})
        frames_read = 1
    else:
        wanted = set(plan["analysed"])
        tracker = Tracker()
        reading = video.read_frames(local_copy(recording.source), chunk["warm_first"], chunk["end"], times, wanted)
        while True:
            tick = time.perf_counter()
            item = next(reading, None)
            timings["decode"] += time.perf_counter() - tick
            if item is None:
                break
            index, frame = item
            frames_read += 1
            for prediction in predictor.track_frame(frame, tracker, timings):
                rows.append({**video.face_row(index, times[index], prediction),
                             "detection_score": prediction.detection_score, "warm": index < chunk["first"]})
    table = pd.DataFrame(rows, columns=columns + ["detection_score", "warm"]).astype({"warm": bool})
    if settings.aggregate_only:
        table = group_rows(table[~table["warm"]], predictor.class_names, plan, chunk)
    analysed = sum(1 for i in plan["analysed"] if chunk["first"] <= i < chunk["end"])
    timings["total"] = time.perf_counter() - started
    return {"rows": table, "frames": frames_read, "analysed": analysed, "timings": timings}


def group_rows(table, class_names, plan: dict, chunk: dict):
    """``--aggregate-only``: one row per analysed frame, no per-person rows: frame, time, faces, n_<class> (faces
    with that label), p_<class> (mean probability over the faces; empty without faces)."""
    import pandas as pd

    frames = [i for i in plan["analysed"] if chunk["first"] <= i < chunk["end"]]
    grouped = table.groupby("frame")
    counts = pd.crosstab(table["frame"], table["label"]).reindex(columns=class_names, fill_value=0) \
        if len(table) else pd.DataFrame(columns=class_names)
    means = grouped[[f"p_{n}" for n in class_names]].mean()
    result = pd.DataFrame({"frame": frames, "time": [plan["times"][i] for i in frames]}).set_index("frame", drop=False)
    result["faces"] = grouped.size().reindex(result.index, fill_value=0)
    for name in class_names:
        result[f"n_{name}"] = counts[name].reindex(result.index, fill_value=0).astype("int64")
    result = result.join(means)
    return result.reset_index(drop=True)


# ---------------------------------------------------------------- the output folder


def work_folder(out: Path, recording: Recording) -> Path:
    return out / WORK / recording.id


def chunk_path(out: Path, recording: Recording, index: int) -> Path:
    return work_folder(out, recording) / f"chunk-{index:05d}.parquet"


def write_parquet(table, path: Path, metadata: dict) -> Path:
    """``table`` (pandas) as Parquet at ``path``, written to a temporary file and renamed into place, with
    ``metadata`` (JSON) in the file's schema: a file is either complete or absent, and a redone chunk
    replaces its file rather than adding rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), b"ferkit": json.dumps(metadata).encode()})
    with atomic_path(path) as temporary:
        pq.write_table(arrow, temporary)
    return path


def parquet_metadata(path: Path) -> dict | None:
    """The ``metadata`` :func:`write_parquet` kept in ``path``, or None where the file is missing or damaged."""
    import pyarrow.parquet as pq

    try:
        return json.loads((pq.read_schema(path).metadata or {})[b"ferkit"])
    except (OSError, KeyError, ValueError):
        return None


def read_plan(out: Path, recording: Recording, fingerprint: str) -> dict | None:
    """The plan kept from an earlier run, if it was made with the same fingerprint."""
    path = work_folder(out, recording) / "plan.json"
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return plan if plan.get("fingerprint") == fingerprint else None


def write_plan(out: Path, recording: Recording, plan: dict, fingerprint: str) -> None:
    with atomic_path(work_folder(out, recording) / "plan.json") as temporary:
        temporary.write_text(json.dumps({**plan, "fingerprint": fingerprint}))


def stitch(chunks: list, columns: list[str]):
    """One table from a recording's chunk tables (in order), with one id per person across chunks.

    Each chunk's warm-up rows are the same detections as rows of the chunks before (same frame, same box):
    each of its ids takes the id it shares most rows with there; the others are new people. Ids are then
    numbered in order of first appearance, which is how ``predict``'s single tracker numbers them.
    """
    import pandas as pd

    done, next_id = [], 0
    known: dict[tuple, int] = {}  # (frame, x, y, width, height) -> global id
    for table in chunks:
        table = table.astype({"warm": bool})  # an empty chunk's column would not select rows
        votes: dict[int, Counter] = {}
        for row in table[table["warm"]].itertuples(index=False):
            match = known.get((row.frame, row.x, row.y, row.width, row.height))
            if match is not None:
                votes.setdefault(row.face_id, Counter())[match] += 1
        mapping = {local: counts.most_common(1)[0][0] for local, counts in votes.items()}
        own = table[~table["warm"]].copy()
        for local in own["face_id"].unique():
            if local not in mapping:
                mapping[local], next_id = next_id, next_id + 1
        own["face_id"] = own["face_id"].map(mapping)
        next_id = max([next_id, *(v + 1 for v in mapping.values())])
        known.update(zip(zip(own["frame"], own["x"], own["y"], own["width"], own["height"]), own["face_id"]))
        done.append(own)
    table = pd.concat(done, ignore_index=True) if done else pd.DataFrame(columns=columns + ["warm"])
    order = {old: new for new, old in enumerate(dict.fromkeys(table["face_id"]))}
    table["face_id"] = table["face_id"].map(order).astype("int64")
    return table[columns].reset_index(drop=True)
