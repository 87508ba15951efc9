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
from typing import BinaryIO, Callable, Sequence

import numpy as np

from ferkit.errors import BadRecord, DatasetError

PIXELS = 48 * 48
REQUIRED_COLUMNS = ("emotion", "pixels", "usage")
_SPACE, _ZERO = 32, 48


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# ----------------------------------------------------------------------------
# Reading


def read_fer_csv(data: bytes, name: str, n_classes: int, split_names: Sequence[str]):
    """Parse a FER CSV.

    Returns ``labels`` (N,) int64, ``splits`` (N,) int8, ``pixels`` (N, 2304)
    uint8 for the good rows, and the bad rows as a list of ``BadRecord``.
    Raises :class:`ferkit.data.DatasetError` when the header is unusable.
    """
    lines = data.split(b"\n")
    header = lines[0].rstrip(b"\r").decode("utf-8-sig", errors="replace")
    columns = [c.strip().strip('"').lower() for c in header.split(",")]
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(f"{name}: missing column(s) {', '.join(missing)}; the header is {header[:80]!r} "
                           "but a FER-2013 CSV needs emotion,pixels,Usage")
    i_emotion, i_pixels, i_usage = (columns.index(c) for c in REQUIRED_COLUMNS)
    split_ids = {s.encode(): i for i, s in enumerate(split_names)}

    labels, splits, fields, line_numbers, bad = [], [], [], [], []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.rstrip(b"\r").split(b",")
        if len(parts) != len(columns):
            bad.append((number, f"expected {len(columns)} comma-separated fields, found {len(parts)}"))
            continue
        emotion = parts[i_emotion].strip().strip(b'"')
        label = int(emotion) if emotion.isdigit() else -1
        if not 0 <= label < n_classes:
            bad.append((number, f"emotion {emotion.decode(errors='replace')!r} is not a label id 0-{n_classes - 1}"))
            continue
        usage = parts[i_usage].strip().strip(b'"')
        if usage not in split_ids:
            bad.append((number, f"unknown Usage {usage.decode(errors='replace')!r} "
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


def parse_pixel_fields(fields: Sequence[bytes], rows_per_chunk: int = 512) -> tuple[np.ndarray, dict[int, str]]:
    """Parse rows of space-separated 0-255 integers.

    Returns ``(pixels, problems)``: ``pixels`` (len(fields), 2304) uint8 (rows
    with a problem are left zero) and ``problems`` {row index: message}.
    Small chunks keep the temporaries in cache and reuse malloc's memory,
    which here is several times faster than one pass over the whole file.
    """
    pixels = np.zeros((len(fields), PIXELS), np.uint8)
    problems: dict[int, str] = {}

    def work(lo: int) -> None:
        hi = min(lo + rows_per_chunk, len(fields))
        for row, problem in _parse_chunk(fields[lo:hi], pixels[lo:hi]).items():
            problems[lo + row] = problem

    with ThreadPoolExecutor(_workers()) as pool:
        list(pool.map(work, range(0, len(fields), rows_per_chunk)))
    return pixels, dict(sorted(problems.items()))


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
    for row in np.unique(np.searchsorted(row_end, stray, side="right")):
        first = stray[np.searchsorted(stray, row_end[row - 1] if row else 0)]
        problems[int(row)] = f"pixels hold {chr(text[first])!r}; expected integers 0-255 separated by spaces"

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
    if len(out_of_range):
        token_row = np.searchsorted(np.cumsum(per_row), out_of_range, side="right")
        for token, row in zip(out_of_range, token_row):
            value = bytes(text[starts[token]:ends[token] + 1]).decode()
            problem = (f"pixel value {value} has leading zeros; expected integers 0-255 written plainly"
                       if len(value) > 3 and int(value) <= 255 else f"pixel value {value} is out of range 0-255")
            problems.setdefault(int(row), problem)

    good = np.ones(len(fields), bool)
    good[list(problems)] = False
    out[good] = values[np.repeat(good, per_row)].reshape(-1, PIXELS)
    return problems


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
