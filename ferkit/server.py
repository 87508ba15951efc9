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
    GET    /models/{name}.onnx       a model, exported to ONNX on start-up (float16 weights, float arithmetic)
    GET    /models/{name}.int8.onnx  its int8 copy for the Live view, where one was made from its current weights
    GET    /models/yunet.onnx        the face detector, with free input size
    POST   /api/videos?model=NAME    upload a video (the request body) for a model (default: the first); 202 {"id": ...}
    GET    /api/videos/{id}          {"status", "model", "frames_done", "frames_total", "error", "faces_total", ...}
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

import json
import shutil
import sys
import tempfile
import threading
import webbrowser
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ferkit import files
from ferkit.export import export_onnx
from ferkit.faces import YUNET_MODEL, checked_yunet_model
from ferkit.images import MAX_IMAGE_PIXELS
from ferkit.model import ModelMeta, resolve_model
from ferkit.quantize import LIVE_SUFFIX, live_copy, live_path, read_metadata
from ferkit.settings import page_settings
from ferkit.video_jobs import JOB_TTL_SECONDS, MAX_WAITING_JOBS, MAX_WORK_BYTES, QueueFull, VideoJobs
from ferkit.web_assets import compressed_static_files, precompress
from ferkit.web_security import (EVERY_INTERFACE, LOOPBACK_HOSTS, STATE_CHANGING, cross_site_reason, host_checker,
                                 safe_filename, sniff_video)

# starlette, uvicorn and onnx are imported where the app is made or a model exported: the command line imports
# this module for its limits, and must start fast.

WEB = Path(__file__).parent / "web"
#: Largest video upload accepted.
MAX_UPLOAD_BYTES = 200 * 2**20
#: The model the page starts with when the models are not named: the fastest shipped one (Live's frame rate,
#: and the smallest first load); the switch offers the others, fetched when chosen.
PAGE_DEFAULT_MODEL = "fer_lite"


def flexible_yunet(path: Path) -> Path:
    """YuNet with a free input height and width (the shipped file fixes 640x640; the graph itself does not)."""
    import onnx

    checked_yunet_model()  # the checksum: never serve a damaged detector
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
    live: dict = field(default_factory=dict)  # index.json's live_* fields: the Live view's int8 copy, where served


def prepare_models(names: list[str] | None, folder: Path) -> list[ModelEntry]:
    """Export each model (default: the shipped ``fer``, plus ``fer_lite`` if present) and YuNet into ``folder``."""
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
        # float16 weights: half the download, accuracy unchanged (docs/experiments/page-speed.md)
        onnx_path = export_onnx(stem, folder / f"{label}.onnx", float16_weights=True)
        entries.append(ModelEntry(label, stem, meta, onnx_path, _model_info(stem, meta, onnx_path),
                                  _live_copy(stem, folder / f"{label}{LIVE_SUFFIX}")))
    flexible_yunet(folder / "yunet.onnx")
    return entries


def _live_copy(stem: Path, target: Path) -> dict:
    """Copy the model's int8 copy (ferkit.quantize) to ``target`` where it was made from the model's current
    weights, and return index.json's live_* fields for it; else {} (the Live view runs the float model), with one
    line on stderr saying why where a copy lies beside the model but cannot be used."""
    source, why = live_copy(stem)
    if source is None:
        if live_path(stem).exists():  # a copy that cannot be used is worth a word; no copy is the usual case
            print(f"ferkit: {stem.name}: the Live view runs the float model ({why})", file=sys.stderr)
        return {}
    shutil.copyfile(source, target)
    try:
        scores = json.loads(read_metadata(target).get("ferkit.public_test", "{}"))
    except ValueError:  # the scores are shown, not needed: the copy is served without them
        scores = {}
    live = {"live_url": f"models/{target.name}", "live_megabytes": round(target.stat().st_size / 2**20, 1)}
    if "int8" in scores:
        live["live_accuracy"] = {"PublicTest": scores["int8"], "PublicTest_float": scores.get("float")}
    return live


def _model_info(stem: Path, meta: ModelMeta, onnx_path: Path) -> dict:
    """What the model switch shows: parameters, size, and the accuracy measured for it, where recorded."""
    import onnx
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


def default_model(named: list[str] | None, entries: list[ModelEntry]) -> str:
    """The model the page starts with: PAGE_DEFAULT_MODEL where the models were not named and it is served,
    else the first."""
    served = [e.name for e in entries]
    return PAGE_DEFAULT_MODEL if not named and PAGE_DEFAULT_MODEL in served else served[0]


def models_index(entries: list[ModelEntry], default: str | None = None) -> dict:
    """``models/index.json``: everything the page needs to run each model, and to colour and label faces."""
    settings = page_settings()
    return {
        "default_model": default or entries[0].name,
        # The vocabulary (ferkit.settings): the search Predictor.predict makes, for pipeline.js
        # (ferkit.faces.detect_faces), the tracking of the video path, colours and file types.
        **settings,
        "detector": {**settings["detector"], "url": "models/yunet.onnx"},
        "max_image_pixels": MAX_IMAGE_PIXELS,  # photos over this are refused, as `--max-pixels` refuses them
        "models": [{"name": e.name, "url": f"models/{e.name}.onnx", "class_names": e.meta.class_names,
                    "input_size": e.meta.input_size, "face_margin": e.meta.face_margin,
                    "face_offset": e.meta.face_offset, "face_align": e.meta.face_align,
                    "face_low_contrast": e.meta.face_low_contrast, **e.info, **e.live}
                   for e in entries],
    }


def write_static_site(folder: str | Path, models: list[str] | None = None) -> Path:
    """``python -m ferkit export-web DIR``: the page, the runtime and the models, for any static host."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise files.OutputError(f"{folder}: not empty; give a new or empty folder for the static site")
    shutil.copytree(WEB, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sh"))
    entries = prepare_models(models, folder / "models")
    files.write_text(folder / "models" / "index.json",
                     json.dumps(models_index(entries, default_model(models, entries)), indent=2))
    precompress(folder)  # NAME.gz beside each file, for hosts that serve precompressed files
    return folder


# ----------------------------------------------------------------------------
# The app


def create_app(models: list[str] | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES, work_dir: Path | None = None,
               *, allowed_hosts: Iterable[str] = LOOPBACK_HOSTS, max_waiting_jobs: int = MAX_WAITING_JOBS,
               max_work_bytes: int = MAX_WORK_BYTES, job_ttl_seconds: float = JOB_TTL_SECONDS):
    """The Starlette app: the page, ``models/``, and the video API (see the module docstring).

    allowed_hosts: the host names (or addresses) requests may name in their Host header; 0.0.0.0 or :: among
    them admits any IP address and this machine's name (see host_checker).
    """
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.requests import ClientDisconnect
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route

    work = Path(work_dir or tempfile.mkdtemp(prefix="ferkit-serve-"))
    entries = prepare_models(models, work / "models")
    files.write_text(work / "models" / "index.json",
                     json.dumps(models_index(entries, default_model(models, entries)), indent=2))
    precompress(WEB, work / "compressed" / "web")  # once, not per request (ferkit.web_assets)
    precompress(work / "models", work / "compressed" / "models")
    jobs = VideoJobs({e.name: e.stem for e in entries}, work / "videos", max_waiting_jobs, job_ttl_seconds)
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
        model = request.query_params.get("model")  # the page's model switch; none: the first model
        if reason := jobs.unknown_model(model):
            return error(400, reason)
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
            job = jobs.start(Path(temporary), filename, model)
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
        Mount("/models", compressed_static_files(work / "models", work / "compressed" / "models")),
        Mount("/", compressed_static_files(WEB, work / "compressed" / "web", html=True)),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard), Middleware(Isolation)], lifespan=lifespan)
    app.state.jobs, app.state.work, app.state.entries = jobs, work, entries
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[str] | None = None, open_browser: bool = True,
          *, max_upload_bytes: int = MAX_UPLOAD_BYTES, max_waiting_jobs: int = MAX_WAITING_JOBS,
          max_work_bytes: int = MAX_WORK_BYTES, job_ttl_seconds: float = JOB_TTL_SECONDS) -> None:
    """Run the app with uvicorn until interrupted; it answers to the loopback names and to ``host``."""
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
