"""Fast reading and writing of the ``emotion,pixels,Usage`` CSV.

The pixel column holds 2,304 space-separated integers per row, 83 million
numbers for the full dataset, so per-row ``str.split`` plus ``int`` is far too
slow. Both directions work on the raw bytes with vectorised numpy, in row
chunks spread over threads (numpy releases the GIL), and every malformed row
is still reported with its line number.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np

from ferkit.errors import BadRecord, DatasetError

PIXELS = 48 * 48
REQUIRED_COLUMNS = ("emotion", "pixels", "usage")
_SPACE, _ZERO = 32, 48
#: Longest row read. A FER-2013 row is ~9 KB (2,304 values of up to 3 digits); CSV rows are always
#: 48x48 (``resize`` applies to image files only), so 1 MiB leaves ~100x room for padding and quotes
#: while a hostile row costs at most a few MiB to reject: the rest of it is read and dropped, never held.
MAX_ROW_BYTES = 2**20
#: Text parsed per chunk. Chunks are cut by bytes as well as rows so that a file of long rows cannot
#: make the parser's temporaries (up to ~30 bytes per byte of text on the careful path) grow with it.
CHUNK_BYTES = 4 * 2**20


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ----------------------------------------------------------------------------
# Reading


def iter_lines(stream: BinaryIO, max_bytes: int = MAX_ROW_BYTES, read_size: int = 2**20) -> Iterator[bytes | int]:
    """Each line of ``stream`` without its ``\\n``; for a line longer than ``max_bytes``, its length instead.

    Reads ``read_size`` bytes at a time, so memory stays within about
    ``read_size + max_bytes`` however long a line is.
    """
    pending = b""  # the start of the current line
    skipped = 0  # while dropping an over-long line: its length so far
    while chunk := stream.read(read_size):
        *complete, tail = chunk.split(b"\n")
        for piece in complete:
            if skipped:
                yield skipped + len(piece)
                skipped = 0
            else:
                line, pending = pending + piece, b""
                yield line if len(line) <= max_bytes else len(line)
        if skipped:
            skipped += len(tail)
        elif len(pending) + len(tail) > max_bytes:
            skipped, pending = len(pending) + len(tail), b""
        else:
            pending += tail
    if skipped or pending:
        yield skipped or pending


def _too_long(length: int) -> str:
    return (f"row is {length / 2**20:.1f} MiB long, over the limit of {MAX_ROW_BYTES // 2**20} MiB per row "
            f"(a FER-2013 row is about 9 KB: {PIXELS} pixel values); not read. Is each image on a line of its own?")


def read_fer_csv(stream: BinaryIO, name: str, n_classes: int, split_names: Sequence[str]):
    """Parse a FER CSV from a binary stream, one bounded row at a time.

    Returns ``labels`` (N,) int64, ``splits`` (N,) int8, ``pixels`` (N, 2304)
    uint8 for the good rows, and the bad rows as a list of ``BadRecord``.
    Raises :class:`ferkit.errors.DatasetError` when the header is unusable.
    """
    lines = iter_lines(stream)
    first = next(lines, b"")
    if isinstance(first, int):
        raise DatasetError(f"{name}: the first line is {first / 2**20:.1f} MiB long; a FER-2013 CSV starts with "
                           "the header line emotion,pixels,Usage")
    header = first.rstrip(b"\r").decode("utf-8-sig", errors="replace")
    columns = [c.strip().strip('"').lower() for c in header.split(",")]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(f"{name}: missing column(s) {', '.join(missing)}; the header is {header[:80]!r} "
                           "but a FER-2013 CSV needs emotion,pixels,Usage")
    i_emotion, i_pixels, i_usage = (columns.index(c) for c in REQUIRED_COLUMNS)
    split_ids = {s.encode(): i for i, s in enumerate(split_names)}

    labels, splits, fields, line_numbers, bad = [], [], [], [], []
    for number, line in enumerate(lines, start=2):
        if isinstance(line, int):
            bad.append((number, _too_long(line)))
            continue
        if not line.strip():
            continue
        parts = line.rstrip(b"\r").split(b",")
        if len(parts) != len(columns):
            bad.append((number, f"expected {len(columns)} comma-separated fields, found {len(parts)}"))
            continue
        emotion = parts[i_emotion].strip().strip(b'"')
        label = int(emotion) if emotion.isdigit() and len(emotion) <= 3 else -1  # int() refuses > 4300 digits
        if not 0 <= label < n_classes:
            bad.append((number, f"emotion {_shown(emotion)!r} is not a label id 0-{n_classes - 1}"))
            continue
        usage = parts[i_usage].strip().strip(b'"')
        if usage not in split_ids:
            bad.append((number, f"unknown Usage {_shown(usage)!r} "
                                f"(expected {', '.join(split_names)})"))
            continue
        labels.append(label)
        splits.append(split_ids[usage])
        fields.append(parts[i_pixels].strip(b'" '))
        line_numbers.append(number)

    pixels, pixel_problems = parse_pixel_fields(fields)
    bad += [(line_numbers[row], problem) for row, problem in pixel_problems.items()]
    keep = np.ones(len(fields), bool)
    keep[list(pixel_problems)] = False
    bad.sort()
    records = [BadRecord(f"{name} line {number}", problem) for number, problem in bad]
    return (np.asarray(labels, np.int64)[keep], np.asarray(splits, np.int8)[keep],
            pixels[keep], records)


def _shown(value: bytes | str, limit: int = 20) -> str:
    """A field as messages quote it: cut short, so one hostile field cannot make a megabyte message."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text if len(text) <= limit else text[:limit] + "..."


def parse_pixel_fields(fields: Sequence[bytes], rows_per_chunk: int = 512,
                       chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, dict[int, str]]:
    """Parse rows of space-separated 0-255 integers.

    Returns ``(pixels, problems)``: ``pixels`` (len(fields), 2304) uint8 (rows
    with a problem are left zero) and ``problems`` {row index: message}.
    Small chunks keep the temporaries in cache and reuse malloc's memory,
    which here is several times faster than one pass over the whole file.
    """
    pixels = np.zeros((len(fields), PIXELS), np.uint8)
    problems: dict[int, str] = {}

    def work(bounds: tuple[int, int]) -> None:
        lo, hi = bounds
        for row, problem in _parse_chunk(fields[lo:hi], pixels[lo:hi]).items():
            problems[lo + row] = problem

    with ThreadPoolExecutor(_workers()) as pool:
        list(pool.map(work, _chunk_bounds(fields, rows_per_chunk, chunk_bytes)))
    return pixels, dict(sorted(problems.items()))


def _chunk_bounds(fields: Sequence[bytes], rows: int, max_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of at most ``rows`` rows and ``max_bytes`` of text (but at least one row each)."""
    ends = np.cumsum(np.fromiter(map(len, fields), np.int64, len(fields)) + 1)
    bounds, lo = [], 0
    while lo < len(fields):
        start = ends[lo - 1] if lo else 0
        hi = max(lo + 1, min(lo + rows, int(np.searchsorted(ends, start + max_bytes, side="right"))))
        bounds.append((lo, hi))
        lo = hi
    return bounds


def _parse_chunk(fields: Sequence[bytes], out: np.ndarray) -> dict[int, str]:
    """Fast path for well-formed rows (single spaces, 1-3 digits, 2304 values);
    anything else goes to :func:`_parse_chunk_carefully` to be explained."""
    if not fields:
        return {}
    text = np.frombuffer(b" ".join(fields) + b" ", np.uint8)
    digits = text - np.uint8(_ZERO)  # wraps non-digits to >= 10
    spaces = np.flatnonzero(text == _SPACE)
    length = np.diff(spaces, prepend=-1) - 1
    # Each row must end exactly at its own 2304th value: a total that matches can hide two rows whose
    # counts cancel (2305 + 2303), which would shift every pixel in between.
    row_end = np.cumsum(np.fromiter(map(len, fields), np.int64, len(fields)) + 1) - 1
    if (len(spaces) != len(fields) * PIXELS or not np.array_equal(spaces[PIXELS - 1::PIXELS], row_end)
            or length.min() < 1 or length.max() > 3 or ((digits >= 10) & (text != _SPACE)).any()):
        return _parse_chunk_carefully(text, fields, out)
    values = digits[spaces - 1].astype(np.uint16)
    values += (length >= 2) * (digits[spaces - 2] * np.uint16(10))
    values += (length >= 3) * (digits[spaces - 3] * np.uint16(100))
    if values.max() > 255:
        return _parse_chunk_carefully(text, fields, out)
    out[:] = values.reshape(-1, PIXELS)
    return {}


def _parse_chunk_carefully(text: np.ndarray, fields: Sequence[bytes], out: np.ndarray) -> dict[int, str]:
    """Tokenise on digit runs (tolerating repeated spaces) and name each bad row's problem."""
    row_end = np.cumsum(np.fromiter(map(len, fields), np.int64, len(fields)) + 1)
    digits = text - np.uint8(_ZERO)
    is_digit = digits < 10
    problems: dict[int, str] = {}

    stray = np.flatnonzero(~is_digit & (text != _SPACE))
    for row, first in _first_per_row(stray, np.searchsorted(row_end, stray, side="right")):
        problems[row] = f"pixels hold {chr(text[first])!r}; expected integers 0-255 separated by spaces"

    # A token ends where a digit is followed by a non-digit (the text ends in a space).
    ends = np.flatnonzero(is_digit[:-1] & ~is_digit[1:])
    starts = np.flatnonzero(~is_digit[:-1] & is_digit[1:]) + 1
    if is_digit[0]:
        starts = np.concatenate(([0], starts))
    per_row = np.diff(np.searchsorted(ends, row_end), prepend=0)
    for row in np.flatnonzero(per_row != PIXELS):
        problems.setdefault(int(row), f"expected {PIXELS} pixel values, found {per_row[row]}")

    length = ends - starts + 1
    values = digits[ends].astype(np.int32)
    values += np.where(length >= 2, digits[ends - 1].astype(np.int32) * 10, 0)
    values += np.where(length >= 3, digits[ends - 2].astype(np.int32) * 100, 0)
    out_of_range = np.flatnonzero((values > 255) | (length > 3))
    token_row = np.searchsorted(np.cumsum(per_row), out_of_range, side="right")
    for row, token in _first_per_row(out_of_range, token_row):
        problems.setdefault(row, _out_of_range(bytes(text[starts[token]:ends[token] + 1]).decode()))

    good = np.ones(len(fields), bool)
    good[list(problems)] = False
    out[good] = values[np.repeat(good, per_row)].reshape(-1, PIXELS)
    return problems


def _first_per_row(items: np.ndarray, rows: np.ndarray) -> list[tuple[int, int]]:
    """(row, its first item) for each row in ``rows``, the row of each of the sorted ``items``.

    One message per bad row, found without a Python step per bad token: 3,000
    rows of 2,304 out-of-range values each once took seconds in such a loop.
    """
    rows, first = np.unique(rows, return_index=True)
    return list(zip(rows.tolist(), items[first].tolist()))


def _out_of_range(value: str) -> str:
    """The problem with one token of digits that is not a plain 0-255 value."""
    significant = value.lstrip("0") or "0"  # int() refuses strings of more than 4300 digits
    if len(significant) <= 3 and int(significant) <= 255:
        return f"pixel value {_shown(value)} has leading zeros; expected integers 0-255 written plainly"
    return f"pixel value {_shown(value)} is out of range 0-255"


# ----------------------------------------------------------------------------
# Writing


def _number_table() -> tuple[np.ndarray, np.ndarray]:
    """Each value 0-255 as ASCII followed by a space, padded with zero bytes."""
    table = np.zeros((256, 4), np.uint8)
    lengths = np.zeros(256, np.int64)
    for value in range(256):
        text = f"{value} ".encode()
        table[value, : len(text)] = np.frombuffer(text, np.uint8)
        lengths[value] = len(text)
    return table, lengths


def format_pixel_rows(pixels: np.ndarray) -> list[bytes]:
    """(n, 2304) uint8 -> n byte strings of space-separated values."""
    table, lengths = _number_table()
    padded = table[pixels].reshape(-1)
    text = padded[padded != 0].tobytes()
    row_end = np.cumsum(lengths[pixels].sum(axis=1))
    row_start = np.concatenate(([0], row_end[:-1]))
    return [text[s:e - 1] for s, e in zip(row_start.tolist(), row_end.tolist())]


def write_fer_csv(f: BinaryIO, pixels: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                  split_names: Sequence[str], progress: Callable = lambda it, n: it, rows_per_chunk: int = 1024) -> None:
    """Write ``emotion,pixels,Usage`` rows; ``pixels`` is (N, 2304) uint8."""
    suffixes = [f",{s}\n".encode() for s in split_names]

    def render(bounds: tuple[int, int]) -> bytes:
        lo, hi = bounds
        rows = format_pixel_rows(pixels[lo:hi])
        return b"".join(b"%d,%s%s" % (label, row, suffixes[split])
                        for label, row, split in zip(labels[lo:hi].tolist(), rows, splits[lo:hi].tolist()))

    f.write(b"emotion,pixels,Usage\n")
    bounds = [(lo, min(lo + rows_per_chunk, len(pixels))) for lo in range(0, len(pixels), rows_per_chunk)]
    with ThreadPoolExecutor(_workers()) as pool:
        for chunk in progress(pool.map(render, bounds), len(bounds)):
            f.write(chunk)
