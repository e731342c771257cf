"""What the experiments and the benchmarks share."""
from __future__ import annotations

import time
from typing import Callable


def timed(seconds: dict, key: str, fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs), with its wall time in seconds[key] (rounded to 0.01 s)."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds[key] = round(time.perf_counter() - t0, 2)
    return result
