"""The web server's video jobs: uploaded videos annotated with ferkit's video pipeline, one at a time.

A job moves through queued -> running -> done, failed or cancelled. Only a
few may wait (:data:`MAX_WAITING_JOBS`; one more is refused with
:class:`QueueFull`), their uploads and outputs stay within a disk budget
(:data:`MAX_WORK_BYTES`, checked by ``ferkit.server`` as uploads arrive), and
finished jobs and their files are forgotten after :data:`JOB_TTL_SECONDS`.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ferkit.plots import plot_emotion_timeline
from ferkit.prediction import Predictor
from ferkit.video import write_video_table
from ferkit.web_security import video_suffix

#: Jobs that may wait behind the running one; one more upload gets 429.
MAX_WAITING_JOBS = 3
#: Disk the video jobs may take: their uploads and outputs together (an upload beyond it gets 413).
MAX_WORK_BYTES = 2 * 2**30
#: Seconds a finished (done, failed, cancelled) job and its files are kept.
JOB_TTL_SECONDS = 3600

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    pass


class QueueFull(Exception):
    pass


@dataclass
class VideoJob:
    id: str
    folder: Path
    filename: str  # as shown: cleaned by safe_filename, never part of a path
    source: Path  # the upload, inside folder
    model: str = ""  # the name of the model that annotates it (one of VideoJobs.models)
    status: str = "queued"  # queued, running, done, failed, cancelled
    frames_done: int = 0
    frames_total: int | None = None
    error: str = ""
    faces_total: int = 0  # distinct face ids in the result
    faces_plotted: int = 0  # those timeline.png shows (plot_emotion_timeline draws the first few)
    finished_at: float | None = None  # time.monotonic() when it ended: JOB_TTL_SECONDS counts from here
    cancel: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict:
        return {"id": self.id, "file": self.filename, "model": self.model, "status": self.status,
                "frames_done": self.frames_done, "frames_total": self.frames_total, "error": self.error,
                "faces_total": self.faces_total, "faces_plotted": self.faces_plotted}


class VideoJobs:
    """Annotates uploaded videos with ferkit's video pipeline: one at a time, in order, in one worker thread.

    A video job takes a CPU's worth of TensorFlow for as long as the video plays or longer; running several at
    once only makes each slower and multiplies the memory, so they wait in line, and only a few may wait.

    models: {name: model stem} the jobs may ask for (the page's model switch); the first is the default.
    """

    def __init__(self, models: dict[str, Path], root: Path, max_waiting: int = MAX_WAITING_JOBS,
                 ttl_seconds: float = JOB_TTL_SECONDS):
        self.models, self.root, self.max_waiting, self.ttl_seconds = dict(models), root, max_waiting, ttl_seconds
        self.default_model = next(iter(self.models))
        self.jobs: dict[str, VideoJob] = {}
        self.lock = threading.Lock()  # guards self.jobs and each job's status
        self.line: queue.Queue[VideoJob | None] = queue.Queue()
        self.receiving = 0  # bytes of uploads being received now (counted in the event loop only)
        self._predictor: tuple[str, Predictor] | None = None  # the last model used, kept loaded for the next job
        threading.Thread(target=self._work, daemon=True, name="ferkit-video-jobs").start()

    def waiting(self) -> int:
        return sum(job.status == "queued" for job in list(self.jobs.values()))

    def stored_bytes(self) -> int:
        """What the queued and finished jobs take on disk now (uploads being received are in self.receiving)."""
        return folder_bytes(self.root)

    def unknown_model(self, name: str | None) -> str | None:
        """Why ``name`` cannot annotate a video here (the page shows it), or None when it can (None: the default)."""
        if name is None or name in self.models:
            return None
        return f"unknown model {name!r}; this server offers {', '.join(self.models)}"

    def start(self, upload: Path, filename: str, model: str | None = None) -> VideoJob:
        """Queue an upload (moved into the job's folder) for ``model`` (a name in self.models; None: the default).

        Raises QueueFull when enough jobs wait already, ValueError for a model this server does not offer.
        """
        if reason := self.unknown_model(model):
            raise ValueError(reason)
        with self.lock:
            if self.waiting() >= self.max_waiting:
                raise QueueFull(f"{self.waiting()} videos are waiting already; try again when one is done")
            job_id = uuid.uuid4().hex[:12]
            folder = self.root / job_id
            folder.mkdir(parents=True)
            job = VideoJob(job_id, folder, filename, folder / ("input" + video_suffix(filename)),
                           model or self.default_model)
            shutil.move(str(upload), job.source)
            self.jobs[job_id] = job
        self.line.put(job)
        return job

    def _work(self) -> None:
        while (job := self.line.get()) is not None:
            with self.lock:
                if job.status != "queued":  # cancelled while waiting
                    continue
                job.status = "running"
            self._run(job)
            self.sweep()

    def _run(self, job: VideoJob) -> None:
        try:
            self.annotate(job)
            if job.cancel.is_set():  # cancelled after the last frame: the files go all the same
                raise JobCancelled
            status = "done"
        except JobCancelled:
            status = "cancelled"
            shutil.rmtree(job.folder, ignore_errors=True)
        except Exception as error:  # noqa: BLE001 - the job ends with the reason; the server keeps serving
            log.warning("video job %s (%s) failed", job.id, job.filename, exc_info=True)
            status, job.error = "failed", self.public_error(error, job)
        finally:
            job.source.unlink(missing_ok=True)
        with self.lock:
            job.status, job.finished_at = status, time.monotonic()

    def annotate(self, job: VideoJob) -> None:
        """The video pipeline on job.source: video.webm, faces.csv and timeline.png in job.folder."""
        def on_progress(done: int, total: int | None) -> None:
            job.frames_done, job.frames_total = done, total
            if job.cancel.is_set():
                raise JobCancelled

        # Only the worker thread gets here: no lock. One model stays loaded: jobs mostly ask for the same one.
        if self._predictor is None or self._predictor[0] != job.model:
            self._predictor = None  # the previous model's memory goes before the next one loads
            self._predictor = (job.model, Predictor(self.models[job.model]))
        table = self._predictor[1].predict_video(job.source, job.folder / "video.webm", progress=False,
                                                 on_progress=on_progress)
        write_video_table(table, job.folder / "faces.csv")
        figure = plot_emotion_timeline(table, job.folder / "timeline.png")
        job.faces_total = int(table["face_id"].nunique()) if len(table) else 0
        # The panels drawn (one per face shown, or one saying "no face"): the page says "showing k of n".
        job.faces_plotted = min(job.faces_total, len(figure.axes))
        figure.clf()  # a server makes many plots: free this one's drawing now

    def public_error(self, error: Exception, job: VideoJob) -> str:
        """The reason as the page shows it: the upload by its own name, no path on this machine.

        The job's own files go by their names, anything else under the server's work folder or the system's
        temporary folder as "(server)".
        """
        message = (str(error) or type(error).__name__).replace(str(job.source), job.filename)
        message = message.replace(str(job.folder) + os.sep, "").replace(str(self.root.parent), "(server)")
        return message.replace(tempfile.gettempdir(), "(server)")

    def cancel(self, job_id: str) -> VideoJob | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None:
                job.cancel.set()  # a running job stops at its next frame (_run)
                if job.status != "running":  # no thread will touch its files again
                    job.status, job.finished_at = "cancelled", job.finished_at or time.monotonic()
                    shutil.rmtree(job.folder, ignore_errors=True)
        return job

    def sweep(self) -> None:
        """Forget the jobs finished over ttl_seconds ago, and remove their files."""
        now = time.monotonic()
        with self.lock:
            expired = [job for job in self.jobs.values()
                       if job.finished_at is not None and now - job.finished_at >= self.ttl_seconds]
            for job in expired:
                del self.jobs[job.id]
        for job in expired:
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        self.line.put(None)
        shutil.rmtree(self.root, ignore_errors=True)


def folder_bytes(folder: Path) -> int:
    """The size of the files under folder (files removed meanwhile count as nothing)."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.stat(os.path.join(parent, name)).st_size
            except OSError:
                pass
    return total
