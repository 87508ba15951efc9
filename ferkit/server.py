"""``python -m ferkit serve``: the web page, its models as ONNX, and annotated videos.

The page (ferkit/web) runs face detection and classification itself, in
ONNX Runtime Web: camera frames and photos never leave the browser. The
server only hands out files (the page, the vendored runtime, the models
exported to ONNX) and, for the Video view, annotates an uploaded video with
ferkit's own video pipeline (tracking, smoothing) in a background job.

Routes (all relative, so the same page works from a static folder,
``python -m ferkit export-web``, minus the video API):

    GET    /                         the page (ferkit/web/index.html) and its files
    GET    /models/index.json        the models offered: class names, crop settings, accuracy, size
    GET    /models/{name}.onnx       a model, exported to ONNX on start-up
    GET    /models/yunet.onnx        the face detector, with free input size
    POST   /api/videos               upload a video (the request body); 202 {"id": ...}
    GET    /api/videos/{id}          {"status", "frames_done", "frames_total", "error"}
    GET    /api/videos/{id}/video.webm, /faces.csv, /timeline.png
    DELETE /api/videos/{id}          cancel the job, remove its files

The server answers only to the host names it was started for (a page on
another site that rebinds its DNS name to 127.0.0.1 gets 400), takes state
changes (POST, PUT, PATCH, DELETE) only from its own pages (403 otherwise),
runs one video job at a time with a few waiting (429 beyond), keeps uploads and
outputs within a disk budget (413) and forgets finished jobs after an hour.
docs/web-app.md has the threat model.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import unquote, urlsplit

from ferkit import files
from ferkit.faces import (CONFIRMED_SCORE_DISCOUNT, DETECT_MAX_PIXELS, MIN_FACE_SCORE, UPSCALE_SEARCH_MIN_FACE,
                          YUNET_MODEL, YUNET_SCORE_FLOOR,
                          _checked_yunet_model)
from ferkit.model import ModelMeta, resolve_model

WEB = Path(__file__).parent / "web"
#: Largest video upload accepted.
MAX_UPLOAD_BYTES = 200 * 2**20
#: Jobs that may wait behind the running one; one more upload gets 429.
MAX_WAITING_JOBS = 3
#: Disk the video jobs may take: their uploads and outputs together (an upload beyond it gets 413).
MAX_WORK_BYTES = 2 * 2**30
#: Seconds a finished (done, failed, cancelled) job and its files are kept.
JOB_TTL_SECONDS = 3600
#: Host names the server answers to by default: this machine's loopback only.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Listening on these means every interface: any IP address and the machine's name are then this server.
EVERY_INTERFACE = ("0.0.0.0", "::")
#: Methods that change something: only the server's own pages may send them.
STATE_CHANGING = ("POST", "PUT", "PATCH", "DELETE")
#: Longest upload name shown (a longer one is cut in its stem).
MAX_FILENAME_CHARS = 100
#: What an upload's first bytes must look like: (offset, signature, format).
VIDEO_SIGNATURES = ((4, b"ftyp", "MP4/MOV"), (0, b"\x1aE\xdf\xa3", "WebM/MKV"), (8, b"AVI ", "AVI"))

log = logging.getLogger(__name__)


def flexible_yunet(path: Path) -> Path:
    """YuNet with a free input height and width (the shipped file fixes 640x640; the graph itself does not)."""
    import onnx

    _checked_yunet_model()  # the checksum: never serve a damaged detector
    model = onnx.load(str(YUNET_MODEL))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "anchors"
    del model.graph.value_info[:]  # intermediate shapes recorded for 640x640; ONNX Runtime infers them
    return files.write_bytes(path, model.SerializeToString())


@dataclass
class ModelEntry:
    """One model the page can switch to."""

    name: str
    stem: Path
    meta: ModelMeta
    onnx: Path
    info: dict = field(default_factory=dict)


def prepare_models(names: list[str] | None, folder: Path) -> list[ModelEntry]:
    """Export each model (default: the shipped ``fer``, plus ``fer_lite`` if present) and YuNet into ``folder``."""
    from ferkit.export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    if not names:
        names = ["fer"] + (["fer_lite"] if resolve_model("fer_lite").with_suffix(".json").exists() else [])
    entries = []
    for name in names:
        stem = resolve_model(name)
        label = stem.name
        if label in [e.name for e in entries] or label == "yunet":
            raise ValueError(f"{name}: two models named {label!r}; give each model a distinct file name")
        meta_path = stem.with_name(stem.name + ".meta.json")
        meta = ModelMeta.read(meta_path) if meta_path.exists() else ModelMeta()
        onnx_path = export_onnx(stem, folder / f"{label}.onnx")
        entries.append(ModelEntry(label, stem, meta, onnx_path, _model_info(stem, meta, onnx_path)))
    flexible_yunet(folder / "yunet.onnx")
    return entries


def _model_info(stem: Path, meta: ModelMeta, onnx_path: Path) -> dict:
    """What the model switch shows: parameters, size, and the accuracy measured for it, where recorded."""
    import onnx
    import numpy as np
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    parameters = int(sum(np.prod(numpy_helper.to_array(t).shape) for t in graph.initializer))
    info = {"parameters": parameters, "onnx_megabytes": round(onnx_path.stat().st_size / 2**20, 1),
            "architecture": meta.architecture}
    accuracy = recorded_accuracy(stem)
    return {**info, "accuracy": accuracy} if accuracy else info


def recorded_accuracy(stem: Path) -> dict:
    """The PublicTest and PrivateTest accuracy recorded for the model at ``stem``, or {} where none is.

    Read from NAME.metrics.json beside the model (the shipped models carry
    theirs, in a wheel too), else the results/metrics.json that ``python -m
    ferkit evaluate`` writes in the model's folder. A record that cannot be
    read (damaged, a FIFO, not about this model) is named on stderr and
    skipped: the page then shows no accuracy, and the server still starts.
    """
    import sys

    for metrics in (stem.with_name(stem.name + ".metrics.json"), stem.parent / "results" / "metrics.json"):
        if not (metrics.exists() or metrics.is_symlink()):
            continue
        try:
            recorded = json.loads(files.read_text(metrics, "metrics file", 16 * 2**20))
            if Path(recorded.get("model", "")).name == stem.name:
                return {split: float(recorded[split]["accuracy"]) for split in ("PublicTest", "PrivateTest")
                        if split in recorded}
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            print(f"warning: {metrics}: unreadable ({type(error).__name__}: {error}); the page shows no accuracy "
                  f"for {stem.name}", file=sys.stderr)
    return {}


def models_index(entries: list[ModelEntry]) -> dict:
    """``models/index.json``: everything the page needs to run each model, and to colour and label faces."""
    from ferkit.prediction import EMOTION_COLORS, TRACKING

    return {
        # The search Predictor.predict makes, for pipeline.js (ferkit.faces.detect_faces).
        "detector": {"url": "models/yunet.onnx", "min_face_score": MIN_FACE_SCORE, "max_pixels": DETECT_MAX_PIXELS,
                     "upscale_search_min_face": UPSCALE_SEARCH_MIN_FACE,
                     "confirmed_score_discount": CONFIRMED_SCORE_DISCOUNT, "score_floor": YUNET_SCORE_FLOOR},
        "colors": {name: f"rgb({r},{g},{b})" for name, (b, g, r) in EMOTION_COLORS.items()},
        "tracking": TRACKING,
        "models": [{"name": e.name, "url": f"models/{e.name}.onnx", "class_names": e.meta.class_names,
                    "input_size": e.meta.input_size, "face_margin": e.meta.face_margin,
                    "face_offset": e.meta.face_offset, "face_align": e.meta.face_align,
                    "face_low_contrast": e.meta.face_low_contrast, **e.info}
                   for e in entries],
    }


def write_static_site(folder: str | Path, models: list[str] | None = None) -> Path:
    """``python -m ferkit export-web DIR``: the page, the runtime and the models, for any static host."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise files.OutputError(f"{folder}: not empty; give a new or empty folder for the static site")
    shutil.copytree(WEB, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sh"))
    entries = prepare_models(models, folder / "models")
    files.write_text(folder / "models" / "index.json", json.dumps(models_index(entries), indent=2))
    return folder


# ----------------------------------------------------------------------------
# Video jobs


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
    status: str = "queued"  # queued, running, done, failed, cancelled
    frames_done: int = 0
    frames_total: int | None = None
    error: str = ""
    finished_at: float | None = None  # time.monotonic() when it ended: JOB_TTL_SECONDS counts from here
    cancel: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict:
        return {"id": self.id, "file": self.filename, "status": self.status, "frames_done": self.frames_done,
                "frames_total": self.frames_total, "error": self.error}


class VideoJobs:
    """Annotates uploaded videos with ferkit's video pipeline: one at a time, in order, in one worker thread.

    A video job takes a CPU's worth of TensorFlow for as long as the video plays or longer; running several at
    once only makes each slower and multiplies the memory, so they wait in line, and only a few may wait.
    """

    def __init__(self, model: Path, root: Path, max_waiting: int = MAX_WAITING_JOBS,
                 ttl_seconds: float = JOB_TTL_SECONDS):
        self.model, self.root, self.max_waiting, self.ttl_seconds = model, root, max_waiting, ttl_seconds
        self.jobs: dict[str, VideoJob] = {}
        self.lock = threading.Lock()  # guards self.jobs and each job's status
        self.line: queue.Queue[VideoJob | None] = queue.Queue()
        self.receiving = 0  # bytes of uploads being received now (counted in the event loop only)
        self._predictor = None
        threading.Thread(target=self._work, daemon=True, name="ferkit-video-jobs").start()

    def waiting(self) -> int:
        return sum(job.status == "queued" for job in list(self.jobs.values()))

    def stored_bytes(self) -> int:
        """What the queued and finished jobs take on disk now (uploads being received are in self.receiving)."""
        return folder_bytes(self.root)

    def start(self, upload: Path, filename: str) -> VideoJob:
        """Queue an upload (moved into the job's folder); raises QueueFull when enough jobs wait already."""
        with self.lock:
            if self.waiting() >= self.max_waiting:
                raise QueueFull(f"{self.waiting()} videos are waiting already; try again when one is done")
            job_id = uuid.uuid4().hex[:12]
            folder = self.root / job_id
            folder.mkdir(parents=True)
            job = VideoJob(job_id, folder, filename, folder / ("input" + video_suffix(filename)))
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
        from ferkit.plots import plot_emotion_timeline
        from ferkit.prediction import Predictor, write_video_table

        def on_progress(done: int, total: int | None) -> None:
            job.frames_done, job.frames_total = done, total
            if job.cancel.is_set():
                raise JobCancelled

        if self._predictor is None:  # only the worker thread gets here: no lock
            self._predictor = Predictor(self.model)
        table = self._predictor.predict_video(job.source, job.folder / "video.webm", progress=False,
                                              on_progress=on_progress)
        write_video_table(table, job.folder / "faces.csv")
        plot_emotion_timeline(table, job.folder / "timeline.png")

    def public_error(self, error: Exception, job: VideoJob) -> str:
        """The reason as the page shows it: the upload by its own name, no path on this machine."""
        message = (str(error) or type(error).__name__).replace(str(job.source), job.filename)
        return message.replace(str(job.folder) + os.sep, "").replace(str(self.root.parent), "(server)")

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


def sniff_video(head: bytes) -> str | None:
    """The container format the first bytes announce, or None."""
    for offset, signature, kind in VIDEO_SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return kind
    return None


def safe_filename(raw: str | None, default: str = "video.mp4") -> str:
    """An upload's name as shown: percent-decoded (the page encodes it: headers carry Latin-1 only), its base
    name only, without control or format characters, at most MAX_FILENAME_CHARS (a long name loses its stem's
    end, not its suffix). It is shown and given back in download names, never used in a path."""
    name = re.split(r"[/\\]", unquote(raw or ""))[-1]
    name = "".join(c for c in name if not unicodedata.category(c).startswith("C")).strip()
    if name.strip(".") == "":
        return default
    if len(name) > MAX_FILENAME_CHARS:
        suffix = Path(name).suffix[:12]
        name = name[:MAX_FILENAME_CHARS - len(suffix) - 1] + "…" + suffix
    return name


def video_suffix(filename: str) -> str:
    """The suffix the job's input file gets (decoders guess by it as well as by content)."""
    suffix = Path(filename).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".mp4"


# ----------------------------------------------------------------------------
# Who may ask


def host_name(host: str) -> str:
    """The name in a Host header or an address: '[::1]:8000' -> '::1', 'LocalHost:80' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_checker(allowed: Iterable[str]) -> Callable[[str], bool]:
    """Whether a Host header names this server. A page whose DNS name an attacker points at 127.0.0.1 (DNS
    rebinding) sends its own name; names are therefore listed. Listening on every interface (0.0.0.0, ::),
    the machine's name and any IP address are this server too: an address cannot be rebound."""
    names = {host_name(h) for h in allowed}
    anywhere = bool(names & set(EVERY_INTERFACE))
    if anywhere:
        names.add(socket.gethostname().lower())

    def check(header: str) -> bool:
        name = host_name(header)
        if name in names or not anywhere:
            return name in names
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True

    return check


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of a URL, the default port filled in; None if it is not one."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return scheme, parts.hostname or "", parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None


def cross_site_reason(request) -> str | None:
    """Why a request comes from a page of another site, or None. Browsers send Origin (or at least Referer)
    and Sec-Fetch-Site with every POST; a client that sends none of them (curl, a script) is no web page."""
    site = request.headers.get("sec-fetch-site", "")
    if site in ("cross-site", "same-site"):  # same-site: another port or subdomain, also not this server
        return f"Sec-Fetch-Site is {site}"
    own = _origin(f"{request.url.scheme}://{request.headers.get('host', '')}")
    for header in ("origin", "referer"):
        if header in request.headers:
            value = request.headers[header]
            if own is None or _origin(value) != own:
                return f"{header.title()} {value[:100]!r} is not this server"
            return None
    return None


# ----------------------------------------------------------------------------
# The app


def create_app(models: list[str] | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES, work_dir: Path | None = None,
               *, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS, max_waiting_jobs: int = MAX_WAITING_JOBS,
               max_work_bytes: int = MAX_WORK_BYTES, job_ttl_seconds: float = JOB_TTL_SECONDS):
    """The Starlette app: the page, ``models/``, and the video API (see the module docstring).

    allowed_hosts: the host names (or addresses) requests may name in their Host header; 0.0.0.0 or :: among
    them admits any IP address and this machine's name (see host_checker).
    """
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    work = Path(work_dir or tempfile.mkdtemp(prefix="ferkit-serve-"))
    entries = prepare_models(models, work / "models")
    files.write_text(work / "models" / "index.json", json.dumps(models_index(entries), indent=2))
    jobs = VideoJobs(entries[0].stem, work / "videos", max_waiting_jobs, job_ttl_seconds)
    known_host = host_checker(allowed_hosts)

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def mib(n: int) -> str:
        return f"{n / 2**20:.0f} MiB"

    def queue_full() -> JSONResponse:
        return error(429, f"{jobs.waiting()} videos are waiting already; try again when one is done",
                     **{"Retry-After": "30"})

    def no_space(used: int) -> JSONResponse:
        return error(413, f"no space left for videos on the server ({mib(used)} of {mib(max_work_bytes)} in use); "
                          "try again once earlier jobs expire or are cancelled")

    async def upload_video(request):
        jobs.sweep()
        try:
            declared = int(request.headers.get("content-length") or 0)
        except ValueError:
            declared = -1
        if declared < 0:
            return error(400, "Content-Length is not a byte count")
        filename = safe_filename(request.headers.get("x-filename"))
        if declared > max_upload_bytes:
            return error(413, f"the video is {mib(declared)}; the limit is {mib(max_upload_bytes)}")
        if jobs.waiting() >= max_waiting_jobs:  # before the body: refuse early
            return queue_full()
        stored = jobs.stored_bytes()  # not again while streaming: a walk of the folder per chunk would cost more
        if stored + jobs.receiving + declared > max_work_bytes:
            return no_space(stored + jobs.receiving)
        (work / "uploads").mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=work / "uploads")
        received, head = 0, b""
        try:
            with open(handle, "wb") as out:
                async for chunk in request.stream():
                    received += len(chunk)
                    jobs.receiving += len(chunk)
                    if received > max_upload_bytes:
                        return error(413, f"the video is over the limit of {mib(max_upload_bytes)}")
                    if stored + jobs.receiving > max_work_bytes:
                        return no_space(stored + jobs.receiving)
                    if len(head) < 16:
                        head += chunk[:16]
                    out.write(chunk)
            if sniff_video(head) is None:
                return error(415, f"{filename}: not a video; expected MP4, MOV, WebM, MKV or AVI")
            job = jobs.start(Path(temporary), filename)
            return JSONResponse(job.as_dict(), status_code=202)
        except QueueFull:
            return queue_full()
        except ClientDisconnect:  # the client went away mid-upload: nobody reads this answer
            return Response(status_code=400)
        finally:
            jobs.receiving -= received
            Path(temporary).unlink(missing_ok=True)  # a refused or partial upload (a started one was moved)

    def find(request):
        jobs.sweep()
        return jobs.jobs.get(request.path_params["job_id"])

    async def video_status(request):
        job = find(request)
        return JSONResponse(job.as_dict()) if job else error(404, "no such video job")

    async def video_file(request):
        job, name = find(request), request.path_params["name"]
        if job is None or name not in ("video.webm", "faces.csv", "timeline.png"):
            return error(404, "no such file")
        if job.status != "done":
            return error(409, f"the job is {job.status}, not done")
        return FileResponse(job.folder / name, filename=f"{Path(job.filename).stem}_{name}")

    async def cancel_video(request):
        job = jobs.cancel(request.path_params["job_id"])
        return JSONResponse(job.as_dict()) if job else error(404, "no such video job")

    async def health(request):
        return JSONResponse({"ok": True, "video": True})

    class Guard(BaseHTTPMiddleware):
        """Answers only to this server's host names, and takes state changes only from its own pages."""

        async def dispatch(self, request, call_next):
            if not known_host(request.headers.get("host", "")):
                return error(400, "unknown Host: this server answers to the names it was started for "
                                  "(python -m ferkit serve --host)")
            if request.method in STATE_CHANGING and (reason := cross_site_reason(request)):
                return error(403, f"refused: a page of another site may not change anything here ({reason})")
            return await call_next(request)

    class Isolation(BaseHTTPMiddleware):
        """Cross-origin isolation, so ONNX Runtime Web may use threads (SharedArrayBuffer)."""

        async def dispatch(self, request, call_next):
            response = await call_next(request)
            response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
            response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
            response.headers["Cache-Control"] = "no-cache"
            return response

    @asynccontextmanager
    async def lifespan(app):
        yield
        jobs.close()
        shutil.rmtree(work, ignore_errors=True)

    routes = [
        Route("/api/health", health),
        Route("/api/videos", upload_video, methods=["POST"]),
        Route("/api/videos/{job_id}", video_status),
        Route("/api/videos/{job_id}", cancel_video, methods=["DELETE"]),
        Route("/api/videos/{job_id}/{name}", video_file),
        Mount("/models", StaticFiles(directory=work / "models")),
        Mount("/", StaticFiles(directory=WEB, html=True)),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard), Middleware(Isolation)], lifespan=lifespan)
    app.state.jobs, app.state.work, app.state.entries = jobs, work, entries
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[str] | None = None, open_browser: bool = True,
          *, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_waiting_jobs: int = MAX_WAITING_JOBS,
          max_work_bytes: int = MAX_WORK_BYTES, job_ttl_seconds: float = JOB_TTL_SECONDS) -> None:
    """Run the app with uvicorn until interrupted; it answers to the loopback names and to ``host``."""
    import sys
    import webbrowser

    import uvicorn

    if host not in LOOPBACK_HOSTS:
        print(f"warning: serving on {host}: anyone who can reach this machine can use the page and upload videos",
              file=sys.stderr)
    app = create_app(models, max_upload_bytes=max_upload_bytes, allowed_hosts=(*LOOPBACK_HOSTS, host),
                     max_waiting_jobs=max_waiting_jobs, max_work_bytes=max_work_bytes, job_ttl_seconds=job_ttl_seconds)
    shown = "127.0.0.1" if host in EVERY_INTERFACE else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    print(f"ferkit: {url} (Ctrl+C stops)", file=sys.stderr)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
