"""The stall watch (real.stallwatch): a replay whose progress stops with a batch in flight is ended, one that makes
progress or waits idle for arrivals is not, and `engine.stall_timeout_s` is checked."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from real.stallwatch import STALL_EXIT, StallWatch


class Counter:
    def __init__(self, grows: bool) -> None:
        self.count, self.grows = 0, grows

    def __call__(self) -> int:
        self.count += self.grows
        return self.count


def watched(progress, busy: bool, timeout_s: float = 0.05, for_s: float = 0.4) -> list[float]:
    stalls = []
    with StallWatch(progress, lambda: busy, timeout_s, stalls.append, poll_s=0.01):
        time.sleep(for_s)
    return stalls


@pytest.mark.parametrize("grows, busy, stalled", [(False, True, True), (True, True, False), (False, False, False)],
                         ids=["stuck", "progressing", "idle"])
def test_the_watch_fires_only_when_progress_stops_with_a_batch_in_flight(grows, busy, stalled):
    stalls = watched(Counter(grows), busy)
    assert len(stalls) == int(stalled)  # at most once: the watch ends after firing
    assert all(s >= 0.05 for s in stalls)


def test_a_watch_of_zero_starts_no_thread_and_never_fires():
    watch = StallWatch(Counter(False), lambda: True, 0, lambda s: pytest.fail("fired"))
    with watch:
        time.sleep(0.05)
    assert watch._thread is None


def test_the_default_ends_the_process_with_its_status_and_a_message():
    code = ("import time; from real.stallwatch import StallWatch\n"
            "with StallWatch(lambda: 0, lambda: True, 0.05, poll_s=0.01):\n    time.sleep(5)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == STALL_EXIT
    assert "error: the device made no progress" in done.stderr and "Thread" in done.stderr  # the stacks too


def test_the_default_prints_the_trails_report_and_holds_the_process_before_it_ends():
    code = ("import time; from real.stallwatch import StallWatch\n"
            "began = time.monotonic()\n"
            "with StallWatch(lambda: 0, lambda: True, 0.05, poll_s=0.01, report=lambda: 'device trail: here',\n"
            "                hold_s=0.5, clock=lambda: time.monotonic() - began):\n    time.sleep(5)\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == STALL_EXIT and time.monotonic() - began >= 0.5  # it stayed for the hold
    assert done.stderr.index("device trail: here") < done.stderr.index("error: the device made no progress")


def test_a_report_that_fails_still_ends_the_process():
    code = ("import time; from real.stallwatch import StallWatch\n"
            "with StallWatch(lambda: 0, lambda: True, 0.05, poll_s=0.01, report=lambda: 1 / 0):\n    time.sleep(5)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == STALL_EXIT and "device trail: no report (ZeroDivisionError" in done.stderr


@pytest.mark.parametrize("name", ["stall_timeout_s", "stall_hold_s"])
@pytest.mark.parametrize("value", [-1, True, "soon"])
def test_a_bad_timeout_is_refused_with_a_message(name, value):
    pytest.importorskip("torch")
    from real.run import EngineSettings
    with pytest.raises(ValueError, match=f"engine.{name} must be a number"):
        EngineSettings(**{name: value})
