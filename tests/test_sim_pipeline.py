"""sim.pipeline and the engine's host_ahead mode: an iteration-level pass on two clocks, the host issuing it
while the GPU still runs the pass before (the real engine with deferred tokens)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest

from policies import FCFS
from sim.pipeline import LaunchQueue, PassPaths, pass_times
from sim.simulate import simulate
from tests.conftest import ConstantProfile, request, toy_costs

US = 1e-6

CASES = [
    # (host start, device free, lead, host per layer, GPU per layer, head, queue depth) -> (host end, begin, end)
    ("gpu-bound, idle device", (0, 0, 1, [0.1] * 4, [2] * 4, 1, 0), (1.4, 1, 10)),
    ("host-bound, idle device", (0, 0, 0, [2] * 4, [1] * 4, 1, 0), (8, 0, 9)),
    # the device runs the pass before until 5: the first layers' issue hides under it (5 visible, not 8)
    ("host-bound, busy device", (0, 5, 0, [2] * 4, [1] * 4, 1, 0), (8, 5, 10)),
    # the launch queue holds two stepped layers: the host issues layer 2 once layer 0 has run (at 2)
    ("queue of two layers", (0, 0, 0, [0.1] * 4, [2] * 4, 1, 2), (4.1, 0, 9)),
]


def test_a_layer_issued_while_the_gpu_has_a_backlog_costs_the_host_more():
    """The GPU runs the pass before until 5: layers 0 and 1 are issued into that backlog (2 + 1 ms each, to 6,
    when the GPU has run layer 1 too), layer 2 with the GPU waiting (2 ms)."""
    times = pass_times(0, 5, paths(0, [2] * 3, [0.5] * 3, 0), LaunchQueue(busy_extra_s=1))
    assert (times.host_end_s, times.device_end_s) == pytest.approx((8, 8))


def paths(lead, host, gpu, head):
    return PassPaths(np.array(host, dtype=float), np.array(gpu, dtype=float), head, lead)


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pass_times(args, expected):
    start, free, lead, host, gpu, head, depth = args
    queue = LaunchQueue(depth)
    times = pass_times(start, free, paths(lead, host, gpu, head), queue)
    assert (times.host_end_s, times.device_begin_s, times.device_end_s) == pytest.approx(expected)
    assert len(queue.ends) == depth  # the latest stepped layers' ends, kept for the next pass


def test_a_replayed_layer_does_not_enter_the_launch_queue():
    queue = LaunchQueue(2, ends=deque([100.0, 100.0]))
    times = pass_times(0, 0, paths(0, [0.0, 0.0], [1, 1], 0), queue)
    assert times.host_end_s == 0 and times.device_end_s == 2  # host time 0: graphs, not held by the queue


def test_host_ahead_decides_the_next_pass_while_the_gpu_runs_this_one():
    """Toy costs (sim/conftest: a pass 10.4 ms, no host time). FCFS issues BE's prefill at 0 and, the pass
    being done for the policy once issued, its decode pass too; LS (3.0 ms) arrives while the host waits for
    the prefill to leave the GPU and is issued then, behind both: first token 31.2 ms, not 20.8."""
    be, ls = request(0, 0.0, 10, 2, "BE"), request(1, 3.0e-3, 5, 1, "LS")
    outcome = simulate([be, ls], FCFS(), toy_costs(), kv_capacity_tokens=1000, host_ahead=True)
    assert be.first_token_s == pytest.approx(10.4e-3, abs=US)
    assert be.finish_s == pytest.approx(20.8e-3, abs=US)
    assert ls.first_scheduled_s == pytest.approx(20.8e-3, abs=US)  # when its pass reaches the GPU
    assert ls.first_token_s == pytest.approx(31.2e-3, abs=US)
    assert outcome.makespan_s == pytest.approx(31.2e-3, abs=US)
    assert outcome.busy_s == pytest.approx(31.2e-3, abs=US)


@dataclass(frozen=True)
class HostBoundProfile(ConstantProfile):
    """Whole passes cost the host 3 ms per layer; the GPU 0.1 ms plus the experts (1 ms)."""

    def pass_paths(self, load):
        return 3.0e-3, 0.1e-3


def test_a_host_bound_pass_hides_its_issue_under_the_pass_before():
    """BE 0's decode pass (GPU 4 x 1.1 + 2 = 6.4 ms) runs while the host issues BE 1's prefill (12 ms)."""
    be0, be1 = request(0, 0.0, 10, 2, "BE"), request(1, 1.0e-3, 5, 1, "BE")
    simulate([be0, be1], FCFS(), toy_costs(HostBoundProfile()), kv_capacity_tokens=1000, host_ahead=True)
    assert be0.first_token_s == pytest.approx(14e-3, abs=US)  # host 12 ms, the last layer's GPU ends at 12, + head
    # at 12 ms the host issues BE 1's prefill (newcomers first); the GPU, free at 14, runs it as issued
    assert be1.first_scheduled_s == pytest.approx(14e-3, abs=US)
    assert be1.first_token_s == pytest.approx(26e-3, abs=US)  # issue ends at 24, + head
    # BE 0's decode, issued at 24 (graph-free: 12 ms of host again), ends at 36 + head
    assert be0.finish_s == pytest.approx(38e-3, abs=US)


@pytest.mark.parametrize("host_ahead", [False, True])
def test_every_request_finishes_once_with_its_tokens(host_ahead):
    requests = [request(i, 0.7e-3 * i, 5 + 3 * i, 1 + i % 3, "LS" if i % 4 == 0 else "BE") for i in range(20)]
    finished = []
    outcome = simulate(requests, FCFS(max_batch_size=4), toy_costs(HostBoundProfile()), kv_capacity_tokens=200,
                       max_batch_size=4, on_finish=finished.append, host_ahead=host_ahead)
    assert sorted(r.request_id for r in finished) == list(range(20))
    for r in requests:
        assert r.num_generated_tokens == r.num_output_tokens
        assert r.arrival_s <= r.first_scheduled_s < r.first_token_s <= r.finish_s <= outcome.makespan_s + 1e-12
