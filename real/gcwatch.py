"""Garbage-collector pauses during a replay: a full collection stops the host, which then issues nothing
and notices no arrival (one unexplained 140 ms host stall in 36 H200 runs). Recorded so that a stall in
the step log can be matched to, or ruled out as, a collection."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field


@dataclass
class GCWatch:
    """`with GCWatch() as watch:` records each collection's generation and pause (seconds) in `pauses`."""

    clock: object = time.perf_counter
    pauses: list[tuple[int, float]] = field(default_factory=list)
    _start: float | None = None

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = self.clock()
        elif self._start is not None:
            self.pauses.append((info["generation"], self.clock() - self._start))
            self._start = None

    def __enter__(self) -> GCWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)

    def summary(self) -> dict:
        """Counts per generation, the longest and the total pause (ms), for summary.json."""
        longest = max((p for _, p in self.pauses), default=0.0)
        total = sum(p for _, p in self.pauses)
        return {"collections": [sum(g == n for g, _ in self.pauses) for n in range(3)],
                "max_pause_ms": round(1e3 * longest, 3), "total_pause_ms": round(1e3 * total, 3)}
