"""Careless and hostile inputs: nothing lost, nothing silently wrong, every failure named.

Each test here reproduces a case that once broke (a raw traceback, an emptied
file, shifted pixels, a hang or gigabytes of memory) and checks what happens now.
"""

import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit import data, files
from ferkit.cli import main
from ferkit.sample import write_image_layout

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "ferkit" / "models"  # the shipped models
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def csv_rows(pixel_rows, usage="Training"):
    lines = ["emotion,pixels,Usage"] + [f"3,{' '.join(map(str, row))},{usage}" for row in pixel_rows]
    return ("\n".join(lines) + "\n").encode()


def random_rows(n, seed=0):
    return [list(r) for r in np.random.default_rng(seed).integers(0, 256, (n, 2304))]


# ---------------------------------------------------------------- data: never lose or corrupt

def test_cancelling_pixel_counts_are_both_rejected(tmp_path):
    rows = random_rows(6)
    rows[1] = rows[1] + [7]  # 2305 values ...
    rows[4] = rows[4][:-1]   # ... and 2303: the chunk's total is still 6 x 2304
    (tmp_path / "cancel.csv").write_bytes(csv_rows(rows))
    with pytest.raises(data.DatasetError) as error:
        data.load_fer2013(tmp_path / "cancel.csv", progress=False)
    assert "line 3: expected 2304 pixel values, found 2305" in str(error.value)
    assert "line 6: expected 2304 pixel values, found 2303" in str(error.value)
    kept = data.load_fer2013(tmp_path / "cancel.csv", on_error="skip", progress=False)
    expected = np.array([rows[i] for i in (0, 2, 3, 5)], np.uint8).reshape(-1, 48, 48)
    np.testing.assert_array_equal(kept.images, expected)  # the rows in between are not shifted


def test_a_failing_convert_leaves_the_existing_output_byte_identical(tmp_path, capsys):
    bad = [row[:100] for row in random_rows(3)]
    (tmp_path / "many_bad.csv").write_bytes(csv_rows(bad))
    keep = tmp_path / "keep.csv"
    keep.write_bytes(b"precious\n")
    assert main(["convert", str(tmp_path / "many_bad.csv"), str(keep), "--skip-bad", "--no-progress"]) == 2
    assert "no usable images" in capsys.readouterr().err
    assert keep.read_bytes() == b"precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv", "many_bad.csv"]


def test_a_write_that_fails_midway_changes_nothing(cartoon, tmp_path, monkeypatch):
    keep = tmp_path / "keep.csv"
    keep.write_bytes(b"precious\n")

    def full_disk(f, *args, **kwargs):
        f.write(b"emotion,pixels,Usage\n3,1 2 3")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data._csvcodec, "write_fer_csv", full_disk)
    with pytest.raises(files.OutputError, match="No space left"):
        data.write_csv(cartoon, keep, progress=False)
    assert keep.read_bytes() == b"precious\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]


def test_convert_onto_its_own_input_is_refused_before_writing(cartoon, tmp_path, capsys):
    source = data.write_csv(cartoon, tmp_path / "x.csv", progress=False)
    before = source.read_bytes()
    assert main(["convert", str(source), str(source), "--no-progress"]) == 2
    assert "is also the input" in capsys.readouterr().err
    assert source.read_bytes() == before


@pytest.mark.parametrize("where", ["folder", "under_file"])
def test_convert_to_an_impossible_output_names_it(cartoon, tmp_path, capsys, where):
    source = data.write_npz(cartoon, tmp_path / "c.npz")
    (tmp_path / "afile").write_text("x")
    target = {"folder": tmp_path, "under_file": tmp_path / "afile" / "out.csv"}[where]
    assert main(["convert", str(source), str(target), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(target) in err and ("is a folder" in err or "is a file, not a folder" in err)


def test_convert_to_a_read_only_place_says_so(cartoon, tmp_path, capsys, monkeypatch):
    source = data.write_npz(cartoon, tmp_path / "c.npz")

    def read_only(*args, **kwargs):  # what a read-only filesystem answers (root would write a chmod-ed folder)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    assert main(["convert", str(source), str(tmp_path / "out.csv"), "--no-progress"]) == 2
    assert f"{tmp_path / 'out.csv'}: cannot write here (Read-only file system)" in capsys.readouterr().err


def test_npz_output_is_written_under_exactly_the_given_name(cartoon, tmp_path, capsys):
    zipped = write_image_layout(cartoon, tmp_path / "x.zip")
    assert main(["convert", str(zipped), str(tmp_path / "UP.NPZ"), "--no-progress"]) == 0
    assert (tmp_path / "UP.NPZ").exists() and not (tmp_path / "UP.NPZ.npz").exists()
    assert len(data.load_fer2013(tmp_path / "UP.NPZ")) == len(cartoon)


def test_a_clean_rerun_removes_the_stale_skipped_list(cartoon, tmp_path, capsys):
    folder = write_image_layout(cartoon, tmp_path / "folder")
    broken = sorted((folder / "train" / "happy").iterdir())[0]
    content = broken.read_bytes()
    broken.write_bytes(b"")
    out = tmp_path / "out.csv"
    assert main(["convert", str(folder), str(out), "--skip-bad", "--no-progress"]) == 0
    listing = tmp_path / "out.csv.skipped.txt"
    assert listing.exists()
    broken.write_bytes(content)
    assert main(["convert", str(folder), str(out), "--skip-bad", "--no-progress"]) == 0
    assert not listing.exists()


def test_header_only_csv_is_an_error_like_an_empty_folder(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"emotion,pixels,Usage\n")
    with pytest.raises(data.DatasetError, match="no usable images"):
        data.load_fer2013(tmp_path / "empty.csv")


def _npz(path, **overrides):
    arrays = {"images": np.zeros((3, 48, 48), np.uint8), "labels": np.array([0, 3, 6]),
              "splits": np.array([0, 1, 2]), "class_names": np.array(data.CLASS_NAMES)}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("overrides, message", [
    ({"labels": np.array([0, -1, 6])}, r"labels\[1\] is -1, outside 0-6"),
    ({"labels": np.array([0, 9, 6])}, r"labels\[1\] is 9, outside 0-6"),
    ({"images": np.zeros((3, 10, 10), np.uint8)}, r"shape \(3, 10, 10\); expected uint8 \(N, 48, 48\)"),
    ({"labels": np.array([0, 1])}, "expected 3 integers, one per image"),
    ({"splits": np.array([0, 1, 5])}, r"splits\[2\] is 5, outside 0-2"),
])
def test_npz_contents_are_validated(tmp_path, overrides, message):
    with pytest.raises(data.DatasetError, match=message):
        data.load_fer2013(_npz(tmp_path / "bad.npz", **overrides))


def test_a_text_file_named_npz_is_called_what_it_is(tmp_path):
    (tmp_path / "notes.npz").write_text("hello")
    with pytest.raises(data.DatasetError, match="not a .npz archive") as error:
        data.load_fer2013(tmp_path / "notes.npz")
    assert "pickle" not in str(error.value)


def test_leading_zeros_are_not_called_out_of_range(tmp_path):
    row = random_rows(1)[0]
    (tmp_path / "z.csv").write_bytes(csv_rows([["0255"] + row[1:]]))
    with pytest.raises(data.DatasetError, match="pixel value 0255 has leading zeros"):
        data.load_fer2013(tmp_path / "z.csv")


# ---------------------------------------------------------------- archives

def _zip_with(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, content, method in members:
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=method)
    return path


def test_a_zip_bomb_member_is_refused_before_inflating(cartoon, tmp_path):
    folder = write_image_layout(cartoon, tmp_path / "layout")
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*.png"))[:3]:
            z.write(path, path.relative_to(folder).as_posix())
        z.writestr("train/happy/Training_999999.png", b"\0" * (40 * 2**20))  # 40 MiB of zeros, ~40 KB stored
    dataset = data.load_fer2013(archive, on_error="skip", progress=False)
    [record] = dataset.skipped
    assert record.where == "train/happy/Training_999999.png" and "over the limit" in record.problem


def test_a_highly_compressed_member_is_refused(tmp_path):
    archive = _zip_with(tmp_path / "ratio.zip", [("train/happy/Training_1.png", b"\0" * (4 * 2**20), zipfile.ZIP_DEFLATED)])
    # Judged by what it holds (inflated within its 4 MiB directory size), not by its 1000:1 ratio.
    with pytest.raises(data.DatasetError, match=r"Training_1.png: not a decodable image"):
        data.load_fer2013(archive, progress=False)


def test_corrupt_and_encrypted_csv_members_are_named(tmp_path):
    csv_bytes = csv_rows(random_rows(2))
    archive = _zip_with(tmp_path / "bz.zip", [("fer2013.csv", csv_bytes, zipfile.ZIP_BZIP2)])
    raw = bytearray(archive.read_bytes())
    middle = raw.index(b"BZh") + 200
    raw[middle:middle + 40] = b"\xff" * 40
    archive.write_bytes(bytes(raw))
    for on_error in ("raise", "skip"):
        with pytest.raises(data.DatasetError, match="fer2013.csv: corrupt or unreadable zip member"):
            data.load_fer2013(archive, on_error=on_error, progress=False)
    locked = _zip_with(tmp_path / "locked.zip", [("fer2013.csv", csv_bytes, zipfile.ZIP_STORED)])
    raw = bytearray(locked.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        raw[raw.index(signature) + flags_at] |= 0x1  # the "encrypted" bit, as a password-protected zip has
    locked.write_bytes(bytes(raw))
    with pytest.raises(data.DatasetError, match="fer2013.csv: encrypted zip member") as error:
        data.load_fer2013(tmp_path / "locked.zip", progress=False)
    assert "ZipInfo" not in str(error.value)


def test_bad_crc_inside_a_zipped_image_is_a_bad_record(cartoon, tmp_path):
    archive = write_image_layout(cartoon, tmp_path / "x.zip")
    with zipfile.ZipFile(archive) as z:
        info = z.infolist()[5]
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 10] ^= 0xFF
    archive.write_bytes(bytes(raw))
    dataset = data.load_fer2013(archive, on_error="skip", progress=False)
    assert [r.where for r in dataset.skipped] == [info.filename]


# ---------------------------------------------------------------- dataset folders

def test_links_that_lead_nowhere_are_bad_records_not_tracebacks(cartoon, tmp_path):
    folder = write_image_layout(cartoon, tmp_path / "folder")
    happy = folder / "train" / "happy"
    (happy / "Training_900001.png").symlink_to(happy / "missing.png")
    (happy / "Training_900002.png").symlink_to(happy / "Training_900002.png")  # points at itself
    dataset = data.load_fer2013(folder, on_error="skip", progress=False)
    problems = {r.where: r.problem for r in dataset.skipped}
    assert set(problems) == {"train/happy/Training_900001.png", "train/happy/Training_900002.png"}
    assert "broken symbolic link" in problems["train/happy/Training_900001.png"]
    assert len(dataset) == len(cartoon)


def test_a_fifo_in_a_dataset_folder_is_refused_unopened(cartoon, tmp_path):
    folder = write_image_layout(cartoon, tmp_path / "folder")
    os.mkfifo(folder / "train" / "sad" / "Training_900003.png")
    script = (f"from ferkit import data; d = data.load_fer2013({str(folder)!r}, on_error='skip', progress=False); "
              "print([str(r) for r in d.skipped])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Training_900003.png: is a FIFO" in result.stdout


def test_images_in_a_subfolder_of_a_class_folder_are_reported(cartoon, tmp_path):
    folder = write_image_layout(cartoon, tmp_path / "folder")
    nested = folder / "train" / "happy" / "more"
    nested.mkdir()
    source = sorted((folder / "train" / "happy").glob("*.png"))[0]
    (nested / "Training_900004.png").write_bytes(source.read_bytes())
    dataset = data.load_fer2013(folder, on_error="skip", progress=False)
    [record] = dataset.skipped
    assert record.where == "train/happy/more/Training_900004.png" and "subfolder of a class folder" in record.problem


def test_one_image_filed_under_two_classes_is_reported(cartoon, tmp_path):
    folder = write_image_layout(cartoon, tmp_path / "folder")
    source = sorted((folder / "train" / "happy").glob("*.png"))[0]
    (folder / "train" / "sad" / source.name).write_bytes(source.read_bytes())
    dataset = data.load_fer2013(folder, on_error="skip", progress=False)
    assert sorted(r.where for r in dataset.skipped) == [f"train/happy/{source.name}", f"train/sad/{source.name}"]
    assert len(dataset) == len(cartoon) - 1


# ---------------------------------------------------------------- photos: limits and special files

def huge_png(path, width=30000, height=30000):
    """A real, valid grayscale PNG of width x height black pixels (about 1 MB; 900 MB once decoded)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    from ferkit.images import ImageError, load_image

    bomb = huge_png(tmp_path / "bomb.png", 12000, 6000)
    with pytest.raises(ImageError, match=r"12000x6000 is 72 megapixels, over the limit of 50; not decoded"):
        load_image(bomb)
    assert load_image(bomb, max_pixels=None).shape == (6000, 12000, 3)  # the limit is the only obstacle


def test_a_folder_run_skips_the_bomb_and_the_fifo_and_finishes_the_rest(tmp_path):
    pytest.importorskip("keras")
    if not (MODELS / "fer.json").exists():
        pytest.skip("needs the shipped model")
    from ferkit.images import sample_image

    photos = tmp_path / "photos"
    photos.mkdir()
    huge_png(photos / "bomb.png")
    os.mkfifo(photos / "pipe.jpg")
    cv2.imwrite(str(photos / "smile.jpg"), sample_image())
    # VmHWM: this process's own peak (ru_maxrss would include the forking pytest process's size).
    script = ("import sys; from ferkit.cli import main; status = main(sys.argv[1:]); "
              "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]; "
              "print('peak', peak, file=sys.stderr); sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", script, "predict", str(photos), "--json", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=ENV)
    assert result.returncode == 1, result.stderr  # done, but something was skipped
    document = json.loads(result.stdout)
    assert [Path(image["file"]).name for image in document["images"]] == ["smile.jpg"]
    skipped = {Path(s["file"]).name: s["error"] for s in document["skipped"]}
    assert "900 megapixels, over the limit of 50" in skipped["bomb.png"] and "--max-pixels" in skipped["bomb.png"]
    assert "FIFO" in skipped["pipe.jpg"]
    peak_kib = int(result.stderr.split("peak ")[1].split()[0])
    assert peak_kib < 2.5 * 2**20, f"peak memory {peak_kib / 2**20:.1f} GiB: the bomb was decoded"


def test_a_truncated_jpeg_is_refused(tmp_path):
    from ferkit.images import ImageError, load_image, sample_image

    encoded = cv2.imencode(".jpg", sample_image())[1].tobytes()
    with pytest.raises(ImageError, match="truncated JPEG"):
        load_image(encoded[: len(encoded) // 2])
    trailer = encoded + b"\0" * 4096 + b"phone maker's trailer"  # data after the end marker is fine
    assert load_image(trailer).shape == (512, 512, 3)


def test_png_data_named_jpg_is_read_and_reported(tmp_path):
    from ferkit.images import ImageWarning, load_image, sample_image

    cv2.imwrite(str(tmp_path / "real.png"), sample_image())
    (tmp_path / "photo.jpg").write_bytes((tmp_path / "real.png").read_bytes())
    with pytest.warns(ImageWarning, match=r"photo.jpg: named .jpg but holds PNG data"):
        assert load_image(tmp_path / "photo.jpg").shape == (512, 512, 3)


def test_a_jpeg_corrupted_mid_file_is_read_and_reported_by_name():
    from ferkit.images import ImageWarning, load_image, sample_image

    encoded = cv2.imencode(".jpg", sample_image())[1].tobytes()
    scan = encoded.rfind(b"\xff\xda")
    damaged = encoded[:scan + 3000] + b"\xff\xd4garbage" + encoded[scan + 3500:]  # a stray marker, bytes lost
    with pytest.warns(ImageWarning, match=r"^holiday.jpg: damaged JPEG data \(restart marker"):
        assert load_image(damaged, name="holiday.jpg").shape == (512, 512, 3)


def test_keras_start_up_is_quiet_and_stderr_works_after_it():
    script = ("import os, sys\nfrom ferkit.portable import import_keras\nimport_keras()\n"
              "os.write(2, b'C level\\n')\nraise SystemExit('Python level')")
    environment = {key: value for key, value in ENV.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "FERKIT_VERBOSE")}
    quiet = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True)
    assert quiet.stderr.splitlines() == ["C level", "Python level"]  # nothing of TensorFlow's; stderr restored


# ---------------------------------------------------------------- prediction: threads and outputs

@pytest.fixture(scope="module")
def scenes():
    from ferkit.images import sample_image

    astronaut = sample_image()
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        canvas = np.full((480, 640, 3), 90 + 10 * i, np.uint8)
        face = cv2.resize(astronaut[30:230, 120:320], (120 + 10 * i, 120 + 10 * i))
        for x in rng.choice([10, 250, 480 - 10 * i], size=1 + i % 3, replace=False):
            canvas[40:40 + face.shape[0], x:x + face.shape[1]] = face
        out.append(canvas)
    return out


def test_threads_sharing_one_predictor_get_the_sequential_results(random_model, scenes):
    pytest.importorskip("keras")
    from ferkit.prediction import Predictor

    predictor = Predictor(random_model)
    second = Predictor(random_model)  # and two predictors side by side

    def summary(p, image):
        result = p.predict(image, "bgr")
        return [(f.box, f.label, round(f.score, 5)) for f in result.faces]

    expected = [summary(predictor, image) for image in scenes]
    assert sum(len(e) for e in expected) >= 12
    results, errors = {}, []

    def work(worker):
        try:
            for round_ in range(3):
                for i, image in enumerate(scenes):
                    results[worker, round_, i] = summary(predictor if worker % 2 else second, image)
        except Exception as error:  # noqa: BLE001 - any failure is the bug
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(results[w, r, i] == expected[i] for w in range(4) for r in range(3) for i in range(len(scenes)))


def test_predict_reports_only_files_it_wrote(random_model, tmp_path, capsys):
    from ferkit.images import sample_image

    cv2.imwrite(str(tmp_path / "photo.jpg"), sample_image())
    (tmp_path / "taken").write_text("a file where the output folder should be")
    assert main(["predict", str(tmp_path / "photo.jpg"), "--model", str(random_model),
                 "--out", str(tmp_path / "taken")]) == 2
    captured = capsys.readouterr()
    assert "wrote" not in captured.err and "taken: is a file; the output must be a folder" in captured.err


def test_a_video_without_frames_is_an_error_and_writes_nothing(random_model, tmp_path, capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert main(["predict", str(tmp_path / "empty.mp4"), "--model", str(random_model), "--out", str(tmp_path / "out")]) == 2
    assert "empty.mp4" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_recursive_folders_keep_names_apart_and_csv_has_a_row_per_face(random_model, tmp_path, capsys):
    from ferkit.images import sample_image

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("face.jpg", "face.png", "sub/face.jpg"):
        cv2.imwrite(str(photos / name), sample_image())
    (photos / "clip.gif").write_bytes(b"GIF89a")
    assert main(["predict", str(photos), "--model", str(random_model), "--out", str(tmp_path / "out"),
                 "--recursive", "--csv"]) == 1  # the .gif is reported, so the status says a file was skipped
    captured = capsys.readouterr()
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [Path(r["file"]).relative_to(photos).as_posix() for r in rows] == ["face.jpg", "face.png", "sub/face.jpg"]
    assert all(int(r["width"]) > 50 and abs(sum(float(v) for k, v in r.items() if k.startswith("p_")) - 1) < 0.01
               for r in rows)
    assert "clip.gif: not an image" in captured.err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*")
                     if not p.name.startswith("."))
    assert written == ["face_annotated.jpg", "face_annotated.png", "sub/face_annotated.jpg"]
    ledger = (tmp_path / "out" / ".ferkit-outputs").read_text().splitlines()  # what later runs may replace
    assert sorted(json.loads(line) for line in ledger) == written


def test_a_folder_of_only_subfolders_says_to_recurse(random_model, tmp_path, capsys):
    (tmp_path / "photos" / "2024").mkdir(parents=True)
    assert main(["predict", str(tmp_path / "photos"), "--model", str(random_model)]) == 2
    assert "add --recursive" in capsys.readouterr().err


def test_predict_from_another_folder_prints_one_json_document_and_no_tensorflow_noise(tmp_path):
    if not (MODELS / "fer.json").exists():
        pytest.skip("needs the shipped model")
    from ferkit.images import sample_image

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.jpg"), sample_image())
    cv2.imwrite(str(photos / "b.png"), sample_image())
    env = {k: v for k, v in ENV.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FERKIT_MODEL")}
    result = subprocess.run([sys.executable, "-m", "ferkit", "predict", "photos", "--json"], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [image["faces"][0]["label"] for image in document["images"]] == ["happy", "happy"]
    assert (tmp_path / "annotated" / "a_annotated.jpg").exists()  # the default --out, not results/
    noise = [line for line in result.stderr.splitlines() if line[:5] in ("E0000", "I0000", "W0000")]
    assert not noise, noise


# ---------------------------------------------------------------- model files

@pytest.fixture()
def model_copy(random_model, tmp_path):
    import shutil

    for path in random_model.parent.glob("fer*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / "fer"


@pytest.mark.parametrize("damage, message", [
    (lambda m: m.with_suffix(".h5").write_bytes(b""), "fer.h5: cannot load these weights"),
    (lambda m: m.with_suffix(".h5").write_text("not hdf5"), "fer.h5: cannot load these weights"),
    (lambda m: m.with_suffix(".h5").write_bytes(m.with_suffix(".h5").read_bytes()[:5000]), "fer.h5: cannot load"),
    (lambda m: m.with_suffix(".json").write_text("{}"), "fer.json: not a Keras model config"),
    (lambda m: m.with_suffix(".json").write_text("{broken"), "fer.json: not readable JSON"),
    (lambda m: _edit_meta(m, colour="blue"), "fer.meta.json: unknown setting"),
    (lambda m: _edit_meta(m, face_margin=-0.6), "fer.meta.json: face_margin must be"),
    (lambda m: _edit_meta(m, input_size=64), "fer.meta.json: input_size 64 does not match"),
    (lambda m: _edit_meta(m, face_low_contrast={"below_std": 30}), "fer.meta.json: face_low_contrast must be"),
    (lambda m: _edit_meta(m, face_low_contrast={"below_std": 30, "mean": 128, "std": 0}),
     "fer.meta.json: face_low_contrast must be"),
    (lambda m: m.with_name("fer.meta.json").write_text("[1,"), "fer.meta.json: not readable JSON"),
])
def test_damaged_model_files_are_named_with_what_to_do(model_copy, damage, message):
    from ferkit.model import ModelError, load_model

    damage(model_copy)
    with pytest.raises(ModelError, match=message):
        load_model(model_copy)


def _edit_meta(stem, **changes):
    path = stem.with_name("fer.meta.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_the_model_is_found_from_any_folder_and_through_the_environment(random_model, tmp_path, monkeypatch):
    pytest.importorskip("keras")
    from ferkit import model

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(model.MODEL_ENV, raising=False)
    if (MODELS / "fer.json").exists():
        assert model.resolve_model() == MODELS / "fer"
    monkeypatch.setenv(model.MODEL_ENV, str(random_model))
    assert model.resolve_model() == random_model
    assert model.resolve_model("elsewhere/mine") == Path("elsewhere/mine")  # a path given is taken as it is


def test_take_photo_in_a_plain_script_says_what_to_do_at_once(tmp_path):
    script = "from ferkit.webcam import take_photo\ntake_photo()\n"
    env = {k: v for k, v in ENV.items() if k != "FERKIT_WEBCAM_FILE"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode != 0 and "needs a notebook" in result.stderr and "FERKIT_WEBCAM_FILE" in result.stderr
