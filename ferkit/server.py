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
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ferkit import files
from ferkit.faces import (CONFIRMED_SCORE_DISCOUNT, DETECT_MAX_PIXELS, MIN_FACE_SCORE, UPSCALE_SEARCH_MIN_FACE,
                          YUNET_MODEL, YUNET_SCORE_FLOOR,
                          _checked_yunet_model)
from ferkit.model import ModelMeta, resolve_model

WEB = Path(__file__).parent / "web"
#: Largest video upload accepted.
MAX_UPLOAD_BYTES = 200 * 2**20
#: What an upload's first bytes must look like: (offset, signature, format).
VIDEO_SIGNATURES = ((4, b"ftyp", "MP4/MOV"), (0, b"\x1aE\xdf\xa3", "WebM/MKV"), (8, b"AVI ", "AVI"))


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
    metrics = stem.parent / "results" / "metrics.json"
    if metrics.exists():
        recorded = json.loads(metrics.read_text())
        if Path(recorded.get("model", "")).name == stem.name:
            info["accuracy"] = {split: recorded[split]["accuracy"] for split in ("PublicTest", "PrivateTest")
                                if split in recorded}
    return info


def models_index(entries: list[ModelEntry]) -> dict:
    """``models/index.json``: everything the page needs to run each model, and to colour and label faces."""
    from ferkit.prediction import EMOTION_COLORS

    return {
        # The search Predictor.predict makes, for pipeline.js (ferkit.faces.detect_faces).
        "detector": {"url": "models/yunet.onnx", "min_face_score": MIN_FACE_SCORE, "max_pixels": DETECT_MAX_PIXELS,
                     "upscale_search_min_face": UPSCALE_SEARCH_MIN_FACE,
                     "confirmed_score_discount": CONFIRMED_SCORE_DISCOUNT, "score_floor": YUNET_SCORE_FLOOR},
        "colors": {name: f"rgb({r},{g},{b})" for name, (b, g, r) in EMOTION_COLORS.items()},
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


@dataclass
class VideoJob:
    id: str
    folder: Path
    filename: str
    status: str = "queued"  # queued, running, done, failed, cancelled
    frames_done: int = 0
    frames_total: int | None = None
    error: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict:
        return {"id": self.id, "file": self.filename, "status": self.status, "frames_done": self.frames_done,
                "frames_total": self.frames_total, "error": self.error}


class VideoJobs:
    """Annotates uploaded videos one at a time in a background thread, with ferkit's video pipeline."""

    def __init__(self, model: Path, root: Path):
        self.model, self.root = model, root
        self.jobs: dict[str, VideoJob] = {}
        self.lock = threading.Lock()
        self._predictor = None

    def predictor(self):
        with self.lock:
            if self._predictor is None:
                from ferkit.prediction import Predictor

                self._predictor = Predictor(self.model)
            return self._predictor

    def start(self, upload: Path, filename: str) -> VideoJob:
        job_id = uuid.uuid4().hex[:12]
        folder = self.root / job_id
        folder.mkdir(parents=True)
        source = folder / ("input" + (Path(filename).suffix.lower() or ".mp4"))
        shutil.move(str(upload), source)
        job = VideoJob(job_id, folder, filename)
        self.jobs[job_id] = job
        threading.Thread(target=self._run, args=(job, source), daemon=True, name=f"video-{job_id}").start()
        return job

    def _run(self, job: VideoJob, source: Path) -> None:
        from ferkit.plots import plot_emotion_timeline
        from ferkit.prediction import write_video_table

        job.status = "running"

        def on_progress(done: int, total: int | None) -> None:
            job.frames_done, job.frames_total = done, total
            if job.cancel.is_set():
                raise JobCancelled

        try:
            table = self.predictor().predict_video(source, job.folder / "video.webm", progress=False,
                                                   on_progress=on_progress)
            write_video_table(table, job.folder / "faces.csv")
            plot_emotion_timeline(table, job.folder / "timeline.png")
            job.status = "done"
        except JobCancelled:
            job.status = "cancelled"
            shutil.rmtree(job.folder, ignore_errors=True)
        except Exception as error:  # noqa: BLE001 - the job ends with the reason; the server keeps serving
            job.status, job.error = "failed", str(error) or type(error).__name__
        finally:
            source.unlink(missing_ok=True)

    def cancel(self, job_id: str) -> VideoJob | None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.cancel.set()
            if job.status in ("done", "failed"):
                job.status = "cancelled"
                shutil.rmtree(job.folder, ignore_errors=True)
        return job

    def close(self) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        shutil.rmtree(self.root, ignore_errors=True)


def sniff_video(head: bytes) -> str | None:
    """The container format the first bytes announce, or None."""
    for offset, signature, kind in VIDEO_SIGNATURES:
        if head[offset:offset + len(signature)] == signature:
            return kind
    return None


# ----------------------------------------------------------------------------
# The app


def create_app(models: list[str] | None = None, max_upload_bytes: int = MAX_UPLOAD_BYTES, work_dir: Path | None = None):
    """The Starlette app: the page, ``models/``, and the video API (see the module docstring)."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    work = Path(work_dir or tempfile.mkdtemp(prefix="ferkit-serve-"))
    entries = prepare_models(models, work / "models")
    files.write_text(work / "models" / "index.json", json.dumps(models_index(entries), indent=2))
    jobs = VideoJobs(entries[0].stem, work / "videos")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def upload_video(request):
        declared = int(request.headers.get("content-length") or 0)
        if declared > max_upload_bytes:
            return error(413, f"the video is {declared / 2**20:.0f} MiB; the limit is {max_upload_bytes / 2**20:.0f} MiB")
        filename = Path(request.headers.get("x-filename") or "video.mp4").name
        (work / "uploads").mkdir(exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=work / "uploads")
        received, head = 0, b""
        with open(handle, "wb") as out:
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_upload_bytes:
                    out.close()
                    Path(temporary).unlink(missing_ok=True)
                    return error(413, f"the video is over the limit of {max_upload_bytes / 2**20:.0f} MiB")
                if len(head) < 16:
                    head += chunk[:16]
                out.write(chunk)
        if sniff_video(head) is None:
            Path(temporary).unlink(missing_ok=True)
            return error(415, f"{filename}: not a video; expected MP4, MOV, WebM, MKV or AVI")
        job = jobs.start(Path(temporary), filename)
        return JSONResponse(job.as_dict(), status_code=202)

    def find(request):
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
    app = Starlette(routes=routes, middleware=[Middleware(Isolation)], lifespan=lifespan)
    app.state.jobs, app.state.work, app.state.entries = jobs, work, entries
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[str] | None = None, open_browser: bool = True) -> None:
    """Run the app with uvicorn until interrupted."""
    import sys
    import webbrowser

    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the page and upload videos",
              file=sys.stderr)
    app = create_app(models)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    print(f"ferkit: {url} (Ctrl+C stops)", file=sys.stderr)
    if open_browser:
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
