"""The vectorised CSV codec against the naive per-row str.split / str.join."""

import numpy as np

from ferkit import _csvcodec


def naive_format(row):
    return " ".join(str(v) for v in row).encode()


def test_format_matches_naive_join():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 2304), dtype=np.uint8)
    pixels[0] = 0
    pixels[1] = 255
    assert _csvcodec.format_pixel_rows(pixels) == [naive_format(row) for row in pixels]


def test_parse_matches_naive_across_chunks_with_one_bad_row():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (1300, 2304), dtype=np.uint8)  # > 2 chunks of 512
    fields = [naive_format(row) for row in pixels]
    fields[700] = fields[700] + b" 12"  # one row in the middle chunk is too long
    parsed, problems = _csvcodec.parse_pixel_fields(fields)
    assert problems == {700: "expected 2304 pixel values, found 2305"}
    good = np.arange(len(pixels)) != 700
    np.testing.assert_array_equal(parsed[good], pixels[good])
    assert (parsed[700] == 0).all()


def test_careful_path_tolerates_repeated_spaces():
    row = np.arange(2304) % 256
    fields = [b"  ".join(str(v).encode() for v in row), b" ".join(str(v).encode() for v in row)]
    parsed, problems = _csvcodec.parse_pixel_fields(fields)
    assert problems == {}
    np.testing.assert_array_equal(parsed, np.stack([row, row]).astype(np.uint8))


def test_iter_lines_matches_split_and_gives_only_the_length_of_overlong_lines():
    import io

    rng = np.random.default_rng(2)
    lines = [b"x" * int(n) for n in rng.integers(0, 30, 200)] + [b"y" * 25, b""]
    text = b"\n".join(lines)
    expected = [line if len(line) <= 10 else len(line) for line in lines]
    if not lines[-1]:
        expected.pop()  # like a file ending in a newline: no empty last line
    for read_size in (1, 3, 7, 64, 10**6):  # lines straddle every kind of read boundary
        assert list(_csvcodec.iter_lines(io.BytesIO(text), max_bytes=10, read_size=read_size)) == expected
