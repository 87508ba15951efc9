"""Generated inputs: whatever a reader is given, it returns correct data or a DatasetError / ImageError.

Hypothesis builds CSV files from good and damaged rows, byte strings that are
almost images, and zip archives with arbitrary members; every other exception
(IndexError, cv2.error, a pixel shifted without a word) is a bug.
"""

import zipfile

import cv2
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from ferkit import data  # noqa: E402
from ferkit.images import ImageError, load_image  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Ways to damage one row's pixel field, each a function of (values as strings, draw).
DAMAGE = ["extra", "missing", "letter", "negative", "too_big", "double_space", "empty", "leading_zero"]


def _damage(tokens, kind, position):
    tokens = list(tokens)
    position %= len(tokens)
    if kind == "extra":
        tokens.insert(position, "7")
    elif kind == "missing":
        del tokens[position]
    elif kind == "letter":
        tokens[position] = "1x"
    elif kind == "negative":
        tokens[position] = "-3"
    elif kind == "too_big":
        tokens[position] = "256"
    elif kind == "empty":
        return ""
    elif kind == "leading_zero":
        tokens[position] = "0" + tokens[position].rjust(3, "0")
    text = " ".join(tokens)
    return text.replace(" ", "  ", 1) if kind == "double_space" else text


@st.composite
def fer_csv(draw):
    """(CSV bytes, the good rows' pixels, the 1-based line numbers of the damaged rows)."""
    n = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 2304), dtype=np.uint8)
    lines, good, bad_lines = ["emotion,pixels,Usage"], [], []
    for i in range(n):
        tokens = [str(v) for v in pixels[i]]
        kind = draw(st.sampled_from([None, None, *DAMAGE]))
        field = " ".join(tokens) if kind is None else _damage(tokens, kind, draw(st.integers(0, 2303)))
        if kind == "double_space":  # tolerated: the values are all there
            kind = None
        lines.append(f"{draw(st.integers(0, 6))},{field},{draw(st.sampled_from(data.SPLITS))}")
        if kind is None:
            good.append(pixels[i])
        else:
            bad_lines.append(i + 2)
    return ("\n".join(lines) + "\n").encode(), np.array(good, np.uint8).reshape(-1, 48, 48), bad_lines


@FUZZ
@given(fer_csv())
def test_csv_rows_are_each_read_or_reported(tmp_path_factory, case):
    content, good, bad_lines = case
    path = tmp_path_factory.mktemp("csv") / "fuzz.csv"
    path.write_bytes(content)
    if len(good) == 0:
        with pytest.raises(data.DatasetError):
            data.load_fer2013(path, on_error="skip", progress=False)
        return
    dataset = data.load_fer2013(path, on_error="skip", progress=False)
    np.testing.assert_array_equal(dataset.images, good)  # every good row, unshifted, in order
    assert [int(r.where.rsplit(" ", 1)[1]) for r in dataset.skipped] == bad_lines


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_are_an_image_or_an_image_error(blob):
    try:
        image = load_image(blob)
    except ImageError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _encoded(suffix):
    rng = np.random.default_rng(0)
    picture = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (64, 48))
    return cv2.imencode(suffix, picture)[1].tobytes()


@FUZZ
@given(suffix=st.sampled_from([".jpg", ".png", ".bmp", ".webp"]), cut=st.floats(0, 1),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=6))
def test_damaged_images_are_read_or_refused_by_name(suffix, cut, flips):
    blob = bytearray(_encoded(suffix))
    for where, value in flips:
        blob[int(where * (len(blob) - 1))] ^= value
    blob = bytes(blob[: max(1, int(len(blob) * cut))]) if cut < 1 else bytes(blob)
    try:
        image = load_image(blob, name="fuzzed" + suffix)
    except ImageError as error:
        assert str(error).startswith("fuzzed" + suffix)
        return
    assert image.shape[2] == 3 and image.dtype == np.uint8


member_names = st.one_of(
    st.sampled_from(["train/happy/Training_1.png", "test/sad/PublicTest_2.png", "test/sad/PrivateTest_3.png",
                     "train/joy/Training_4.png", "test/happy/Training_5.png", "README.txt", "train/happy/",
                     "fer/train/angry/Training_6.png", "train/happy/x/Training_7.png", "__MACOSX/._a.png"]),
    st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\\"), min_size=1, max_size=30))


@pytest.mark.filterwarnings("ignore:Duplicate name")  # repeated member names are one of the cases
@FUZZ
@given(st.lists(st.tuples(member_names, st.sampled_from(["face", "junk", "empty", "big"]),
                          st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])), min_size=1, max_size=8),
       st.sampled_from(["raise", "skip"]))
def test_arbitrary_archives_give_a_dataset_or_a_dataset_error(tmp_path_factory, members, on_error):
    face = cv2.imencode(".png", np.full((48, 48), 120, np.uint8))[1].tobytes()
    contents = {"face": face, "junk": b"not an image", "empty": b"", "big": cv2.imencode(".png", np.zeros((96, 96), np.uint8))[1].tobytes()}
    path = tmp_path_factory.mktemp("zip") / "fuzz.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, kind, method in members:
            archive.writestr(zipfile.ZipInfo(name), contents[kind], compress_type=method)
    try:
        dataset = data.load_fer2013(path, on_error=on_error, progress=False)
    except data.DatasetError:
        return
    assert dataset.images.shape[1:] == (48, 48) and len(dataset) == len(dataset.labels) > 0
    assert set(np.unique(dataset.images)) <= {120}


@FUZZ
@given(st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_csv_and_npz_round_trip_exactly(tmp_path_factory, n, seed):
    rng = np.random.default_rng(seed)
    dataset = data.FerDataset(images=rng.integers(0, 256, (n, 48, 48), dtype=np.uint8),
                              labels=rng.integers(0, 7, n), splits=rng.integers(0, 3, n).astype(np.int8))
    folder = tmp_path_factory.mktemp("round")
    for written in (data.write_csv(dataset, folder / "a.csv", progress=False), data.write_npz(dataset, folder / "a.npz")):
        again = data.load_fer2013(written, progress=False)
        np.testing.assert_array_equal(again.images, dataset.images, err_msg=written.name)
        np.testing.assert_array_equal(again.labels, dataset.labels, err_msg=written.name)
        np.testing.assert_array_equal(again.splits, dataset.splits, err_msg=written.name)
