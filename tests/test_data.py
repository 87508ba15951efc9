"""Reading every FER-2013 format, the CSV round trip, subsets, and each bad input."""

import csv
import io
import re
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from ferkit import data
from ferkit.data import CLASS_NAMES, DatasetError, load_fer2013, select_classes, write_csv, write_npz
from ferkit.sample import write_image_layout

# The original challenge's label order, as fer2013.csv and the dataset README define it.
ORIGINAL_IDS = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4, "surprise": 5, "neutral": 6}


def assert_same(a, b):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.splits, b.splits)
    assert a.class_names == b.class_names


def png(image):
    return cv2.imencode(".png", image)[1].tobytes()


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return path


GRAY = np.full((48, 48), 100, np.uint8)


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("target", ["layout.zip", "layout_folder"])
def test_image_layouts_read_back_exactly(cartoon, tmp_path, target):
    written = write_image_layout(cartoon, tmp_path / target)
    assert_same(load_fer2013(written, progress=False), cartoon)


def test_csv_and_npz_round_trip(cartoon, tmp_path):
    csv_path = write_csv(cartoon, tmp_path / "out.csv", progress=False)
    npz_path = write_npz(cartoon, tmp_path / "out.npz")
    assert_same(load_fer2013(csv_path), cartoon)
    assert_same(load_fer2013(npz_path), cartoon)


def test_csv_inside_a_zip(cartoon, tmp_path):
    csv_path = write_csv(cartoon, tmp_path / "fer2013.csv", progress=False)
    with zipfile.ZipFile(tmp_path / "archive.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(csv_path, "fer2013.csv")
    assert_same(load_fer2013(tmp_path / "archive.zip"), cartoon)


def test_written_csv_has_the_challenge_schema(cartoon, tmp_path):
    path = write_csv(cartoon, tmp_path / "out.csv", progress=False)
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == ["emotion", "pixels", "Usage"]
    assert len(rows) == len(cartoon)
    for row, image, label, split in zip(rows, cartoon.images, cartoon.labels, cartoon.splits):
        assert int(row["emotion"]) == ORIGINAL_IDS[CLASS_NAMES[label]]
        assert row["Usage"] == data.SPLITS[split]
        assert [int(v) for v in row["pixels"].split(" ")] == image.ravel().tolist()


def test_folder_names_map_to_original_label_ids(tmp_path):
    members = {f"train/{name}/Training_{i}.png": png(GRAY + i) for i, name in enumerate(ORIGINAL_IDS)}
    loaded = load_fer2013(make_zip(tmp_path / "a.zip", members), progress=False)
    by_value = {int(img[0, 0]) - 100: CLASS_NAMES[label] for img, label in zip(loaded.images, loaded.labels)}
    assert by_value == dict(enumerate(ORIGINAL_IDS))


def test_rows_are_ordered_by_split_then_id(tmp_path):
    members = {
        "test/happy/PrivateTest_5.png": png(GRAY), "train/sad/Training_20.png": png(GRAY),
        "test/happy/PublicTest_9.png": png(GRAY), "train/angry/Training_3.png": png(GRAY),
    }
    loaded = load_fer2013(make_zip(tmp_path / "a.zip", members), progress=False)
    assert [data.SPLITS[s] for s in loaded.splits] == ["Training", "Training", "PublicTest", "PrivateTest"]
    assert [CLASS_NAMES[l] for l in loaded.labels] == ["angry", "sad", "happy", "happy"]


def test_zip_with_top_folder_and_os_junk(tmp_path):
    members = {
        "fer2013/train/happy/Training_1.png": png(GRAY), "fer2013/test/sad/PublicTest_2.png": png(GRAY),
        "__MACOSX/fer2013/train/happy/._Training_1.png": b"junk", "fer2013/train/.DS_Store": b"junk",
        "fer2013/README.txt": b"not data",
    }
    loaded = load_fer2013(make_zip(tmp_path / "a.zip", members), progress=False)
    assert len(loaded) == 2 and not loaded.skipped


def test_jpeg_pixels_equal_an_independent_decoder(tmp_path, cartoon):
    path = write_image_layout(cartoon, tmp_path / "jpg.zip", ".jpg")
    loaded = load_fer2013(path, progress=False)
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist(), key=lambda n: (data.SPLITS.index(n.split("/")[-1].split("_")[0]),
                                                          int(n.split("_")[-1].split(".")[0])))
        for name, image in zip(names, loaded.images):
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(archive.read(name)))), image)


def test_csv_variants_crlf_quotes_spaces_and_column_order(tmp_path, cartoon):
    image = cartoon.images[0].ravel()
    pixels = " ".join(map(str, image))
    text = ("emotion, Usage, pixels\r\n"  # column order and spacing of Kaggle's icml_face_data.csv
            f'3,Training,"{pixels}"\r\n'
            f"5,PublicTest,  {pixels.replace(' ', '  ')} \r\n"
            "\r\n")
    (tmp_path / "v.csv").write_text(text)
    loaded = load_fer2013(tmp_path / "v.csv")
    assert [CLASS_NAMES[l] for l in loaded.labels] == ["happy", "surprise"]
    assert (loaded.images == image.reshape(48, 48)).all()


# ---------------------------------------------------------------- bad image inputs


@pytest.mark.parametrize("payload, expected", [
    (b"", "empty file (0 bytes)"),
    (b"this is not an image at all", "not a decodable image"),
    (cv2.imencode(".jpg", GRAY)[1].tobytes()[:300], "truncated JPEG"),
    (png(np.zeros((64, 60), np.uint8)), "image is 60x64, expected 48x48"),
])
def test_bad_images_are_named_with_their_problem(tmp_path, payload, expected):
    path = make_zip(tmp_path / "a.zip", {"train/happy/Training_1.png": png(GRAY),
                                         "train/sad/Training_2.jpg": payload})
    with pytest.raises(DatasetError, match=re.escape("train/sad/Training_2.jpg: " + expected)):
        load_fer2013(path, progress=False)
    skipped = load_fer2013(path, on_error="skip", progress=False)
    assert len(skipped) == 1 and CLASS_NAMES[skipped.labels[0]] == "happy"
    assert [r.where for r in skipped.skipped] == ["train/sad/Training_2.jpg"]
    assert expected in skipped.skipped[0].problem


def test_resize_only_when_asked(tmp_path):
    big = np.tile(np.arange(96, dtype=np.uint8), (96, 1))
    folder = tmp_path / "f"
    (folder / "train" / "happy").mkdir(parents=True)
    (folder / "train" / "happy" / "Training_1.png").write_bytes(png(big))
    with pytest.raises(DatasetError, match="96x96"):
        load_fer2013(folder, progress=False)
    loaded = load_fer2013(folder, resize=True, progress=False)
    np.testing.assert_array_equal(loaded.images[0], cv2.resize(big, (48, 48), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("name, expected", [
    ("train/contempt/Training_1.png", "unknown class folder 'contempt'"),
    ("test/happy/img_1.png", "must start with PublicTest_ or PrivateTest_"),
    ("train/happy/PrivateTest_1.png", "a PrivateTest image inside train/"),
    ("train/happy/Training_1.txt", "not an image file"),
])
def test_layout_violations(tmp_path, name, expected):
    path = make_zip(tmp_path / "a.zip", {name: png(GRAY), "train/sad/Training_2.png": png(GRAY)})
    with pytest.raises(DatasetError, match=re.escape(expected)):
        load_fer2013(path, progress=False)


def test_error_lists_every_bad_record(tmp_path):
    members = {f"train/happy/Training_{i}.png": b"" for i in range(12)}
    members["train/sad/Training_99.png"] = png(GRAY)
    with pytest.raises(DatasetError, match=r"12 bad records(.|\n)*and 2 more"):
        load_fer2013(make_zip(tmp_path / "a.zip", members), progress=False)


@pytest.mark.parametrize("name", ["../evil/train/happy/Training_1.png", "/abs/train/happy/Training_1.png",
                                  "train/../../happy/Training_1.png"])
def test_zip_slip_is_refused(tmp_path, name):
    path = make_zip(tmp_path / "a.zip", {"train/sad/Training_2.png": png(GRAY), name: png(GRAY)})
    with pytest.raises(DatasetError, match="unsafe member path"):
        load_fer2013(path, progress=False)


def test_not_a_zip(tmp_path):
    (tmp_path / "fer2013.zip").write_bytes(b"<html>Please log in to Kaggle</html>")
    with pytest.raises(DatasetError, match="not a zip archive"):
        load_fer2013(tmp_path / "fer2013.zip")


def test_corrupt_zip_member_is_caught_by_crc(tmp_path):
    path = make_zip(tmp_path / "a.zip", {"train/happy/Training_1.png": png(GRAY)})
    raw = bytearray(path.read_bytes())
    payload = png(GRAY)
    at = raw.find(payload) + len(payload) // 2
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="CRC mismatch"):
        load_fer2013(path, progress=False)


def test_missing_path_and_missing_setting(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_fer2013(tmp_path / "nope.zip")
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    with pytest.raises(DatasetError, match=f"\\${data.DATA_ENV} is not set"):
        load_fer2013()


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no images found"):
        load_fer2013(tmp_path, progress=False)


# ---------------------------------------------------------------- bad CSV inputs

PIXELS = " ".join(["7"] * 2304)


@pytest.mark.parametrize("row, expected", [
    ("3," + " ".join(["7"] * 2303) + ",Training", "expected 2304 pixel values, found 2303"),
    ("3," + PIXELS + " 7,Training", "expected 2304 pixel values, found 2305"),
    ("3," + "256 " + PIXELS[2:] + ",Training", "pixel value 256 is out of range 0-255"),
    ("3," + "1000 " + PIXELS[2:] + ",Training", "pixel value 1000 is out of range 0-255"),
    ("3," + "-1 " + PIXELS[2:] + ",Training", "pixels hold '-'"),
    ("3," + "7.5 " + PIXELS[2:] + ",Training", "pixels hold '.'"),
    ("7," + PIXELS + ",Training", "emotion '7' is not a label id 0-6"),
    ("happy," + PIXELS + ",Training", "emotion 'happy' is not a label id 0-6"),
    ("3," + PIXELS + ",Validation", "unknown Usage 'Validation'"),
    ("3," + PIXELS, "expected 3 comma-separated fields, found 2"),
])
def test_bad_csv_rows_name_their_line(tmp_path, row, expected):
    good = "0," + PIXELS + ",Training"
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(["emotion,pixels,Usage", good, row, good]) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"bad.csv line 3: {expected}")):
        load_fer2013(path)
    skipped = load_fer2013(path, on_error="skip")
    assert len(skipped) == 2 and (skipped.images == 7).all()
    assert len(skipped.skipped) == 1
    assert str(skipped.skipped[0]).startswith(f"bad.csv line 3: {expected}")


def test_csv_missing_column(tmp_path):
    (tmp_path / "train.csv").write_text("emotion,pixels\n0," + PIXELS + "\n")
    with pytest.raises(DatasetError, match="missing column.s. usage"):
        load_fer2013(tmp_path / "train.csv")


def test_unrecognised_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(DatasetError, match="not a FER-2013 zip, folder, CSV or .npz"):
        load_fer2013(tmp_path / "notes.txt")


# ---------------------------------------------------------------- subsets


def test_fer5_drops_disgust_and_fear_and_renumbers(cartoon):
    subset = select_classes(cartoon, "fer5")
    assert subset.class_names == ("angry", "happy", "sad", "surprise", "neutral")
    original = np.array(CLASS_NAMES)[cartoon.labels]
    kept = ~np.isin(original, ["disgust", "fear"])
    np.testing.assert_array_equal(np.array(subset.class_names)[subset.labels], original[kept])
    np.testing.assert_array_equal(subset.images, cartoon.images[kept])
    assert subset.label_map["fear"] is None and subset.label_map["sad"] == "sad"


def test_merge_disgust_into_angry(cartoon):
    subset = select_classes(cartoon, merge={"disgust": "angry"})
    assert "disgust" not in subset.class_names and len(subset) == len(cartoon)
    original = np.array(CLASS_NAMES)[cartoon.labels]
    expected = np.where(original == "disgust", "angry", original)
    np.testing.assert_array_equal(np.array(subset.class_names)[subset.labels], expected)
    assert subset.label_map["disgust"] == "angry"
    assert subset.counts()["Training"]["angry"] == 2 * cartoon.counts()["Training"]["angry"]


def test_custom_order_and_composed_selection(cartoon):
    first = select_classes(cartoon, "fer6")
    second = select_classes(first, ["happy", "angry"])
    assert second.class_names == ("happy", "angry")
    assert second.label_map == {"angry": "angry", "disgust": "angry", "fear": None, "happy": "happy",
                                "sad": None, "surprise": None, "neutral": None}
    names = np.array(second.class_names)[second.labels]
    assert (names == "angry").sum() == 2 * (np.array(CLASS_NAMES)[cartoon.labels] == "angry").sum()


@pytest.mark.parametrize("keep, merge, expected", [
    (["happy", "joy"], None, "unknown class 'joy'"),
    ("fer9", None, "unknown subset 'fer9'"),
    (["happy", "sad"], {"disgust": "angry"}, "'angry' is not among the kept classes"),
    (["happy", "happy"], None, "repeat"),
])
def test_subset_errors(cartoon, keep, merge, expected):
    with pytest.raises(ValueError, match=expected):
        select_classes(cartoon, keep, merge)


def test_subsets_cannot_be_written_as_original_csv(cartoon, tmp_path):
    with pytest.raises(ValueError, match="full 7-class"):
        write_csv(select_classes(cartoon, "fer5"), tmp_path / "x.csv")


# ---------------------------------------------------------------- summaries


def test_image_stats_expose_blur(cartoon):
    sharp = data.image_stats(cartoon.images)
    blurred = data.image_stats(np.stack([cv2.GaussianBlur(i, (5, 5), 1.5) for i in cartoon.images]))
    assert blurred["sharpness"] < 0.5 * sharp["sharpness"]
    assert abs(blurred["mean"] - sharp["mean"]) < 2
    flat = data.image_stats(np.full((3, 48, 48), 80, np.uint8))
    assert flat == {"mean": 80.0, "contrast": 0.0, "sharpness": 0.0}


def test_counts_and_summary_table(cartoon):
    counts = cartoon.counts()
    assert counts["PublicTest"]["fear"] == 4 and sum(counts["Training"].values()) == 28
    table = data.summary_table(cartoon)
    assert table.splitlines()[0].split()[:3] == ["split", "angry", "disgust"]
    assert table.splitlines()[-1].split()[-1] == str(len(cartoon))


# ---------------------------------------------------------------- hostile inputs: bounded work and memory

import os  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
import zlib  # noqa: E402


def npy_bytes(descr, shape, payload=b"", fortran_order=False):
    """A .npy file whose header says whatever the test wants, followed by ``payload``."""
    header = repr({"descr": descr, "fortran_order": fortran_order, "shape": shape}).encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def ferkit_npz(path, **members):
    """A valid three-image ferkit .npz, with ``members`` ({"images": npy bytes, ...}) replacing its arrays."""
    arrays = {"images": np.zeros((3, 48, 48), np.uint8), "labels": np.array([0, 3, 6]),
              "splits": np.array([0, 1, 2]), "class_names": np.array(CLASS_NAMES)}
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            if name not in members:
                buffer = io.BytesIO()
                np.save(buffer, array)
                members[name] = buffer.getvalue()
            archive.writestr(f"{name}.npy", members[name])
    return path


@pytest.mark.parametrize("member, descr, shape", [
    ("images", "|u1", (99999999, 48, 48)),  # the report: 215 GiB asked of a 1 KB file
    ("class_names", "<U0", (10**7,)),  # zero bytes per element, but ten million to loop over
])
def test_npz_header_declaring_more_than_the_file_holds_is_refused_unallocated(tmp_path, member, descr, shape):
    path = ferkit_npz(tmp_path / "bomb.npz", **{member: npy_bytes(descr, shape, b"\0" * 256)})
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=re.escape(f"bomb.npz: {member}.npy: its header declares")) as error:
            load_fer2013(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"shape {shape}" in str(error.value) and "truncated or damaged" in str(error.value)
    assert peak < 2**20, f"{peak / 2**20:.0f} MiB allocated for a {path.stat().st_size}-byte file"


def png_of_size(width, height):
    """A valid grayscale PNG of width x height black pixels: small on disk, width*height bytes decoded."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    body = zlib.compress(b"\0" * ((width + 1) * height), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def jpeg_declaring(width, height):
    """A 48x48 JPEG whose start-of-frame header claims width x height."""
    data = bytearray(cv2.imencode(".jpg", GRAY)[1].tobytes())
    frame = data.index(b"\xff\xc0")
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_declaring(width, height):
    data = bytearray(cv2.imencode(".bmp", GRAY)[1].tobytes())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


LIMIT = "over the limit of 16.8 megapixels for a dataset image; not decoded"


@pytest.mark.parametrize("name, payload, expected", [
    ("Training_2.png", png_of_size(5000, 5000), f"image is 5000x5000 (25 megapixels), {LIMIT}"),
    ("Training_2.jpg", jpeg_declaring(5000, 5000), f"image is 5000x5000 (25 megapixels), {LIMIT}"),
    ("Training_2.bmp", bmp_declaring(5000, 5000), f"image is 5000x5000 (25 megapixels), {LIMIT}"),
    ("Training_2.bmp", bmp_declaring(30000, 30000), f"image is 900 megapixels, {LIMIT}"),  # Pillow refuses it too
])
def test_images_over_the_pixel_limit_are_refused_from_their_header(tmp_path, monkeypatch, name, payload, expected):
    path = make_zip(tmp_path / "a.zip", {"train/happy/Training_1.png": png(GRAY), f"train/sad/{name}": payload})
    decoded = []
    real_imdecode = cv2.imdecode
    monkeypatch.setattr(cv2, "imdecode", lambda buffer, flags: decoded.append(len(buffer)) or real_imdecode(buffer, flags))
    loaded = load_fer2013(path, resize=True, on_error="skip", progress=False)  # resize allows larger, not unbounded
    [record] = loaded.skipped
    assert record.where == f"train/sad/{name}"
    assert record.problem.startswith(expected)
    assert len(loaded) == 1 and decoded == [len(png(GRAY))]  # the large one was never decoded


def test_an_image_of_the_wrong_size_is_refused_before_decoding_unless_resized(tmp_path, monkeypatch):
    path = make_zip(tmp_path / "a.zip", {"train/sad/Training_2.png": png_of_size(2000, 1000)})
    monkeypatch.setattr(cv2, "imdecode", lambda *args: pytest.fail("decoded an image its header ruled out"))
    with pytest.raises(DatasetError, match=re.escape("Training_2.png: image is 2000x1000, expected 48x48 (pass resize")):
        load_fer2013(path, progress=False)


def test_an_overlong_csv_row_is_reported_by_line_and_never_held(tmp_path):
    good = "0," + PIXELS + ",Training"
    path = tmp_path / "long.csv"
    path.write_text("\n".join(["emotion,pixels,Usage", good, "3," + "1 " * (4 * 2**20) + ",Training", good]) + "\n")
    tracemalloc.start()
    try:
        loaded = load_fer2013(path, on_error="skip")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(loaded) == 2 and [str(r) for r in loaded.skipped] == [
        "long.csv line 3: row is 8.0 MiB long, over the limit of 1 MiB per row (a FER-2013 row is about 9 KB: "
        "2304 pixel values); not read. Is each image on a line of its own?"]
    assert peak < 6 * 2**20, f"peak {peak / 2**20:.1f} MiB while reading an 8 MiB row: it was held"


def test_a_csv_without_line_breaks_is_named_not_parsed(tmp_path):
    path = tmp_path / "one_line.csv"
    path.write_bytes(b"emotion,pixels,Usage" + b" 7" * 2**20)
    with pytest.raises(DatasetError, match=r"one_line.csv: the first line is 2.0 MiB long; a FER-2013 CSV starts "):
        load_fer2013(path)


@pytest.mark.parametrize("row, expected", [
    ("3," + "0" * 5000 + "7 " + PIXELS[2:] + ",Training", "pixel value 00000000000000000000... has leading zeros"),
    ("3," + "9" * 5000 + " " + PIXELS[2:] + ",Training", "pixel value 99999999999999999999... is out of range 0-255"),
    ("3" * 5000 + "," + PIXELS + ",Training", "emotion '33333333333333333333...' is not a label id 0-6"),
])
def test_numbers_of_thousands_of_digits_are_bad_rows_not_int_errors(tmp_path, row, expected):
    path = tmp_path / "digits.csv"
    path.write_text("\n".join(["emotion,pixels,Usage", "0," + PIXELS + ",Training", row]) + "\n")
    loaded = load_fer2013(path, on_error="skip")
    [record] = loaded.skipped
    assert str(record).startswith(f"digits.csv line 3: {expected}")


def test_a_zipped_csv_of_uniform_faces_is_not_called_a_zip_bomb(tmp_path):
    rows = "\n".join("0," + " ".join(["0"] * 2304) + ",Training" for _ in range(600))
    with zipfile.ZipFile(tmp_path / "black.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fer2013.csv", "emotion,pixels,Usage\n" + rows + "\n")  # compresses ~690:1
        info = archive.infolist()[0]
    assert info.file_size / info.compress_size > 500
    loaded = load_fer2013(tmp_path / "black.zip")
    assert len(loaded) == 600 and not loaded.images.any()


def test_thousands_of_bad_csv_rows_are_reported_quickly(tmp_path):
    tokens = {"300": "pixel value 300 is out of range 0-255", "-5": "pixels hold '-'", "abc": "pixels hold 'a'"}
    rows = [f"3,{' '.join([token] * 2304)},Training" for token in [*tokens, *["300"] * 2997]]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(["emotion,pixels,Usage", "0," + PIXELS + ",Training", *rows]) + "\n")
    started = time.process_time()  # CPU time of all threads: what the work costs, whatever else the machine runs
    loaded = load_fer2013(path, on_error="skip")
    elapsed = time.process_time() - started
    assert len(loaded) == 1 and len(loaded.skipped) == 3000
    for record, expected in zip(loaded.skipped[:3], tokens.values()):
        assert record.problem.startswith(expected)
    assert [r.where for r in loaded.skipped[-2:]] == ["bad.csv line 3001", "bad.csv line 3002"]
    assert elapsed < 2.0, f"{elapsed:.1f} s of CPU for 3,000 bad rows"


def test_linked_class_folders_are_read_and_link_loops_reported(tmp_path):
    folder = tmp_path / "fer"
    (folder / "train" / "sad").mkdir(parents=True)
    (folder / "train" / "sad" / "Training_1.png").write_bytes(png(GRAY))
    elsewhere = tmp_path / "happy_faces"
    elsewhere.mkdir()
    (elsewhere / "Training_2.png").write_bytes(png(GRAY + 1))
    (folder / "train" / "happy").symlink_to(elsewhere)  # e.g. classes kept on another disk
    (folder / "train" / "surprise").symlink_to(elsewhere)  # a second path to the same images
    (folder / "train" / "sad" / "loop").symlink_to(folder / "train")  # points at an enclosing folder
    loaded = load_fer2013(folder, on_error="skip", progress=False)
    assert sorted(CLASS_NAMES[label] for label in loaded.labels) == ["happy", "sad"]
    problems = {r.where: r.problem for r in loaded.skipped}
    assert set(problems) == {"train/sad/loop", "train/surprise"}
    assert problems["train/sad/loop"].startswith("link to the enclosing folder 'train'; not followed")
    assert problems["train/surprise"].startswith("the same folder as 'train/happy', which is read; not read twice")


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path, monkeypatch):
    folder = tmp_path / "fer"
    for name in ("happy", "sad"):
        (folder / "train" / name).mkdir(parents=True)
        (folder / "train" / name / f"Training_{len(name)}.png").write_bytes(png(GRAY))
    real_scandir = os.scandir

    def scandir(path="."):  # as for a folder without read permission (which root, running tests, ignores)
        if str(path).endswith("sad"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    loaded = load_fer2013(folder, on_error="skip", progress=False)
    assert len(loaded) == 1
    assert [str(r) for r in loaded.skipped] == ["train/sad: cannot list this folder (Permission denied); "
                                                "check its permissions"]
