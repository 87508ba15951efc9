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


class Meter:
    """Progress counted by hand (``update(n)``), for work that does not come as one iterable: a bar on a
    terminal or in a notebook, otherwise a plain line every ``every`` seconds and one at :meth:`close`."""

    def __init__(self, description: str, total: int | None = None, unit: str = "item", enabled: bool = True,
                 every: float = 10.0):
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.done, self.started = 0, time.monotonic()
        self.last = self.started
        self.bar = None
        self.enabled = enabled
        if enabled and interactive():
            from tqdm.auto import tqdm  # only where a bar is drawn: importing it takes ~80 ms

            self.bar = tqdm(desc=description, total=total, unit=unit, file=sys.stderr, mininterval=0.5)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            print(f"{self.description}: {_count(self.done, self.total, self.unit)}, "
                  f"{self.done / (now - self.started):.1f} {self.unit}/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(f"{self.description}: {_count(self.done, self.total, self.unit)} in "
                  f"{time.monotonic() - self.started:.1f} s", file=sys.stderr, flush=True)
        self.enabled = False  # closing twice reports once

    def __enter__(self) -> "Meter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable[T], description: str, total: int | None = None, unit: str = "item",
             enabled: bool = True, every: float = 10.0) -> Iterator[T]:
    """``items``, reporting progress on stderr as it goes (nothing when not ``enabled``)."""
    if not enabled:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Meter(description, total, unit, enabled, every) as meter:
        for item in items:
            yield item
            meter.update()


def _count(done: int, total: int | None, unit: str) -> str:
    return f"{done}/{total} {unit}s" if total else f"{done} {unit}s"
