"""``ferkit analyse`` and ``ferkit report``: chunks stitched into predict's table, Ray embedded and on a real
two-node cluster on the loopback address (a node killed mid-run), resuming, errors, summaries."""

from __future__ import annotations

import fractions
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("keras")
ray = pytest.importorskip("ray")
pytest.importorskip("pyarrow")
import pandas as pd  # noqa: E402

from ferkit import images, recordings, report, video  # noqa: E402
from ferkit.analyse import analyse  # noqa: E402
from ferkit.cli import main  # noqa: E402
from ferkit.recordings import Recording, Settings  # noqa: E402

MODEL = "fer_lite"  # the shipped compact model: real, decisive labels, quick to load
COMPARED = ["frame", "time", "face_id", "x", "y", "width", "height", "label"]
#: Each chunk one second of video, so every recording crosses several chunk boundaries.
SETTINGS = Settings(model=MODEL, chunk_seconds=1.0, bin_seconds=1.0)
#: Makes Ray keep to 127.0.0.1: it otherwise swaps a loopback address for this machine's network address.
LOOPBACK = ("import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
            "s.get_node_ip_address = lambda address=None: '127.0.0.1'; "
            "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """The driver, too, names itself 127.0.0.1 (embedded Ray and the cluster test alike)."""
    import ray._private.services as services

    monkeypatch.setattr(services, "resolve_ip_for_localhost", lambda host: host)
    monkeypatch.setattr(services, "get_node_ip_address", lambda address=None: "127.0.0.1")


@pytest.fixture(scope="module")
def patch():
    return cv2.resize(images.sample_image()[30:230, 120:320], (64, 64))


def scene(patch, people, i, size=(128, 224)):
    """Frame ``i``: grey, with the face at each person's place for the people present (start, end, speed)."""
    frame = np.full((*size, 3), 90, np.uint8)
    for k, (start, end, speed) in enumerate(people):
        if start <= i < end:
            x, y = 4 + 110 * k + (speed * i) % 40, 30 + i % 5
            frame[y:y + 64, x:x + 64] = patch
    return frame


def write_clip(path: Path, patch, people, frames=36, fps=12, times=None) -> Path:
    """An MJPG .avi or mp4v .mp4 at ``fps``; with ``times``, an MPEG-4 .mkv at those times (variable rate)."""
    if times is None:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*("mp4v" if path.suffix == ".mp4" else "MJPG")),
                                 fps, (224, 128))
        for i in range(frames):
            writer.write(scene(patch, people, i))
        writer.release()
        return path
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.height, stream.width, stream.pix_fmt = 128, 224, "yuv420p"
        for i, seconds in enumerate(times):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene(patch, people, i)[:, :, ::-1]), "rgb24")
            picture.pts, picture.time_base = round(seconds * 25), fractions.Fraction(1, 25)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


CLIPS = {  # name -> people (first frame, end frame, pixels per frame): crossing, leaving, returning, two at once
    "one.avi": [(0, 36, 1)], "two.avi": [(0, 36, 1), (6, 30, 2)], "late.avi": [(14, 36, 1)],
    "gone.avi": [(0, 10, 1), (20, 36, 3)], "jumps.avi": [(0, 36, 7)], "pair.avi": [(0, 20, 1), (10, 36, 1)],
    "keyframes.mp4": [(0, 36, 2), (3, 33, 1)], "vfr.mkv": [(0, 30, 1)],
}
VFR_TIMES = [round(i * 0.08 + (0.32 if i > 12 else 0) + (0.8 if i > 20 else 0), 2) for i in range(30)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory, patch):
    folder = tmp_path_factory.mktemp("clips")
    for name, people in CLIPS.items():
        write_clip(folder / name, patch, people, times=VFR_TIMES if name.endswith(".mkv") else None)
    return folder


@pytest.fixture(scope="module")
def predictor():
    from ferkit.prediction import Predictor

    return Predictor(MODEL)


@pytest.fixture(scope="module")
def expected(clips, predictor):
    """predict's per-frame table of every clip, the reference."""
    return {name: predictor.predict_video(clips / name, progress=False) for name in CLIPS}


def same_rows(got, want) -> None:
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got[COMPARED].reset_index(drop=True), want[COMPARED].reset_index(drop=True),
                                  check_dtype=False)
    probabilities = [c for c in want if c.startswith("p_")] + ["score"]
    np.testing.assert_allclose(got[probabilities].to_numpy(float), want[probabilities].to_numpy(float), atol=1e-5)


def faces_of(out: Path, recording_id: str):
    return pd.read_parquet(report.partition(out, recording_id, False))


def ids_by_name(clips, names) -> dict[str, str]:
    return {name: recordings.recording_id(clips / name) for name in names}


# ---------------------------------------------------------------- without Ray


def test_chunks_cover_every_frame_once_and_start_warm():
    times = [i / 12 for i in range(100)]
    analysed = video.sampled_frames(times, stride=2)
    chunks = video.chunk_ranges(times, analysed, 1.0, 0.5, 5)
    assert chunks[0].first == 0 and chunks[-1].end == 100
    assert all(a.end == b.first for a, b in zip(chunks, chunks[1:]))
    for chunk in chunks[1:]:
        warm = [i for i in analysed if chunk.warm_first <= i < chunk.first]
        assert len(warm) >= 5 and times[chunk.first] - times[chunk.warm_first] >= 0.5
    assert video.sampled_frames([0.0, 0.1, 0.26, 0.3, 0.55, 0.61], fps=4) == [0, 2, 4]


def test_reading_from_the_middle_gives_the_frames_of_a_full_reading(clips):
    for name in ("keyframes.mp4", "vfr.mkv"):
        times, _ = video.frame_times(clips / name)
        whole = dict(video.read_frames(clips / name, 0, len(times), times))
        part = dict(video.read_frames(clips / name, 17, 25, times, wanted={17, 19, 24}))
        assert sorted(part) == [17, 19, 24]
        assert all((part[i] == whole[i]).all() for i in part)
    assert times == VFR_TIMES


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_stitched_chunks_equal_predicts_table(name, clips, expected):
    recording = Recording(name, str(clips / name), "video")
    plan = recordings.plan_video(recording, SETTINGS, None)
    assert len(plan["chunks"]) >= 3
    tables = [recordings.analyse_chunk(recording, chunk, plan, SETTINGS)["rows"] for chunk in plan["chunks"]]
    columns = [c for c in tables[0].columns if c != "warm"]
    same_rows(recordings.stitch(tables, columns), expected[name])


def test_urls_are_listed_fingerprinted_and_read_as_the_local_files(clips, tmp_path):
    """An object-store URL goes through pyarrow's file systems: file:// takes the same path as s3:// or gs://."""
    url = "file://" + str(clips)
    hidden = clips / ".hidden.mp4"
    hidden.write_bytes(b"not listed")
    try:
        found, passed = recordings.find_recordings([url, url + "/nothing-here.mp4"])
    finally:
        hidden.unlink()
    local, _ = recordings.find_recordings([clips])
    assert [r.source for r in found] == ["file://" + r.source for r in local]  # same objects, hidden left out
    assert [r.kind for r in found] == [r.kind for r in local]
    assert passed == [(url + "/nothing-here.mp4", "no such object or folder")]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,recording\n{url}/keyframes.mp4,lecture\n")
    assert recordings.find_recordings([manifest])[0] == [Recording("lecture", url + "/keyframes.mp4", "video")]

    remote = next(r for r in found if r.source.endswith("keyframes.mp4"))
    here = next(r for r in local if r.source.endswith("keyframes.mp4"))
    assert remote.fingerprint("s") == remote.fingerprint("s") != Recording("x", url + "/gone.mp4", "video").fingerprint("s")
    cache = tmp_path / "cache"
    copy = recordings.local_copy(remote.source, cache)
    assert Path(copy).read_bytes() == Path(here.source).read_bytes() and list(cache.iterdir()) == [Path(copy)]
    plan, local_plan = recordings.plan_video(remote, SETTINGS, None), recordings.plan_video(here, SETTINGS, None)
    assert plan == local_plan
    chunk = plan["chunks"][1]
    same_rows(recordings.analyse_chunk(remote, chunk, plan, SETTINGS)["rows"],
              recordings.analyse_chunk(here, chunk, local_plan, SETTINGS)["rows"])


# ---------------------------------------------------------------- Ray on this machine


@pytest.fixture
def embedded_ray(monkeypatch):
    """One Ray on this machine for the whole test (analyse uses a session's own ray.init()): one start, and
    one model load per worker for every run. Without token authentication, as the cluster test's: Ray keeps a
    process's first choice, and the two tests share the process."""
    from ferkit.analyse import WORKER_ENV

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": WORKER_ENV})
    try:
        yield
    finally:
        ray.shutdown()


def test_embedded_run_outputs_errors_report_resume_and_aggregate_only(clips, expected, tmp_path, embedded_ray):
    inputs = tmp_path / "inputs"
    (inputs / "sub").mkdir(parents=True)
    for name in ("two.avi", "vfr.mkv"):
        os.link(clips / name, inputs / "sub" / name)
    cv2.imwrite(str(inputs / "photo.png"), scene(cv2.resize(images.sample_image()[30:230, 120:320], (64, 64)),
                                                 [(0, 1, 0), (0, 1, 0)], 0))
    (inputs / "broken.mp4").write_bytes(b"not a video")
    manifest = tmp_path / "list.csv"
    manifest.write_text("path\nclips/gone.avi\n")
    (tmp_path / "clips").symlink_to(clips)
    out = tmp_path / "out"

    outcome = analyse([inputs, manifest], out, SETTINGS, workers=1, progress=False)
    ids = ids_by_name(inputs / "sub", ["two.avi", "vfr.mkv"])
    ids["gone.avi"] = recordings.recording_id(clips / "gone.avi")
    broken = recordings.recording_id(inputs / "broken.mp4")
    assert sorted(outcome.finished) == sorted([*ids.values(), recordings.recording_id(inputs / "photo.png")])
    assert list(outcome.failed) == [broken] and "cannot open as a video" in outcome.failed[broken]
    errors = pd.read_csv(out / "errors.csv")
    assert errors["recording"].tolist() == [broken] and "cannot open" in errors["error"][0]
    for name, recording_id in ids.items():
        same_rows(faces_of(out, recording_id), expected[name])
    photo = faces_of(out, recordings.recording_id(inputs / "photo.png"))
    assert len(photo) == 2 and photo["face_id"].tolist() == [0, 1] and (photo["detection_score"] > 0.5).all()
    dataset = pd.read_parquet(out / "faces")  # the partitioned dataset, as a user reads it
    assert set(dataset["recording"].astype(str)) == set(outcome.finished)
    summary = json.loads((out / "recordings" / ids["two.avi"] / "summary.json").read_text())
    assert len(summary["nodes"]) == 1 and len(summary["chunks"]) == 3
    people = pd.read_csv(out / "recordings" / ids["two.avi"] / "people.csv")
    assert people["face_id"].tolist() == sorted(expected["two.avi"]["face_id"].unique())
    shares = people[[c for c in people if c.startswith("share_")]].sum(axis=1)
    np.testing.assert_allclose(shares, 1)
    assert (out / "recordings" / ids["two.avi"] / "report.png").stat().st_size > 1000
    assert set(pd.read_csv(out / "timeline.csv")["recording"]) == set(outcome.finished)

    before = {p: p.stat().st_mtime_ns for p in (out / "faces").rglob("*.parquet")}
    again = analyse([inputs, manifest], out, SETTINGS, workers=1, progress=False)  # starts no Ray: nothing to do
    assert sorted(again.skipped) == sorted(outcome.finished) and again.chunks == 0 and list(again.failed) == [broken]
    assert before == {p: p.stat().st_mtime_ns for p in (out / "faces").rglob("*.parquet")}

    (out / "recordings" / ids["two.avi"] / "people.csv").unlink()
    assert main(["report", str(out), "--bin-seconds", "0.5"]) == 0
    assert (out / "recordings" / ids["two.avi"] / "people.csv").exists()
    assert pd.read_csv(out / "recordings" / ids["two.avi"] / "timeline.csv")["bin_start"].diff().min() == 0.5

    aggregate = Settings(model=MODEL, chunk_seconds=1.0, bin_seconds=1.0, stride=2, aggregate_only=True)
    changed = analyse([inputs / "sub"], out, aggregate, workers=1, progress=False)
    assert sorted(changed.finished) == sorted([ids["two.avi"], ids["vfr.mkv"]])  # a setting changed: redone
    assert not (out / "faces" / f"recording={ids['two.avi']}").exists()
    assert not (out / "recordings" / ids["two.avi"] / "people.csv").exists()
    frames = pd.read_parquet(report.partition(out, ids["two.avi"], True))
    assert "face_id" not in frames and frames["frame"].tolist() == list(range(0, 36, 2))
    want = expected["two.avi"]
    counted = want[want["frame"] % 2 == 0].groupby("frame").size().reindex(frames["frame"], fill_value=0)
    assert frames["faces"].tolist() == counted.tolist()


# ---------------------------------------------------------------- a real two-node cluster on 127.0.0.1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_node(arguments: list[str], log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own session, so that it and everything it starts can be stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # A busy machine starts a node's agents slowly: the raylet's 30 s wait for them would end the node.
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_agent_register_timeout_ms="180000",
               PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", LOOPBACK, "start", "--block", "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "1", "--disable-usage-stats", *arguments], env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_session(process: subprocess.Popen, grace: float) -> None:
    """Stop the node: a polite SIGTERM (with ``grace`` seconds), then SIGKILL to whatever of its session is left."""
    import psutil

    if grace and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == process.pid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.wait(10)


@contextmanager
def time_limit(seconds: int):
    """Raise TimeoutError in this thread after ``seconds`` (analyse's loop wakes every second to notice)."""
    def expire(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """A head and a second node (its own raylet), one CPU each, on 127.0.0.1; both stopped afterwards.

    Without token authentication: nothing but this machine's loopback address can reach it."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ferkit-ray-")  # short: Ray's socket paths must fit in 107 characters
    nodes = [ray_node(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp],
                      tmp_path / "head.log")]
    try:
        address = f"127.0.0.1:{port}"
        with time_limit(120):
            while True:
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert nodes[0].poll() is None, (tmp_path / "head.log").read_text()[-2000:]
                time.sleep(0.5)
            nodes.append(ray_node(["--address", address], tmp_path / "node2.log"))
            ray.init(address=address, log_to_driver=False)
            try:
                while sum(node["Alive"] for node in ray.nodes()) < 2:
                    assert nodes[1].poll() is None, (tmp_path / "node2.log").read_text()[-2000:]
                    time.sleep(0.5)
                assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
            finally:
                ray.shutdown()
        yield address, nodes
    finally:
        for node in reversed(nodes):
            stop_session(node, grace=10)
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def test_two_nodes_share_the_work_survive_a_lost_node_and_resume(cluster, clips, expected, tmp_path):
    address, nodes = cluster
    names = sorted(CLIPS)
    first, second = names[:4], names[4:]
    out = tmp_path / "out"
    with time_limit(240):
        outcome = analyse([clips / n for n in first], out, SETTINGS, address=address, progress=False)
    ids = ids_by_name(clips, names)
    assert sorted(outcome.finished) == sorted(ids[n] for n in first) and not outcome.failed, outcome
    used = set()
    for name in first:
        same_rows(faces_of(out, ids[name]), expected[name])
        used |= set(json.loads((out / "recordings" / ids[name] / "summary.json").read_text())["nodes"])
    assert len(used) == 2  # the work ran on both nodes

    killed = []

    def kill_second_node(recording_id, chunk):
        if not killed:
            stop_session(nodes[1], grace=0)  # SIGKILL: raylet, workers and all, mid-run
            killed.append((recording_id, chunk))

    with time_limit(240):
        outcome = analyse([clips / n for n in second], out, SETTINGS, address=address, progress=False,
                          on_commit=kill_second_node)
    assert killed and nodes[1].poll() is not None
    assert sorted(outcome.finished) == sorted(ids[n] for n in second) and not outcome.failed
    for name in second:
        same_rows(faces_of(out, ids[name]), expected[name])  # nothing lost, nothing twice

    with time_limit(120):
        again = analyse([clips], out, SETTINGS, address=address, progress=False)
    assert sorted(again.skipped) == sorted(ids.values()) and again.chunks == 0
