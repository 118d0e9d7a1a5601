"""The serving loop's own CPU (`engine.host_cpu`, real.hostcpu): which CPU, what the others get, and that a
replay and the front end's process end up where they should."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from real import hostcpu


@pytest.mark.parametrize("cpu, cpus, sibling_map, chosen, others", [
    (-1, {0, 1, 2, 3}, {}, 3, {0, 1, 2}),  # the highest allowed; no hyperthreads known
    (2, {0, 1, 2, 3}, {}, 2, {0, 1, 3}),
    (-1, {0, 1, 2, 3}, {3: {1, 3}}, 3, {0, 2}),  # its hyperthread sibling stays free too
    (-1, {3, 7}, {7: {3, 7}}, 7, {3}),  # only its own core left: the sibling is better than nothing
])
def test_the_loops_cpu_and_the_rest(monkeypatch, cpu, cpus, sibling_map, chosen, others):
    monkeypatch.setattr(hostcpu, "siblings", lambda c: sibling_map.get(c, {c}))
    assert hostcpu.choose(cpu, cpus) == (chosen, others)


@pytest.mark.parametrize("cpu, cpus, message", [
    (5, {0, 1}, "CPU 5 is not among"),
    (-1, {4}, "nothing left for the rest"),
])
def test_a_cpu_that_cannot_be_had_is_refused(cpu, cpus, message):
    with pytest.raises(ValueError, match=message):
        hostcpu.choose(cpu, cpus)


def test_siblings_read_the_kernels_list(monkeypatch, tmp_path):
    listing = tmp_path / "cpu5" / "topology" / "thread_siblings_list"
    listing.parent.mkdir(parents=True)
    listing.write_text("1,5-6\n")
    real_path = Path
    monkeypatch.setattr(hostcpu, "Path", lambda p: real_path(str(p).replace("/sys/devices/system/cpu", str(tmp_path))))
    assert hostcpu.siblings(5) == {1, 5, 6}
    assert hostcpu.siblings(9) == {9}  # no such file: itself


@pytest.mark.parametrize("value", [-2, 1.5, True, "0"])
def test_engine_settings_refuse_a_bad_host_cpu(value):
    from real.run import EngineSettings
    with pytest.raises(ValueError, match="engine.host_cpu"):
        EngineSettings(host_cpu=value)


needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")


@needs_two
def test_a_replay_runs_its_loop_on_the_cpu_and_gives_the_rest_back(tmp_path):
    """The replay's summary names the CPU; afterwards the thread may run anywhere again; tokens as asked."""
    from policies import QLLM
    from real import run as real_run
    from sim.workload import WorkloadConfig
    before = os.sched_getaffinity(0)
    workload = WorkloadConfig(rate=50.0, num_requests=6, output_mode="fixed", fixed_output_tokens=3)
    spec = real_run.ServeSpec(QLLM(max_batch_size=4), "qllm", workload,
                              real_run.EngineSettings(num_slots=8, host_cpu=-1), seed=1, max_batch_size=4)
    table, summary = real_run.serve(spec, tmp_path)
    assert summary["run"]["host_cpu"] == max(before)
    assert len(table) == 6 and (table.generated_tokens == table.output_tokens).all()
    assert os.sched_getaffinity(0) == before


@needs_two
def test_the_front_ends_process_runs_on_the_cpus_it_is_given():
    from real.frontend import FrontendProcess
    cpu = min(os.sched_getaffinity(0))
    frontend = FrontendProcess.launch("127.0.0.1", 0, "tiny-mixtral", 128, 48, "BE", 4, None, cpus={cpu})
    try:
        status = Path(f"/proc/{frontend.process.pid}/status").read_text()
        allowed = next(line.split(":")[1].strip() for line in status.splitlines()
                       if line.startswith("Cpus_allowed_list"))
        assert allowed == str(cpu)
        frontend.arrivals.start(time.perf_counter())
    finally:
        frontend.stop()
    assert frontend.process.returncode == 0


def test_no_setting_places_nothing_and_pinned_gives_the_cpus_back():
    assert hostcpu.Placement.of(None) == hostcpu.Placement(None, None)
    before = os.sched_getaffinity(0)
    with hostcpu.Placement.of(None).loop_thread():
        assert os.sched_getaffinity(0) == before
    one = {min(before)}
    with hostcpu.pinned(one):
        assert os.sched_getaffinity(0) == one
    assert os.sched_getaffinity(0) == before
