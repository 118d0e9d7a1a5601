"""Timing on a GPU (or CPU): synchronise, then perf_counter; warm-up calls excluded."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_ms(fn: Callable[[], object], device, repeats: int, warmup: int = 2) -> list[float]:
    """Wall milliseconds of each of `repeats` calls of `fn`, each bracketed by device syncs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def copy_bandwidth_bytes_s(device, num_bytes: int = 1 << 31) -> float:
    """Read+write bytes per second of a large device-to-device copy (median of 5)."""
    src = torch.empty(num_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    times = timed_ms(lambda: dst.copy_(src), device, repeats=5)
    return 2 * num_bytes / (sorted(times)[2] / 1000)
