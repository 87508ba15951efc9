"""The local server against requests a browser tab on another site, a rebinding DNS name, or a careless client
would send: it refuses them with a 4xx and the reason, leaves no file behind, and runs one video job at a time.

The app here has stand-ins for the exported models and for the video pipeline (``fake_app``), so each test builds
its own app in milliseconds; tests/test_webapp.py runs the real thing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from ferkit import server  # noqa: E402
from ferkit.video_jobs import VideoJob  # noqa: E402
from ferkit.web_security import LOOPBACK_HOSTS, MAX_FILENAME_CHARS  # noqa: E402
from ferkit.model import ModelMeta  # noqa: E402

#: The first bytes of a WebM file: enough for the upload's format check.
WEBM = b"\x1aE\xdf\xa3" + b"\x00" * 60
HOST = "testserver"  # TestClient's Host header
OWN = "http://testserver"


def _fake_models(names, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fer.onnx").write_bytes(b"a stand-in")
    (folder / "yunet.onnx").write_bytes(b"a stand-in")
    return [server.ModelEntry("fer", folder / "fer", ModelMeta(), folder / "fer.onnx",
                              {"parameters": 1, "onnx_megabytes": 0.0, "architecture": "fake"})]


def fake_annotate(job: VideoJob) -> None:
    """The video pipeline's outputs, 100 bytes each, at once."""
    for name in ("video.webm", "faces.csv", "timeline.png"):
        (job.folder / name).write_bytes(b"x" * 100)


@contextmanager
def fake_app(tmp_path: Path, annotate=fake_annotate, **options):
    """``create_app`` on stand-in models, answering to TestClient's host; yields (client, app)."""
    options.setdefault("allowed_hosts", (*LOOPBACK_HOSTS, HOST))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(server, "prepare_models", _fake_models)
        app = server.create_app(work_dir=tmp_path / "work", **options)
    app.state.jobs.annotate = annotate
    with TestClient(app) as client:
        yield client, app


def wait_until_finished(client, job_id: str, seconds: float = 10) -> dict:
    for _ in range(int(seconds * 50)):
        job = client.get(f"/api/videos/{job_id}").json()
        if job.get("status") in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.02)
    raise TimeoutError(job)


def leftovers(app) -> list[Path]:
    uploads = app.state.work / "uploads"
    return list(uploads.iterdir()) if uploads.exists() else []


# ---------------------------------------------------------------------------- origin (CSRF)


def test_cross_origin_state_changes_are_refused(tmp_path):
    with fake_app(tmp_path) as (client, app):
        reply = client.post("/api/videos", content=WEBM,
                            headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
        assert reply.status_code == 403 and "evil.example" in reply.json()["error"]
        job = client.post("/api/videos", content=WEBM, headers={"Origin": OWN}).json()  # the page itself
        for headers in ({"Referer": "http://evil.example/page"}, {"Origin": "null"},
                        {"Origin": "http://testserver:8080"}, {"Origin": "https://testserver"},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                        {"Origin": OWN, "Sec-Fetch-Site": "cross-site"}):
            reply = client.delete(f"/api/videos/{job['id']}", headers=headers)
            assert reply.status_code == 403 and reply.json()["error"], headers
        for method in ("PUT", "PATCH"):
            assert client.request(method, "/api/videos", headers={"Origin": "http://evil.example"}).status_code == 403
        assert client.get("/api/videos/" + job["id"], headers={"Origin": "http://evil.example"}).status_code == 200
        # Same origin, by Origin, Referer, Sec-Fetch-Site or nothing at all (curl, scripts): accepted.
        for headers in ({"Origin": OWN, "Sec-Fetch-Site": "same-origin"}, {"Referer": OWN + "/"},
                        {"Origin": "HTTP://TestServer:80"}, {}):
            assert client.post("/api/videos", content=WEBM, headers=headers).status_code in (202, 429), headers
        assert client.delete(f"/api/videos/{job['id']}", headers={"Origin": OWN}).status_code == 200
        assert not leftovers(app)


# ---------------------------------------------------------------------------- Host (DNS rebinding)


def test_a_foreign_host_gets_400(tmp_path):
    with fake_app(tmp_path) as (client, _):
        for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "", "0.0.0.0"):
            reply = client.get("/models/index.json", headers={"Host": host})
            assert reply.status_code == 400 and "host" in reply.json()["error"].lower(), host
            assert client.post("/api/videos", content=WEBM, headers={"Host": host}).status_code == 400
        for host in ("testserver", "TESTSERVER:8000", "127.0.0.1:8000", "localhost", "[::1]:8000"):
            assert client.get("/models/index.json", headers={"Host": host}).status_code == 200, host


def test_the_default_hosts_are_loopback_and_every_interface_takes_addresses(tmp_path):
    import socket

    with fake_app(tmp_path / "a", allowed_hosts=LOOPBACK_HOSTS) as (client, _):
        assert client.get("/api/health").status_code == 400  # "testserver" is not a loopback name
        assert client.get("/api/health", headers={"Host": "localhost:8000"}).status_code == 200
    with fake_app(tmp_path / "b", allowed_hosts=(*LOOPBACK_HOSTS, "0.0.0.0")) as (client, _):
        for host in ("192.168.1.5:8000", "[fe80::1]:8000", "10.0.0.1", socket.gethostname()):
            assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
        assert client.get("/api/health", headers={"Host": "attacker.example"}).status_code == 400


def test_serve_answers_to_the_host_it_listens_on(monkeypatch):
    import uvicorn

    given = {}
    monkeypatch.setattr(server, "create_app", lambda models, **options: given.update(options) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: None)
    server.serve("myhost.lan", 8123, open_browser=False)
    assert set(given["allowed_hosts"]) == {*LOOPBACK_HOSTS, "myhost.lan"}


# ---------------------------------------------------------------------------- the job queue and its limits


def test_one_job_runs_at_a_time_and_few_may_wait(tmp_path):
    running, most, release = [0], [0], threading.Event()

    def slow(job):
        running[0] += 1
        most[0] = max(most[0], running[0])
        release.wait(10)
        fake_annotate(job)
        running[0] -= 1

    with fake_app(tmp_path, annotate=slow, max_waiting_jobs=2) as (client, app):
        first = client.post("/api/videos", content=WEBM).json()
        for _ in range(500):
            if client.get(f"/api/videos/{first['id']}").json()["status"] == "running":
                break
            time.sleep(0.01)
        replies = [client.post("/api/videos", content=WEBM, headers={"X-Filename": f"v{i}.webm"}) for i in range(5)]
        # One running, two waiting; the rest refused with the reason.
        assert [r.status_code for r in replies] == [202, 202, 429, 429, 429]
        assert "waiting" in replies[-1].json()["error"] and replies[-1].headers.get("Retry-After")
        assert threading.active_count() < 10
        release.set()
        jobs = [wait_until_finished(client, i) for i in [first["id"], *(r.json()["id"] for r in replies[:2])]]
        assert [job["status"] for job in jobs] == ["done"] * 3 and most[0] == 1
        assert client.post("/api/videos", content=WEBM).status_code == 202  # room again
        assert not leftovers(app)


def test_a_waiting_job_can_be_cancelled(tmp_path):
    release = threading.Event()
    with fake_app(tmp_path, annotate=lambda job: release.wait(10) and fake_annotate(job)) as (client, app):
        first, second = (client.post("/api/videos", content=WEBM).json() for _ in range(2))
        assert client.delete(f"/api/videos/{second['id']}").json()["status"] == "cancelled"
        assert not (app.state.jobs.root / second["id"]).exists()
        release.set()
        assert wait_until_finished(client, first["id"])["status"] == "done"
        assert wait_until_finished(client, second["id"])["status"] == "cancelled"  # never run


def test_uploads_beyond_the_disk_budget_get_413(tmp_path):
    with fake_app(tmp_path, max_work_bytes=1000, max_upload_bytes=10_000) as (client, app):
        reply = client.post("/api/videos", content=WEBM + b"x" * 2000)  # declared size over the budget
        assert reply.status_code == 413 and "space" in reply.json()["error"]
        chunks = iter([WEBM, b"x" * 600, b"x" * 600])  # no Content-Length: counted as it streams in
        reply = client.post("/api/videos", content=chunks)
        assert reply.status_code == 413 and "space" in reply.json()["error"]
        job = client.post("/api/videos", content=WEBM).json()
        wait_until_finished(client, job["id"])  # its outputs take 300 bytes, its input is gone
        assert client.post("/api/videos", content=WEBM + b"x" * 500).status_code == 202
        assert client.post("/api/videos", content=WEBM + b"x" * 400).status_code == 413
        assert not leftovers(app)


def test_finished_jobs_expire_with_their_files(tmp_path):
    with fake_app(tmp_path, job_ttl_seconds=0.3) as (client, app):
        job = client.post("/api/videos", content=WEBM).json()
        assert wait_until_finished(client, job["id"])["status"] == "done"
        assert client.get(f"/api/videos/{job['id']}/faces.csv").status_code == 200
        time.sleep(0.5)
        assert client.get(f"/api/videos/{job['id']}").status_code == 404
        assert not (app.state.jobs.root / job["id"]).exists()


# ---------------------------------------------------------------------------- uploads that go wrong


def test_an_abandoned_upload_leaves_no_file_and_no_traceback(tmp_path, caplog):
    """The client declares 200 MiB, sends 10 bytes and goes away: what uvicorn then hands the app."""
    messages = iter([{"type": "http.request", "body": WEBM[:10], "more_body": True}])
    sent = []

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/videos", "raw_path": b"/api/videos", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-length", str(200 * 2**20).encode()),
                         (b"x-filename", b"big.mp4")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    with fake_app(tmp_path) as (_, app), caplog.at_level(logging.WARNING):
        asyncio.run(app(scope, receive, send))
        assert not leftovers(app)
        assert not app.state.jobs.jobs
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_odd_file_names_are_shown_cleaned_and_never_used_as_paths(tmp_path):
    with fake_app(tmp_path) as (client, app):
        for raw, shown in (("a" * 300 + ".mp4", None), ("x." + "a" * 298, None),
                           ("../../etc/passwd.webm", "passwd.webm"),
                           ("C:\\Users\\me\\clip.webm", "clip.webm"), ("clip\x00\x1b[31m\x7f.webm", "clip[31m.webm"),
                           ("%E8%A7%86%E9%A2%91.webm", "视频.webm"), ("..", "video.mp4"), ("", "video.mp4")):
            reply = client.post("/api/videos", content=WEBM, headers={"X-Filename": raw})
            assert reply.status_code == 202, (raw, reply.text)
            job = reply.json()
            assert len(job["file"]) <= MAX_FILENAME_CHARS and job["file"].isprintable(), job
            assert shown is None or job["file"] == shown, (raw, job)
            if raw.endswith(".mp4"):
                assert job["file"].endswith(".mp4")  # a long name is cut in its stem
            wait_until_finished(client, job["id"])
        assert not leftovers(app)
        assert [p.name for p in app.state.jobs.root.rglob("*") if not p.is_dir()
                and p.name not in ("video.webm", "faces.csv", "timeline.png")] == []


def test_bad_requests_get_4xx_with_the_reason(tmp_path):
    with fake_app(tmp_path, max_upload_bytes=100) as (client, app):
        for length in ("lots", "-5"):
            reply = client.post("/api/videos", content=WEBM, headers={"Content-Length": length})
            assert reply.status_code == 400 and "Content-Length" in reply.json()["error"]
        reply = client.post("/api/videos", content=iter([WEBM, WEBM]))
        assert reply.status_code == 413 and "limit" in reply.json()["error"]
        reply = client.post("/api/videos", content=b"just text", headers={"X-Filename": "notes.txt"})
        assert reply.status_code == 415 and "notes.txt" in reply.json()["error"]
        assert not leftovers(app)


def test_a_failed_jobs_error_names_the_upload_not_a_server_path(tmp_path):
    from ferkit.images import ImageError

    def broken(job):
        raise ImageError(f"{job.source}: cannot open as a video (in {job.folder})")

    with fake_app(tmp_path, annotate=broken) as (client, app):
        job = client.post("/api/videos", content=WEBM, headers={"X-Filename": "holiday.webm"}).json()
        job = wait_until_finished(client, job["id"])
        assert job["status"] == "failed" and job["error"].startswith("holiday.webm: cannot open"), job
        assert str(app.state.work) not in job["error"] and "/tmp" not in job["error"], job
