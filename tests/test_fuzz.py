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


# ---------------------------------------------------------------------------- the web server's API

#: Host headers ``fuzz_app`` answers to; every generated foreign one starts with "h", which none of these does.
OWN_HOSTS = ["testserver", "127.0.0.1:8000", "localhost", "[::1]:8000", "TestServer:80"]
FOREIGN_ORIGINS = ["http://evil.example", "null", "", "http://testserver.evil.example", "https://testserver",
                   "http://testserver:8080", "http://127.0.0.1:9999", "file://", "http://[::1"]
#: Header values as a client may send them: any Latin-1 character, control characters included.
latin1 = st.text(st.characters(max_codepoint=255), max_size=150)


@st.composite
def http_requests(draw):
    """(method, path, headers, body, whether the Host is foreign, whether it is a cross-site state change).

    Half come as the page or curl would send them (own host, own origin or none), so that uploads get through;
    the other half pick each of Host, Origin, Referer and Sec-Fetch-Site from own, foreign and junk values."""
    hostile = draw(st.booleans())
    foreign_host = hostile and draw(st.booleans())
    host = (draw(st.from_regex(r"h[a-z0-9.\-]{0,30}(:[0-9]{1,5})?", fullmatch=True)) if foreign_host
            else draw(st.sampled_from(OWN_HOSTS)))
    headers = {"Host": host}
    method = draw(st.sampled_from(["POST", "GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"]))
    crossing = False
    for name, own in (("Origin", f"http://{host}"), ("Referer", f"http://{host}/index.html")):
        kind = draw(st.sampled_from(["absent", "own", "foreign", "junk"] if hostile else ["absent", "own"]))
        if kind != "absent":
            headers[name] = {"own": own, "foreign": draw(st.sampled_from(FOREIGN_ORIGINS)),
                             "junk": "x" + draw(latin1)}[kind]
            crossing = crossing or (kind != "own" and (name == "Origin" or "Origin" not in headers))
    site = draw(st.sampled_from([None, "same-origin", "none"] + (["cross-site", "same-site"] if hostile else [])))
    if site:
        headers["Sec-Fetch-Site"] = site
        crossing = crossing or site in ("cross-site", "same-site")
    if draw(st.booleans()):
        headers["X-Filename"] = draw(st.one_of(latin1, st.sampled_from(["../../x.mp4", "a" * 300 + ".webm",
                                                                         "x." + "a" * 298, "%00%2F..%2Fx", ".."])))
    head = draw(st.sampled_from([b"\x1aE\xdf\xa3", b"\0\0\0\0ftypmp42", b"\0" * 8 + b"AVI ", b""]))  # video or not
    body = head + draw(st.binary(max_size=3000))
    length = draw(st.sampled_from([None, None, "more", "less", "junk", "-1"]))
    if length:
        headers["Content-Length"] = {"more": str(len(body) + 1000), "less": str(len(body) // 2), "junk": "12x",
                                     "-1": "-1"}[length]
    job = draw(st.text("0123456789abcdef./%", max_size=14))
    paths = ["/api/videos", f"/api/videos/{job}", f"/api/videos/{job}/faces.csv", "/models/index.json", "/",
             "/api/health"]
    path = "/api/videos" if method == "POST" and draw(st.booleans()) else draw(st.sampled_from(paths))
    return method, path, headers, body, foreign_host, crossing and method in ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    """One app for all examples, on stand-in models and video pipeline, with small limits so that they are met."""
    pytest.importorskip("starlette")
    from test_server_security import fake_app  # tests/ is on sys.path

    with fake_app(tmp_path_factory.mktemp("fuzz_server"), max_upload_bytes=400, max_work_bytes=1500,
                  max_waiting_jobs=2, job_ttl_seconds=0.5) as (client, app):
        yield client, app


@FUZZ
@given(http_requests())
def test_the_server_answers_any_request_with_a_reason_and_leaves_no_upload(fuzz_app, request_):
    client, app = fuzz_app
    method, path, headers, body, foreign_host, crossing = request_
    reply = client.request(method, path, content=body, follow_redirects=False,
                           headers={k: v.encode("latin-1") for k, v in headers.items()})
    hypothesis.event(f"{method} {reply.status_code}")
    assert reply.status_code < 500, (reply.status_code, reply.text)
    uploads = app.state.work / "uploads"
    assert not uploads.exists() or not list(uploads.iterdir())
    if foreign_host:
        assert reply.status_code == 400, reply.text
    elif crossing:
        assert reply.status_code == 403, reply.text


# ---------------------------------------------------------------- model metadata and pixel arrays

@FUZZ
@given(names=st.lists(st.text(min_size=0, max_size=60), min_size=0, max_size=9),
       architecture=st.one_of(st.text(max_size=80), st.integers(), st.none()))
def test_model_metadata_strings_are_short_printable_text_or_a_model_error(tmp_path_factory, names, architecture):
    import json

    from ferkit.model import ModelError, ModelMeta

    path = tmp_path_factory.mktemp("meta") / "m.meta.json"
    path.write_text(json.dumps({"class_names": names, "architecture": architecture}))
    try:
        meta = ModelMeta.read(path)
    except ModelError as error:
        assert str(error).startswith(f"{path}: ")
        return
    assert 2 <= len(meta.class_names) == len(set(meta.class_names))
    assert all(0 < len(n) <= 40 and n.isprintable() and not n.isspace() for n in meta.class_names)
    assert isinstance(meta.architecture, str) and meta.architecture.isprintable()


#: How a uint8 image may arrive from another library: each is read back as the same image by the documented rule.
REPRESENTATIONS = {
    "uint8": lambda u, noise: u,
    "uint16 holding 0-255": lambda u, noise: u.astype(np.uint16),
    "uint16 16-bit": lambda u, noise: u.astype(np.uint16) * 257,
    "int32 holding 0-255": lambda u, noise: u.astype(np.int32),
    "float 0-1": lambda u, noise: np.clip(u / 255.0 + noise, -1e-3, 1 + 1e-3),
    "float32 0-1": lambda u, noise: (u / 255.0).astype(np.float32),
    "float 0-255": lambda u, noise: u.astype(np.float64) + noise,
    "bool": lambda u, noise: u > 127,
}


@FUZZ
@given(kind=st.sampled_from(sorted(REPRESENTATIONS)), seed=st.integers(0, 2**16), shape=st.sampled_from(
    [(5, 7), (5, 7, 3), (5, 7, 4), (1, 1), (9, 3, 1)]), brightest=st.integers(2, 255))
def test_pixel_arrays_of_every_documented_kind_read_as_their_uint8_image(kind, seed, shape, brightest):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, brightest + 1, shape).astype(np.uint8)
    image.flat[0] = brightest  # the range is reached, as the rule reads it from the values
    noise = rng.uniform(-1e-4, 1e-4, shape)
    noise.flat[0] = abs(noise.flat[0])  # the brightest value stays on the range's side: 2 - 1e-4 is ambiguous, refused
    loaded = load_image(REPRESENTATIONS[kind](image, noise), "bgr")
    expected = load_image((image > 127).astype(np.uint8) * 255 if kind == "bool" else image, "bgr")
    assert loaded.dtype == np.uint8 and loaded.shape == expected.shape
    assert np.abs(loaded.astype(int) - expected).max() <= 1


@FUZZ
@given(dtype=st.sampled_from(["int8", "int16", "int32", "int64", "uint16", "uint32", "float16", "float32",
                              "float64"]),
       low=st.floats(-1e6, 1e6), span=st.floats(0, 1e6), seed=st.integers(0, 2**16))
def test_arrays_of_any_range_are_read_or_refused_by_name(dtype, low, span, seed):
    values = np.random.default_rng(seed).uniform(low, low + span, (6, 6))
    with np.errstate(over="ignore", invalid="ignore"):
        array = values.astype(dtype)
    try:
        loaded = load_image(array, name="the array")
    except ImageError as error:
        assert str(error).startswith("the array: ")
        return
    assert loaded.dtype == np.uint8 and loaded.shape == (6, 6, 3)
    if np.issubdtype(array.dtype, np.floating) and array.max() <= 1:  # read as 0-1: brighter values stay brighter
        order = np.argsort(array.ravel(), kind="stable")
        assert (np.diff(loaded[:, :, 0].ravel()[order].astype(int)) >= 0).all()


from test_data import ferkit_npz, npy_bytes  # noqa: E402  (tests/ is on sys.path): one way to build an .npz


npy_descrs = st.sampled_from(["|u1", "<i8", ">i4", "|b1", "<f4", "<U7", "<U0", "|S3", "|V0", "|O", "<c16",
                              [("a", "<i4")], [("a", "|O")], ("|u1", (1000, 1000))])
npy_shapes = st.lists(st.one_of(st.integers(0, 4), st.just(48), st.integers(0, 10**9), st.integers(-3, -1)),
                      max_size=4).map(tuple)
hostile_npy = st.builds(npy_bytes, npy_descrs, npy_shapes, st.binary(max_size=3000), st.booleans())


@FUZZ
@given(members=st.dictionaries(st.sampled_from(["images", "labels", "splits", "class_names"]), hostile_npy),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_hostile_npz_headers_give_a_dataset_or_a_dataset_error_within_bounded_memory(tmp_path_factory, members, cut):
    import tracemalloc

    path = ferkit_npz(tmp_path_factory.mktemp("npz") / "fuzz.npz", **members)
    if cut is not None:  # truncated data: a download or copy cut short
        path.write_bytes(path.read_bytes()[: int(cut * path.stat().st_size)])
    tracemalloc.start()
    try:
        dataset = data.load_fer2013(path, progress=False)
    except data.DatasetError as error:
        assert str(path) in str(error)
        dataset = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # Shapes up to 10^9 per dimension are declared: nothing may be allocated for them unread.
    assert peak < 4 * 2**20 + 10 * path.stat().st_size, f"{peak / 2**20:.0f} MiB for a {path.stat().st_size}-byte file"
    if dataset is not None:
        assert dataset.images.dtype == np.uint8 and dataset.images.shape[1:] == (48, 48)
        assert len(dataset.images) == len(dataset.labels) == len(dataset.splits) > 0
        assert dataset.labels.max() < len(data.CLASS_NAMES) and dataset.splits.max() < len(data.SPLITS)
