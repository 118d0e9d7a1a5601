"""The stall watch (real.stallwatch): a replay whose progress stops with a batch in flight is ended, one that makes
progress or waits idle for arrivals is not, and `engine.stall_timeout_s` is checked."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from real.stallwatch import STALL_EXIT, STALL_MESSAGE, StallWatch


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
    assert STALL_MESSAGE in done.stderr and "Thread" in done.stderr  # the stacks too


def test_the_default_prints_the_trails_report_and_holds_the_process_before_it_ends():
    code = ("import time; from real.stallwatch import StallWatch\n"
            "began = time.monotonic()\n"
            "with StallWatch(lambda: 0, lambda: True, 0.05, poll_s=0.01, report=lambda: 'device trail: here',\n"
            "                hold_s=0.5, clock=lambda: time.monotonic() - began):\n    time.sleep(5)\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == STALL_EXIT and time.monotonic() - began >= 0.5  # it stayed for the hold
    assert done.stderr.index("device trail: here") < done.stderr.index(STALL_MESSAGE)


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


# A serving loop that stalls: a batch in flight and no step or consult after it (replays and HTTP serving alike)
STALLING = """
import time
from types import SimpleNamespace
from policies import QLLM
from real.live import LiveServer, LiveSpec
from real.run import EngineSettings

class Stalling:
    steps, num_consults = [], 0
    state = SimpleNamespace(running=None)
    engine = SimpleNamespace(device=SimpleNamespace(type="cpu"), trail=None)

    def serve(self, arrivals):
        self.state.running = object()  # a batch in flight, then nothing
        time.sleep(30)

spec = LiveSpec(QLLM(max_batch_size=4), "qllm", EngineSettings(stall_timeout_s=0.2, device_trail=True), max_len=48,
                port=0, frontend="thread")
LiveServer(spec, SimpleNamespace(fail_all=print), Stalling(), "http://nowhere").run()
"""


def test_an_http_server_whose_loop_stalls_ends_with_the_message_and_status():
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", STALLING], capture_output=True, text=True, timeout=120)
    assert done.returncode == STALL_EXIT and STALL_MESSAGE in done.stderr
    assert "device trail" not in done.stderr  # asked for, but a CPU engine keeps none


def test_the_watch_takes_the_trail_off_the_engine_after_serving():
    pytest.importorskip("torch")
    from types import SimpleNamespace

    from real.run import EngineSettings, watched
    engine = SimpleNamespace(device=SimpleNamespace(type="cpu"), trail="left over")
    server = SimpleNamespace(steps=[], num_consults=0, state=SimpleNamespace(running=None), engine=engine)
    with watched(server, EngineSettings(stall_timeout_s=0, device_trail=True)) as watch:
        assert engine.trail is None and watch._thread is None  # no trail on a CPU; timeout 0: no thread
    assert engine.trail is None
