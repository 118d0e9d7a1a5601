"""A serving loop (a replay or the HTTP server) that stops making progress ends with a message instead of hanging.

Replays stalled on both GPUs in sessions 22-25 (5 of about 35 runs, none reproduced on demand): the GPU stayed at 100%
utilisation on a kernel that never finished, the host waited on an event behind it, and the run hung until an outside
timeout killed it. The watch, a daemon thread, reads a progress count (the server's logged steps and consults) every
`poll_s`; once it has not moved for `timeout_s` while a batch is in flight, it calls `on_stall`. The default prints
every thread's stack, what the device was doing where the engine keeps a trail (real.devicetrail) and a message, and
ends the process: the serving thread is blocked inside a CUDA call and cannot be interrupted, and the kernel that
does not end dies with the process's context (`engine.stall_timeout_s`)."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

STALL_EXIT = 3  # the exit status of a process ended by the watch
STALL_MESSAGE = "error: the device made no progress"  # how the message begins (real.sweepwatch looks for it)


def abort(stalled_s: float, report: Callable[[], str] | None = None, hold_s: float = 0.0) -> None:
    """The default `on_stall`: stacks, the device trail's report (real.devicetrail) where there is one, a message,
    and after `hold_s` (time for a debugger to attach: real.sweepwatch) the process ends with `STALL_EXIT`."""
    faulthandler.dump_traceback(all_threads=True)
    if report is not None:
        try:
            print(report(), file=sys.stderr, flush=True)
        except Exception as error:  # a report that fails must not keep the process from ending
            print(f"device trail: no report ({error!r})", file=sys.stderr, flush=True)
    print(f"{STALL_MESSAGE} for {stalled_s:.0f} s with a batch in flight: the engine stalled "
          "(BENCHMARKS.md, the engine stall); this run's results are lost (engine.stall_timeout_s=0 waits forever)",
          file=sys.stderr, flush=True)
    time.sleep(hold_s)
    os._exit(STALL_EXIT)


@dataclass
class StallWatch:
    progress: Callable[[], int]  # grows while the device makes progress
    busy: Callable[[], bool]  # whether a batch is in flight (an idle server waiting for arrivals is not stalled)
    timeout_s: float  # 0: no watch
    on_stall: Callable[[float], None] | None = None  # None: `abort` with `report` and `hold_s`
    report: Callable[[], str] | None = None  # what the device was doing (real.devicetrail.DeviceTrail.report)
    hold_s: float = 0.0  # how long the stalled process stays after its report (engine.stall_hold_s)
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
                stalled_s = self.clock() - since
                if self.on_stall is None:
                    abort(stalled_s, self.report, self.hold_s)
                else:
                    self.on_stall(stalled_s)
                return
