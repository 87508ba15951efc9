"""The one timing rule of every benchmark here: median wall seconds, after one warm-up call."""

import statistics
import time


def median_seconds(fn, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
