"""What a replay is doing, for a person at a terminal (`progress=true`, the default, and stderr a terminal).

A replay on a GPU spends about a minute building and warming its engine, then minutes replaying, and printed
nothing until its summary. The bar is drawn by a daemon thread that reads two counts twice a second: the serving
loop does no work for it. That thread still takes the interpreter's lock for about 0.1 ms per update, so timed runs
(the round scripts, none on a terminal) go without it."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def say(message: str, on: bool) -> None:
    """A stage of the run, on stderr, where progress is shown."""
    if on:
        print(message, file=sys.stderr, flush=True)


@dataclass
class ReplayProgress:
    """A bar of finished requests out of `total`, with how many have started (their first pass issued), while the
    `with` block runs."""

    finished: Callable[[], int]
    started: Callable[[], int]
    total: int
    poll_s: float = 0.5
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _bar: Any = None  # the tqdm bar, made on entry

    def __enter__(self) -> ReplayProgress:
        from tqdm import tqdm  # a dependency of transformers' hub client: present wherever the engine runs

        self._bar = tqdm(total=self.total, unit="req", desc="replay", leave=False, file=sys.stderr)
        self._thread = threading.Thread(target=self._run, name="replay-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        self._bar.refresh()  # the final counts, drawn once whatever the bar's own rate limit
        self._bar.close()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._update()

    def _update(self) -> None:
        self._bar.set_postfix_str(f"started {self.started()}", refresh=False)
        self._bar.update(self.finished() - self._bar.n)
