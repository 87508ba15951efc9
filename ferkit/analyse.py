"""``python -m ferkit analyse``: many recordings, spread over Ray, from a laptop's cores to a cluster.

    from ferkit.analyse import analyse
    from ferkit.recordings import Settings
    outcome = analyse(["videos/"], "analysis", Settings(fps=5))      # embedded Ray on this machine
    outcome = analyse(["videos/"], "analysis", address="auto")         # a running cluster

Ray tasks, not Ray Data: a task per video plan and per chunk, each retried by Ray when its worker or node is
lost, with one model per worker process (:func:`ferkit.recordings.cached_predictor`). The driver commits every
chunk as it arrives (a Parquet file written to a temporary name, then renamed, so a chunk redone elsewhere
replaces its file rather than adding rows), and a recording once all its chunks are in. docs/analyse.md says
why and what the outputs are.
"""

from __future__ import annotations

import argparse
import bisect
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ferkit import recordings as work
from ferkit import report
from ferkit.faces import DETECTORS
from ferkit.images import MAX_IMAGE_PIXELS
from ferkit.progress import interactive
from ferkit.recordings import Recording, Settings

# ray is imported where needed: it is an optional extra, and `predict` works without it.

#: How often Ray runs a task again after its worker or node was lost, before the recording is given up.
TASK_RETRIES = 4
#: What each worker process is told: quiet TensorFlow, one thread per task (Ray gives each task one CPU).
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
              "TF_NUM_INTEROP_THREADS": "1"}


def import_ray(embedded: bool):
    """``ray``, or a RuntimeError saying how to install it. Embedded Ray listens on the loopback address only
    (Ray's switch for single-machine clusters), so a laptop opens no port to its network."""
    if embedded and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import pyarrow  # noqa: F401 - the outputs are Parquet
        import ray
    except ImportError as error:
        raise RuntimeError(f"ferkit analyse needs Ray and pyarrow ({error.name} is missing): "
                           "pip install 'ferkit[ray]' (or pip install ray pyarrow)") from None
    return ray


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _plan_job(recording: Recording, settings: Settings, max_pixels):
    return _node_id(), work.plan_video(recording, settings, max_pixels)


def _chunk_job(recording: Recording, chunk: dict, plan: dict, settings: Settings, max_pixels):
    result = work.analyse_chunk(recording, chunk, plan, settings, max_pixels)
    return {**result, "node_id": _node_id(), "pid": os.getpid()}


@dataclass
class Outcome:
    """What a run did: recordings finished now, skipped as already finished, and failed (also in errors.csv)."""

    finished: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    passed: list[tuple[str, str]] = field(default_factory=list)  # inputs that are not recordings
    chunks: int = 0  # chunks analysed in this run
    frames: int = 0  # frames analysed in this run
    seconds: float = 0.0
    dashboard: str | None = None


class _Progress:
    """Chunks done of total, frames per second and time left, on stderr every ``every`` seconds
    (redrawn in place on a terminal, as :mod:`ferkit.progress` does)."""

    def __init__(self, enabled: bool, every: float = 10.0):
        self.enabled, self.every, self.started = enabled, every, time.monotonic()
        self.last, self.chunks, self.total_chunks, self.frames, self.total_frames = self.started, 0, 0, 0, 0

    def update(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < self.every):
            return
        self.last = now
        rate = self.frames / max(now - self.started, 1e-9)
        left = (self.total_frames - self.frames) / rate if rate > 0 else float("nan")
        line = f"analyse: {self.chunks}/{self.total_chunks} chunks, {rate:.1f} frames/s"
        if final:
            line += f" in {now - self.started:.1f} s"
        elif self.frames and left == left:  # not NaN: some frames are done
            line += f", about {left:.0f} s left"
        end = "\n" if final or not interactive() else ""
        print(("\r" if interactive() else "") + line, end=end, file=sys.stderr, flush=True)


def analyse(inputs, out, settings: Settings = Settings(), *, address: str | None = None,
            workers: int | None = None, max_pixels: int | None = MAX_IMAGE_PIXELS, retry_errors: bool = False,
            progress: bool = True, on_commit=None) -> Outcome:
    """Analyse every recording in ``inputs`` into the folder ``out``; finished work is skipped.

    ``address``: None runs Ray on this machine (``workers`` processes, default one per core); "auto" or
    "ray://host:port" or "host:port" joins a running cluster. ``on_commit(recording_id, chunk_index)`` is
    called after each chunk is committed (tests stop a node there).
    """
    out, outcome = Path(out), Outcome()
    started = time.monotonic()
    found, outcome.passed = work.find_recordings(inputs, leave_out=out)
    if not found:
        raise FileNotFoundError("no videos or photos to analyse in " + ("; ".join(
            f"{path}: {why}" for path, why in outcome.passed) if outcome.passed else ", ".join(map(str, inputs))))
    out.mkdir(parents=True, exist_ok=True)
    settings_print = settings.fingerprint()
    errors = report.read_errors(out)
    todo = []
    for recording in found:
        fingerprint = recording.fingerprint(settings_print)
        if report.finished(out, recording.id, fingerprint):
            outcome.skipped.append(recording.id)
        elif not retry_errors and errors.get(recording.id, {}).get("fingerprint") == fingerprint:
            outcome.failed[recording.id] = errors[recording.id]["error"]
        else:
            todo.append((recording, fingerprint))
    if todo:
        ray = import_ray(embedded=address is None)
        owned = not ray.is_initialized()  # a session's own ray.init() is used as it is, and left running
        if owned:
            context = ray.init(address=address, num_cpus=workers if address is None else None, log_to_driver=False,
                               runtime_env={"env_vars": WORKER_ENV},
                               **({} if address else {"include_dashboard": False}))
            outcome.dashboard = context.dashboard_url or None
        try:
            if outcome.dashboard and progress:
                print(f"Ray dashboard: http://{outcome.dashboard}", file=sys.stderr)
            _Run(ray, out, settings, max_pixels, errors, outcome, progress, on_commit).run(todo)
        finally:
            if owned:
                ray.shutdown()
    report.write_combined(out)
    outcome.seconds = time.monotonic() - started
    return outcome


class _Run:
    """One run's driver loop: submit plans and chunks, commit what comes back, finish recordings."""

    def __init__(self, ray, out: Path, settings: Settings, max_pixels, errors: dict, outcome: Outcome, progress,
                 on_commit):
        self.ray, self.out, self.settings, self.max_pixels = ray, out, settings, max_pixels
        self.errors, self.outcome, self.on_commit = errors, outcome, on_commit
        options = {"num_cpus": 1, "max_retries": TASK_RETRIES, "retry_exceptions": False}
        self.plan_task = ray.remote(**options)(_plan_job)
        self.chunk_task = ray.remote(**options)(_chunk_job)
        self.pending: dict = {}  # ObjectRef -> (recording, fingerprint, chunk index or None for a plan)
        self.plans: dict[str, dict] = {}
        self.waiting: dict[str, set[int]] = {}  # recording id -> chunks not yet committed
        self.progress = _Progress(progress)

    def run(self, todo) -> None:
        for recording, fingerprint in todo:
            self.errors.pop(recording.id, None)
            plan = work.plan_photo() if recording.kind == "photo" else \
                work.read_plan(self.out, recording, fingerprint)
            if plan is None:
                ref = self.plan_task.remote(recording, self.settings, self.max_pixels)
                self.pending[ref] = (recording, fingerprint, None)
            else:
                self._submit_chunks(recording, fingerprint, plan)
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            for ref in ready:
                recording, fingerprint, chunk = self.pending.pop(ref)
                if recording.id in self.outcome.failed:
                    continue
                try:
                    value = self.ray.get(ref)
                except (self.ray.exceptions.RayError, OSError, ValueError) as error:
                    self._fail(recording, fingerprint, "plan" if chunk is None else f"chunk {chunk}", error)
                    continue
                if chunk is None:
                    work.write_plan(self.out, recording, value[1], fingerprint)
                    self._submit_chunks(recording, fingerprint, value[1])
                else:
                    self._commit(recording, fingerprint, chunk, value)
            self.progress.update()
        self.progress.update(final=True)
        report.write_errors(self.out, self.errors)

    def _submit_chunks(self, recording: Recording, fingerprint: str, plan: dict) -> None:
        self.plans[recording.id] = plan
        self.waiting[recording.id] = set()
        plan_ref = None
        for chunk in plan["chunks"]:
            meta = work.parquet_metadata(work.chunk_path(self.out, recording, chunk["index"]))
            if meta is not None and meta.get("fingerprint") == fingerprint:
                continue  # committed by an earlier run
            plan_ref = plan_ref or self.ray.put(plan)  # sent once per recording, shared by its chunks
            ref = self.chunk_task.remote(recording, chunk, plan_ref, self.settings, self.max_pixels)
            self.pending[ref] = (recording, fingerprint, chunk["index"])
            self.waiting[recording.id].add(chunk["index"])
        self.progress.total_chunks += len(self.waiting[recording.id])
        self.progress.total_frames += sum(bisect.bisect_left(plan["analysed"], c["end"])
                                          - bisect.bisect_left(plan["analysed"], c["first"])
                                          for c in plan["chunks"] if c["index"] in self.waiting[recording.id])
        if not self.waiting[recording.id]:
            self._finish(recording, fingerprint)

    def _commit(self, recording: Recording, fingerprint: str, chunk: int, value: dict) -> None:
        meta = {"fingerprint": fingerprint, "recording": recording.id, "chunk": chunk, "node_id": value["node_id"],
                "pid": value["pid"], "frames": value["frames"], "analysed": value["analysed"],
                "timings": value["timings"]}
        work.write_parquet(value["rows"], work.chunk_path(self.out, recording, chunk), meta)
        self.outcome.chunks += 1
        self.outcome.frames += value["analysed"]
        self.progress.chunks += 1
        self.progress.frames += value["analysed"]
        self.waiting[recording.id].discard(chunk)
        if self.on_commit is not None:
            self.on_commit(recording.id, chunk)
        if not self.waiting[recording.id]:
            self._finish(recording, fingerprint)

    def _finish(self, recording: Recording, fingerprint: str) -> None:
        """All chunks are in: one table for the recording, its summaries and report, then the marker."""
        import pandas as pd

        plan = self.plans[recording.id]
        paths = [work.chunk_path(self.out, recording, c["index"]) for c in plan["chunks"]]
        metas = [work.parquet_metadata(path) for path in paths]
        tables = [pd.read_parquet(path) for path in paths]
        if self.settings.aggregate_only:
            table = pd.concat(tables, ignore_index=True)
        else:
            columns = [c for c in tables[0].columns if c != "warm"]
            table = work.stitch(tables, columns)
        report.commit_recording(self.out, recording, table, {
            "fingerprint": fingerprint, "source": recording.source, "kind": recording.kind,
            "frames": len(plan["times"]), "analysed": len(plan["analysed"]), "fps": plan.get("fps"),
            "frame_seconds": plan["frame_seconds"], "bin_seconds": self.settings.bin_seconds,
            "aggregate_only": self.settings.aggregate_only, "settings": asdict(self.settings),
            "chunks": [{k: m[k] for k in ("chunk", "node_id", "pid", "frames", "analysed", "timings")}
                       for m in metas],
            "nodes": sorted({m["node_id"] for m in metas})})
        shutil.rmtree(work.work_folder(self.out, recording), ignore_errors=True)
        self.outcome.finished.append(recording.id)

    def _fail(self, recording: Recording, fingerprint: str, stage: str, error: Exception) -> None:
        """A bad recording: its reason goes to errors.csv, its other tasks are cancelled, the job goes on."""
        cause = getattr(error, "cause", None) or error
        reason = f"{stage}: " + (" ".join(str(cause).split()) or type(cause).__name__)
        self.outcome.failed[recording.id] = reason
        self.errors[recording.id] = {"recording": recording.id, "source": recording.source, "error": reason,
                                     "fingerprint": fingerprint}
        for ref, (other, _, _) in list(self.pending.items()):
            if other.id == recording.id:
                self.ray.cancel(ref)
                del self.pending[ref]
        report.write_errors(self.out, self.errors)


# ---------------------------------------------------------------- the command line


def add_commands(commands) -> None:
    """The ``analyse`` and ``report`` subcommands, added to ``python -m ferkit``'s parser."""
    parser = commands.add_parser(
        "analyse", help="analyse many videos and photos over Ray (this machine, or a cluster) into Parquet",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Detect, track and classify every face in videos, photos, folders (searched recursively) and "
                    "manifest CSVs (a 'path' column), spread over Ray: long videos in chunks of about a minute. "
                    "Writes a Parquet dataset partitioned by recording, per-recording summaries and report "
                    "images into --out. A rerun skips finished work; changed settings or models redo it.",
        epilog="examples:\n  python -m ferkit analyse videos/ --out analysis\n"
               "  python -m ferkit analyse manifest.csv --out analysis --fps 5 --address auto\n"
               "  python -m ferkit report analysis          # summaries again from the Parquet rows\n"
               "docs/analyse.md: outputs, queries, starting a cluster")
    parser.add_argument("inputs", nargs="+", help="videos, photos, folders or manifest .csv files; paths or URLs "
                        "pyarrow opens (s3://, gs://, hdfs://, abfs://, file://)")
    parser.add_argument("--out", required=True, help="output folder (kept between runs: reruns resume)")
    parser.add_argument("--address", help="join a running Ray cluster: auto, host:port or ray://host:port "
                                          "(default: Ray on this machine only)")
    parser.add_argument("--workers", type=int, help="without --address: worker processes (default: one per core)")
    parser.add_argument("--model", help="model stem or .json/.h5 path (default: $FERKIT_MODEL, else the shipped fer)")
    parser.add_argument("--detector", default="yunet", choices=DETECTORS, help="face detector")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation")
    parser.add_argument("--align", action=argparse.BooleanOptionalAction, default=None,
                        help="level the eyes before classifying (default: the model's setting)")
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--fps", type=float,
                          help="analyse this many frames per second of video (default: every frame)")
    sampling.add_argument("--stride", type=int, default=1, help="analyse every N-th frame, as predict --stride")
    parser.add_argument("--chunk-seconds", type=float, default=60.0, help="video time per task (default: 60)")
    parser.add_argument("--overlap-seconds", type=float, default=2.0,
                        help="each chunk starts tracking this much earlier, to join its people to the chunk before's")
    parser.add_argument("--bin-seconds", type=float, default=10.0, help="time bin of the group timeline (default: 10)")
    parser.add_argument("--aggregate-only", action="store_true",
                        help="no per-person rows: per frame and per time bin group counts only")
    parser.add_argument("--retry-errors", action="store_true", help="try again the recordings in errors.csv")
    parser.add_argument("--no-progress", action="store_true", help="no progress lines")
    parser.set_defaults(func=cmd_analyse)
    report.add_command(commands)


def cmd_analyse(args) -> int:
    settings = Settings(model=args.model, detector=args.detector, tta=args.tta, align=args.align,
                        stride=args.stride if args.fps is None else 1, fps=args.fps, chunk_seconds=args.chunk_seconds,
                        overlap_seconds=args.overlap_seconds, bin_seconds=args.bin_seconds,
                        aggregate_only=args.aggregate_only)
    outcome = analyse(args.inputs, args.out, settings, address=args.address, workers=args.workers,
                      retry_errors=args.retry_errors, progress=not args.no_progress)
    for path, why in outcome.passed:
        print(f"skipped: {path}: {why}", file=sys.stderr)
    for recording, why in outcome.failed.items():
        print(f"failed: {recording}: {why}", file=sys.stderr)
    print(f"{len(outcome.finished)} recording(s) analysed ({outcome.chunks} chunks, {outcome.frames} frames, "
          f"{outcome.seconds:.1f} s), {len(outcome.skipped)} already done, {len(outcome.failed)} failed "
          f"(errors.csv); results in {args.out}/", file=sys.stderr)
    if not outcome.finished and not outcome.skipped:
        return 2
    return 1 if outcome.failed or outcome.passed else 0
