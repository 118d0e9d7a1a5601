"""When things happened on the device, and how far the host may run ahead of it.

The engine only *issues* work: with CUDA graphs a whole 32-layer pass is queued in about a millisecond and
then runs for 30. A scheduler that looks at arrivals between issues would then see an LS arrival only
after the pass it meant to interrupt had been queued in full. `mark(throttle=True)` bounds the queue: the host waits
until at most `depth` advances are in flight, so a decision taken at a scheduling point reaches the
device behind at most that much work, while the device does not idle between layers: with depth 1 the
host decides about layer k+1 while the device runs layer k.

The bound is kept per stream (real.lanes issues a preempting batch on a second, urgent stream; the main
stream's queued layers do not hold it back). The wait can be `interrupt`ed (an arrival): the host then
decides at once instead of when the device reaches the next scheduling point.

`mark` records a CUDA event where the device will pass it (a batch's first stage, the end of an
advance); `times_s` converts them, after the run, to seconds on the replay's wall clock. On the CPU the
engine runs synchronously: marks are host times and throttling is a no-op."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class DeviceTimeline:
    device: torch.device
    clock: Callable[[], float] = time.perf_counter
    depth: int = 1  # advances the device may hold (running or queued) while the host decides the next
    idle: Callable[[], None] | None = None  # called between polls while the host waits (real.run: Engine.rehearse)
    _origin: object = None  # CUDA event at host time `_origin_s` (both taken after a synchronise)
    _origin_s: float = 0.0
    _marks: list = field(default_factory=list)  # CUDA events or host times
    _inflight: dict[int, deque] = field(default_factory=dict)  # per stream: ends of advances not known done

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    def start(self) -> float:
        """Synchronise and pin device time to the host clock; returns the host start time."""
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            self._origin = torch.cuda.Event(enable_timing=True)
            self._origin.record()
            torch.cuda.synchronize(self.device)
        self._origin_s = self.clock()
        return self._origin_s

    def mark(self, throttle: bool = False, interrupt: Callable[[], bool] | None = None) -> int:
        """A point in the issued work; returns its index for `times_s`. With `throttle` it ends an advance:
        the host then waits while more than `depth` advances of the current stream have not finished on
        the device, or until `interrupt()` is true (polled while waiting)."""
        if not self.on_cuda:
            self._marks.append(self.clock())
            return len(self._marks) - 1
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self._marks.append(event)
        if throttle:
            queue = self._inflight.setdefault(torch.cuda.current_stream(self.device).cuda_stream, deque())
            queue.append(event)
            _wait(queue, self.depth, interrupt, self.idle)
        return len(self._marks) - 1

    def drain(self, interrupt: Callable[[], bool]) -> bool:
        """Wait until the current stream's issued work has finished on the device, unless `interrupt()`
        becomes true first; True if it finished. Before a pass's LM head: its sync would otherwise hold
        the host, deaf to arrivals, for the pass's last layers (a large prefill's: up to 10 ms, H200). On
        the CPU the work is done already, and only the arrival counts (so replays take the same path)."""
        if not self.on_cuda:
            return not interrupt()
        issued = torch.cuda.Event()  # behind everything issued on the stream (no timing: cheaper)
        issued.record()
        pending = deque([issued])
        _wait(pending, 0, interrupt, self.idle)
        return not pending

    def busy_streams(self) -> set[int]:
        """The streams (`cuda_stream` handles) with an advance that may still be running or queued."""
        return {key for key, queue in self._inflight.items() if any(not event.query() for event in queue)}

    def times_s(self) -> list[float]:
        """Every mark in seconds since `start` (synchronises: call once the run is over)."""
        if not self.on_cuda:
            return [t - self._origin_s for t in self._marks]
        torch.cuda.synchronize(self.device)
        return [self._origin.elapsed_time(event) / 1e3 for event in self._marks]


def every(period_s: float, fn: Callable[[], None], clock: Callable[[], float] = time.perf_counter) -> Callable[[], None]:
    """`fn`, called at most once per `period_s` (the next call due `period_s` after the last one ended):
    a timeline's `idle`."""
    due = 0.0

    def call() -> None:
        nonlocal due
        if clock() >= due:
            fn()
            due = clock() + period_s
    return call


def _wait(queue: deque, depth: int, interrupt: Callable[[], bool] | None,
          idle: Callable[[], None] | None = None) -> None:
    """Until at most `depth` events of `queue` are pending; spins (polling `interrupt`, then calling `idle`)
    when `interrupt` is given."""
    while len(queue) > depth:
        if interrupt is None:
            queue.popleft().synchronize()
            continue
        while not queue[0].query():
            if interrupt():
                return
            if idle is not None:
                idle()
        queue.popleft()
