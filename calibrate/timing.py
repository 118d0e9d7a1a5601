"""Four clocks per call of a stage, so the simulator can compose stages the way a pipelined pass
overlaps host and GPU work:

- latency_s: one call bracketed by device syncs (an empty queue before and after);
- time_s: steady state, `inner` calls back to back then one sync, per call (= max(host, GPU));
- host_s: host time to issue one call while the GPU is held busy by a sleep kernel (nothing waits);
- gpu_s: device time of one call measured by CUDA events behind that sleep (no host gaps).

On a CPU all four are wall time of the same calls (smoke tests of the tool only)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

MIN_REPEAT_S = 0.5e-3  # back-to-back calls per repeat: at least this long in all
MAX_INNER = 32
CLOCK_HZ = 2.0e9  # sleep-kernel cycles per second (Hopper boost ~1.98 GHz; lower clocks sleep longer)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _wall(fn: Callable[[], object], device: str, calls: int) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def _behind_sleep(fn: Callable[[], object], inner: int, sleep_s: float) -> tuple[float, float]:
    """(host_s, gpu_s) per call for `inner` calls queued behind a sleep kernel."""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    torch.cuda._sleep(int(sleep_s * CLOCK_HZ))
    begin.record()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    host = (time.perf_counter() - start) / inner
    end.record()
    torch.cuda.synchronize()
    return host, begin.elapsed_time(end) / 1000 / inner


def measure(fn: Callable[[], object], device: str, repeats: int, inner: int, warmup: int = 3) -> list[dict]:
    """One dict of the four clocks per repeat."""
    for _ in range(warmup):
        fn()
    estimate = _wall(fn, device, inner)
    if estimate > 5e-3:  # long calls: the noise is small, the device time is not
        repeats, inner = max(min(repeats, 3), repeats // 2), max(1, inner // 2)
    elif estimate * inner < MIN_REPEAT_S:  # tiny calls (an embedding: 12 us): a sync's jitter swamps them
        inner = min(math.ceil(MIN_REPEAT_S / max(estimate, 1e-6)), MAX_INNER)
    rows = []
    for _ in range(repeats):
        row = {"latency_s": _wall(fn, device, 1), "time_s": _wall(fn, device, inner)}
        if device == "cuda":
            row["host_s"], row["gpu_s"] = _behind_sleep(fn, inner, sleep_s=2.0 * inner * estimate + 1e-3)
        else:
            row["host_s"] = row["gpu_s"] = row["time_s"]
        rows.append(row)
    return rows


def timed_s(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> list[float]:
    """Sync-bracketed wall seconds of each call (whole passes, which sync themselves anyway)."""
    for _ in range(warmup):
        fn()
    return [_wall(fn, device, 1) for _ in range(repeats)]
