"""One progress rule for every long job: a bar on a terminal, plain periodic lines otherwise.

A bar redrawn with carriage returns is unreadable in a log file or a CI
transcript, so where stderr is not a terminal (and not a notebook) progress
is a line every ``every`` seconds and one at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def interactive() -> bool:
    """Whether stderr is a terminal or a notebook, where a redrawn bar reads well."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(items: Iterable[T], description: str, total: int | None = None, unit: str = "item",
             enabled: bool = True, every: float = 10.0) -> Iterator[T]:
    """``items``, reporting progress on stderr as it goes (nothing when not ``enabled``)."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if interactive():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=description, total=total, unit=unit)
        return
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            print(f"{description}: {_count(done, total, unit)}, {done / (now - started):.1f} {unit}/s",
                  file=sys.stderr, flush=True)
    print(f"{description}: {_count(done, total, unit)} in {time.monotonic() - started:.1f} s", file=sys.stderr,
          flush=True)


def _count(done: int, total: int | None, unit: str) -> str:
    return f"{done}/{total} {unit}s" if total else f"{done} {unit}s"
