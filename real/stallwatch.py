"""A replay that stops making progress ends with a message instead of hanging.

Replays stalled on both GPUs in sessions 22-24 (4 of about 25 runs, none reproduced on demand): the GPU stayed at 100%
utilisation on work that never finished, the host waited on an event behind it, and the run hung until an outside
timeout killed it. The watch, a daemon thread, reads a progress count (the server's logged steps and consults) every
`poll_s`; once it has not moved for `timeout_s` while a batch is in flight, it calls `on_stall`. The default prints
every thread's stack and a message, and ends the process: the serving thread is blocked inside a CUDA call and cannot
be interrupted, and the kernel that does not end dies with the process's context (`engine.stall_timeout_s`)."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STALL_EXIT = 3  # the exit status of a process ended by the watch


def abort(stalled_s: float) -> None:
    """The default `on_stall`: stacks, a message, and the process ends with `STALL_EXIT`."""
    faulthandler.dump_traceback(all_threads=True)
    print(f"error: the device made no progress for {stalled_s:.0f} s with a batch in flight: the engine stalled "
          "(BENCHMARKS.md, the engine stall); this run's results are lost (engine.stall_timeout_s=0 waits forever)",
          file=sys.stderr, flush=True)
    os._exit(STALL_EXIT)


@dataclass
class StallWatch:
    progress: Callable[[], int]  # grows while the device makes progress
    busy: Callable[[], bool]  # whether a batch is in flight (an idle server waiting for arrivals is not stalled)
    timeout_s: float  # 0: no watch
    on_stall: Callable[[float], None] = abort
    poll_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> StallWatch:
        if self.timeout_s > 0:
            self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        last, since = self.progress(), self.clock()
        while not self._stop.wait(self.poll_s):
            count = self.progress()
            if count != last or not self.busy():
                last, since = count, self.clock()
            elif self.clock() - since >= self.timeout_s:
                self.on_stall(self.clock() - since)
                return
