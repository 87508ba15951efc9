"""The second round of hostile inputs: model files, photos, videos, arrays, output folders, processes.

Each test reproduces a case that once hung, lost a user's file, printed a raw
traceback or gave a silently wrong answer, and checks how it ends now: a
refusal that names the file and says what to do, or the right answer.
(Dataset files: tests/test_data.py; the web server: tests/test_server_security.py.)
"""

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit import images
from ferkit.cli import main
from ferkit.files import OutputLedger
from ferkit.model import ModelError, ModelMeta, load_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def copy_model(source: Path, stem: Path) -> Path:
    """The model files of ``source`` under ``stem``, for damaging one of them."""
    for suffix in (".json", ".h5"):
        stem.with_suffix(suffix).write_bytes(source.with_suffix(suffix).read_bytes())
    meta = source.with_name(source.name + ".meta.json")
    stem.with_name(stem.name + ".meta.json").write_bytes(meta.read_bytes())
    return stem


def edit_meta(stem: Path, **changes) -> None:
    meta = stem.with_name(stem.name + ".meta.json")
    values = json.loads(meta.read_text())
    values.update(changes)
    meta.write_text(json.dumps(values))


def face_photo(size=256) -> np.ndarray:
    return cv2.resize(images.sample_image()[30:330, 100:400], (size, size))


# ---------------------------------------------------------------- model files

@pytest.mark.parametrize("names, problem", [
    (["happy\x1b[31m", "sad"], "printable"),  # a terminal escape
    (["a" * 41, "sad"], "1-40 printable characters"),
    (["happy", "happy"], "distinct"),
    (["happy"], "2-100"),
    (["happy", 7], "printable"),
])
def test_class_names_must_be_short_printable_text(random_model, tmp_path, names, problem):
    stem = copy_model(random_model, tmp_path / "m")
    edit_meta(stem, class_names=names)
    with pytest.raises(ModelError, match=rf"m\.meta\.json: class_names .*{problem}"):
        ModelMeta.read(stem.with_name("m.meta.json"))


def test_markup_in_a_class_name_is_kept_as_text(random_model, tmp_path):
    """Printable markup is a valid name: the page shows it as text (tests/test_server_security.py)."""
    stem = copy_model(random_model, tmp_path / "m")
    hostile = "<img src=x onerror=alert(1)>"
    edit_meta(stem, class_names=[hostile, "b", "c", "d", "e", "f", "g"])
    assert ModelMeta.read(stem.with_name("m.meta.json")).class_names[0] == hostile


def test_a_fifo_as_model_metadata_is_refused_without_waiting(random_model, tmp_path):
    stem = copy_model(random_model, tmp_path / "m")
    meta = stem.with_name("m.meta.json")
    meta.unlink()
    os.mkfifo(meta)
    script = f"from ferkit.model import load_model\nload_model({str(stem)!r})"
    finished = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0
    assert "m.meta.json: is a FIFO (named pipe), not a regular file" in finished.stderr


def test_deeply_nested_model_json_is_a_model_error(random_model, tmp_path):
    stem = copy_model(random_model, tmp_path / "m")
    stem.with_suffix(".json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelError, match=r"m\.json: JSON nested too deeply"):
        load_model(stem)


def test_nan_weights_are_refused_at_load(random_model, tmp_path):
    from ferkit.model import save_model

    model, meta = load_model(random_model)
    weights = model.get_weights()
    weights[-2][0, 0] = np.nan  # one weight of the last Dense layer
    model.set_weights(weights)
    save_model(model, tmp_path / "nan", meta)
    with pytest.raises(ModelError, match=r"nan\.h5: holds weights that are NaN or infinite"):
        load_model(tmp_path / "nan")


def test_a_model_whose_outputs_are_not_probabilities_is_refused(tmp_path):
    import keras

    from ferkit.model import save_model

    inputs = keras.Input((48, 48, 1), name="face")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    logits = keras.Model(inputs, keras.layers.Dense(7, kernel_initializer="ones")(x))  # no softmax
    save_model(logits, tmp_path / "logits", ModelMeta())
    with pytest.raises(ModelError, match=r"logits\.h5: the model's outputs are not probabilities.*softmax"):
        load_model(tmp_path / "logits")


def test_an_average_without_members_is_a_model_error_not_a_key_error(random_model, tmp_path, capsys):
    stem = copy_model(random_model, tmp_path / "avg")
    edit_meta(stem, architecture="average(vgg_small,vgg_small)", training={})
    assert main(["ensemble", str(stem), str(random_model), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "training.members does not describe" in error
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("value", [".", "/"])
def test_a_folder_as_ferkit_model_is_named(monkeypatch, capsys, value):
    monkeypatch.setenv("FERKIT_MODEL", value)
    assert main(["demo", "--out", "unused"]) == 2
    assert f"$FERKIT_MODEL={value}: is a folder, not a model" in capsys.readouterr().err


# ---------------------------------------------------------------- processes

def _predict_in_child(predictor, queue):
    try:
        predictor.predict(face_photo())
        queue.put("returned")
    except RuntimeError as error:
        queue.put(str(error))


def test_a_predictor_used_after_fork_says_what_to_do(random_model):
    from ferkit.prediction import Predictor

    predictor = Predictor(random_model)
    predictor.predict(face_photo())  # TensorFlow has run in this process: a forked child could not run it
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_predict_in_child, args=(predictor, queue))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    message = queue.get(timeout=10)
    assert "(a fork)" in message and "get_context('spawn')" in message


def test_a_folder_named_ferkit_in_the_working_directory_gets_one_line(tmp_path):
    import ferkit

    if Path(ferkit.__file__).resolve().parent.parent != ROOT:
        pytest.skip("ferkit is not installed from this clone")
    (tmp_path / "ferkit").symlink_to(ROOT)  # a clone named ferkit, as cloned from the folder above
    finished = subprocess.run([sys.executable, "-m", "ferkit", "info"], cwd=tmp_path, env=ENV, capture_output=True,
                              text=True, timeout=120)
    assert finished.returncode == 2
    assert finished.stderr.startswith("error: the folder ") and finished.stderr.count("\n") == 1
    assert "hides the installed ferkit package" in finished.stderr


# ---------------------------------------------------------------- photos and arrays

def test_a_jpeg_padded_to_gigabytes_is_refused_unread(tmp_path):
    photo = tmp_path / "padded.jpg"
    photo.write_bytes(cv2.imencode(".jpg", face_photo(64))[1].tobytes())
    with open(photo, "r+b") as out:
        out.truncate(9 * 2**30)  # sparse: 9 GiB long, nothing on disk
    with pytest.raises(images.ImageError, match=r"padded\.jpg: 9216\.0 MiB, more than"):
        images.load_image(photo)


def test_decoder_messages_of_other_threads_are_never_an_images_warning(capfd):
    encoded = cv2.imencode(".jpg", images.sample_image())[1].tobytes()
    scan = encoded.rfind(b"\xff\xda")
    damaged = encoded[:scan + 3000] + b"\xff\xd4garbage" + encoded[scan + 3500:]
    stop = threading.Event()

    def chatter():
        while not stop.is_set():
            os.write(2, b"another thread's line\n")

    thread = threading.Thread(target=chatter)
    thread.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(20):
                images.load_image(damaged, name="holiday.jpg")
    finally:
        stop.set()
        thread.join()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 20 and all(m.startswith("holiday.jpg: damaged JPEG data") for m in messages)
    assert not any("another thread" in m for m in messages)
    assert "another thread's line" in capfd.readouterr().err  # the process's stderr was left alone


@pytest.mark.parametrize("describe, convert", [
    ("float 0-1 with rounding above 1", lambda u: np.minimum(u / 255.0, 1.0) + 1e-7),
    ("uint16 holding 0-255", lambda u: u.astype(np.uint16)),
    ("uint16 holding 16-bit values", lambda u: u.astype(np.uint16) * 257),
    ("float 0-255", lambda u: u.astype(np.float32)),
    ("int64 holding 0-255", lambda u: u.astype(np.int64)),
])
def test_arrays_of_any_documented_range_give_the_uint8_image(describe, convert):
    photo = images.sample_image()
    loaded = images.load_image(convert(photo), "bgr")
    assert np.abs(loaded.astype(int) - photo).max() <= 1, describe


def test_pil_16_bit_and_float_images_keep_their_values():
    from PIL import Image

    gray = images.to_gray(images.sample_image())
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    floats = Image.fromarray(gray.astype(np.float32) / 255)
    assert (sixteen.mode, floats.mode) == ("I;16", "F")
    for image in (sixteen, floats):
        assert np.abs(images.load_image(image)[:, :, 0].astype(int) - gray).max() <= 1


def test_a_float_tiff_in_0_to_1_is_not_black(tmp_path):
    from PIL import Image

    gray = images.to_gray(images.sample_image())
    path = tmp_path / "float.tif"
    Image.fromarray(gray.astype(np.float32) / 255).save(path)
    assert np.abs(images.load_image(path)[:, :, 0].astype(int) - gray).max() <= 1


@pytest.mark.parametrize("array, reason", [
    (np.linspace(0, 1.5, 64 * 64).reshape(64, 64), "neither 0-1 nor 0-255"),
    (np.linspace(-1, 1, 64 * 64).reshape(64, 64), "neither 0-1 nor 0-255"),
    (np.full((64, 64), 70000, np.int32), "not 0-255"),
])
def test_ambiguous_ranges_are_refused_and_value_range_resolves_them(array, reason):
    with pytest.raises(images.ImageError, match=f"{reason}.*value_range"):
        images.load_image(array)
    low, high = float(array.min()), float(array.max()) or 1.0
    loaded = images.load_image(array, value_range=(low, max(high, low + 1)))
    assert loaded.dtype == np.uint8 and loaded.max() == 255 or array.min() == array.max()


# ---------------------------------------------------------------- output folders

def test_predict_never_replaces_a_users_file_nor_reads_its_own_outputs(random_model, tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.jpg"), face_photo())
    users = cv2.imencode(".jpg", face_photo(200))[1].tobytes()
    (folder / "x_annotated.jpg").write_bytes(users)  # the user's own file of that name
    arguments = ["predict", str(folder), "--out", str(folder), "--model", str(random_model)]
    assert main(arguments) == 1
    assert (folder / "x_annotated.jpg").read_bytes() == users
    assert "x_annotated.jpg: is also an input of this run" in capsys.readouterr().err
    first = sorted(p.name for p in folder.iterdir())
    assert main(arguments) == 1  # a second run: its own x_annotated_annotated.jpg is not an input
    assert sorted(p.name for p in folder.iterdir()) == first
    assert "x_annotated_annotated_annotated" not in capsys.readouterr().err
    assert (folder / "x_annotated.jpg").read_bytes() == users


def test_a_recursive_run_twice_does_not_annotate_its_annotations(random_model, tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "a.jpg"), face_photo())
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["predict", ".", "--recursive", "--model", str(random_model)]) == 0
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert written == ["annotated/photos/a_annotated.jpg", "photos/a.jpg"]


def test_overwrite_replaces_a_users_file_only_when_asked(random_model, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "x.jpg"), face_photo())
    out = tmp_path / "out"
    out.mkdir()
    (out / "x_annotated.jpg").write_bytes(b"the user's")
    run = ["predict", str(tmp_path / "x.jpg"), "--out", str(out), "--model", str(random_model)]
    assert main(run) == 2
    assert "x_annotated.jpg: already exists and was not written by ferkit" in capsys.readouterr().err
    assert (out / "x_annotated.jpg").read_bytes() == b"the user's"
    assert main(run + ["--overwrite"]) == 0
    assert images.load_image(out / "x_annotated.jpg").shape == (256, 256, 3)
    assert OutputLedger(out).wrote(out / "x_annotated.jpg")


def test_a_file_as_out_is_refused_before_a_folder_run(random_model, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos" / "a.jpg"), face_photo())
    (tmp_path / "taken").write_text("not a folder")
    assert main(["predict", str(tmp_path / "photos"), "--out", str(tmp_path / "taken"),
                 "--model", str(random_model)]) == 2
    assert "taken: is a file; the output must be a folder" in capsys.readouterr().err


def test_symlinked_subfolders_are_followed_once(random_model, tmp_path):
    from ferkit.batch import folder_images

    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), face_photo(64))
    cv2.imwrite(str(elsewhere / "b.jpg"), face_photo(64))
    (photos / "linked").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(photos)  # back up: must not be walked forever
    found, passed = folder_images(photos, recursive=True)
    assert [p.relative_to(photos).as_posix() for p in found] == ["a.jpg", "linked/b.jpg"]
    assert [p.relative_to(photos).as_posix() for p, _ in passed] == ["linked/loop"]
    assert "already searched" in passed[0][1]


@pytest.mark.parametrize("option", ["--max-pixels", "--max-frames"])
def test_a_zero_limit_is_refused_and_none_means_no_limit(option, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["predict", "x.jpg", option, "0"])
    assert exit_status.value.code == 2
    assert "give a positive whole number, or 'none' for no limit" in capsys.readouterr().err
    from ferkit.cli import build_parser

    assert getattr(build_parser().parse_args(["predict", "x.jpg", option, "none"]), option[2:].replace("-", "_")) is None


# ---------------------------------------------------------------- videos

def write_video(path: Path, frames, times=None, options=None, codec="mpeg4"):
    """A video with the given frames (BGR) at the given times in seconds (default 25 fps)."""
    import fractions

    av = pytest.importorskip("av")
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:, :, ::-1]), format="rgb24")
            if times is not None:
                picture.pts, picture.time_base = round(times[i] * 25), fractions.Fraction(1, 25)
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_variable_frame_rate_video_times_come_from_the_container(random_model, tmp_path):
    from ferkit.prediction import Predictor

    times = [0.0, 0.12, 0.2, 1.52, 1.6, 3.0, 4.92]  # on the 1/25 s grid the encoder keeps
    video = write_video(tmp_path / "vfr.mkv", [face_photo()] * len(times), times)
    table = Predictor(random_model).predict_video(video, progress=False)
    assert table["frame"].tolist() == list(range(len(times)))  # one face in every frame
    assert table["time"].tolist() == times


def test_a_live_recording_without_a_length_is_refused_before_analysis(random_model, tmp_path):
    from ferkit.prediction import Predictor

    video = write_video(tmp_path / "live.mkv", [np.zeros((32, 32, 3), np.uint8)] * 300, options={"live": "1"})
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT) <= 0  # declares no length
    analysed = []
    with pytest.raises(images.ImageError, match=r"live\.mkv: more than 100 frames, over the limit"):
        Predictor(random_model).predict_video(video, progress=False, max_frames=100,
                                              on_progress=lambda done, total: analysed.append(done))
    assert analysed == []


def test_a_video_of_one_pixel_frames_says_so(random_model, tmp_path, capsys):
    video = tmp_path / "dot.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (1, 1))
    for _ in range(3):
        writer.write(np.zeros((1, 1, 3), np.uint8))
    writer.release()
    assert main(["predict", str(video), "--out", str(tmp_path / "out"), "--model", str(random_model)]) == 2
    error = capsys.readouterr().err
    assert "frames are 1x1 pixels, too small" in error and "try an .mp4" not in error
    assert not (tmp_path / "out" / "dot_annotated.mp4").exists()


# ---------------------------------------------------------------- exit status

FAILING_RUNS = {
    "convert": ["convert", "missing.zip", "out.txt"],  # once status 1, through SystemExit
    "info": ["info", "missing.zip"],
    "train": ["train", "missing.zip", "--epochs", "1"],
    "distill": ["distill", "missing.zip", "--epochs", "1"],
    "evaluate": ["evaluate", "missing.zip"],
    "ensemble": ["ensemble", "missing_a", "missing_b", "--out", "out"],
    "interpolate": ["interpolate", "missing_a", "missing_b", "--out", "out"],
    "export": ["export", "missing"],
    "quantize": ["quantize", "missing", "--data", "missing.zip"],
    "export-web": ["export-web", "web", "--model", "missing"],
    "serve": ["serve", "--model", "missing", "--no-browser"],
    "predict": ["predict", "missing.jpg"],
    "demo": ["demo", "--model", "missing"],
    "analyse": ["analyse", "missing.mp4", "--out", "out"],
    "report": ["report", "missing"],
}


def test_every_command_is_in_the_exit_status_table():
    from ferkit.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert sorted(commands) == sorted(FAILING_RUNS)
    table = (ROOT / "docs" / "command-line.md").read_text()
    assert all(f"`{command}`" in table for command in commands)


@pytest.mark.parametrize("command", sorted(FAILING_RUNS))
def test_every_command_exits_2_when_nothing_was_done(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(FAILING_RUNS[command]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
    assert ("out.txt" if command == "convert" else "missing") in error


@pytest.mark.parametrize("damage", ["fifo", "not json", "wrong shape"])
def test_an_unreadable_accuracy_record_is_named_and_skipped_not_waited_on(tmp_path, capsys, damage):
    from ferkit.server import recorded_accuracy

    record = tmp_path / "m.metrics.json"
    if damage == "fifo":
        os.mkfifo(record)
    else:
        record.write_text("{" if damage == "not json" else json.dumps({"model": "m", "PublicTest": [0.7]}))
    found = []
    reader = threading.Thread(target=lambda: found.append(recorded_accuracy(tmp_path / "m")), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert found == [{}], "waited on the record"
    assert f"warning: {record}: unreadable" in capsys.readouterr().err


def test_a_readable_accuracy_record_reaches_the_page(tmp_path):
    from ferkit.server import recorded_accuracy

    (tmp_path / "m.metrics.json").write_text(json.dumps({"model": "m", "PublicTest": {"accuracy": 0.7},
                                                         "PrivateTest": {"accuracy": 0.71}}))
    assert recorded_accuracy(tmp_path / "m") == {"PublicTest": 0.7, "PrivateTest": 0.71}
