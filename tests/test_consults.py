"""An engine asks the policy again, at the same moment, after every decision that changed its state:
after a merge a waiting LS prefill may be due to preempt the merged batch, and must not wait for the
next arrival or pass end."""

from __future__ import annotations

from dataclasses import dataclass, field

from policies import CONTINUE, MAX_DECISIONS_PER_POINT, QLLM, Decision, RunBatch, SchedulerView
from sim.simulate import simulate
from tests.conftest import request, toy_costs


@dataclass
class Logged:
    """A policy wrapper that logs (time, decision) of every consult."""

    inner: QLLM
    log: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.granularity = self.inner.granularity

    def schedule(self, view: SchedulerView) -> Decision:
        decision = self.inner.schedule(view)
        self.log.append((view.now_s, decision))
        return decision


def run(policy: QLLM) -> list:
    requests = [request(0, 0.0, 30, 4, "BE"), request(1, 0.001, 20, 3, "LS"), request(2, 0.0015, 25, 3, "LS"),
                request(3, 0.002, 10, 2, "BE"), request(4, 0.004, 12, 3, "LS")]
    logged = Logged(policy)
    simulate(requests, logged, toy_costs(), kv_capacity_tokens=10_000, max_batch_size=4)
    assert all(r.num_generated_tokens == r.num_output_tokens for r in requests)
    return logged.log


def assert_asked_again_after_every_change(log: list) -> None:
    """Every decision that changed something is followed by a consult at the same moment, unless it was
    the last one allowed at that point."""
    changes = [i for i, (_, d) in enumerate(log) if d != CONTINUE]
    assert changes
    for i in changes:
        at_this_point = sum(1 for t, _ in log[max(i - MAX_DECISIONS_PER_POINT + 1, 0): i + 1] if t == log[i][0])
        if at_this_point < MAX_DECISIONS_PER_POINT:
            assert i + 1 < len(log) and log[i + 1][0] == log[i][0]


def test_every_change_is_followed_by_a_consult_at_the_same_moment():
    for policy in (QLLM(max_batch_size=4), QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32)):
        assert_asked_again_after_every_change(run(policy))


def test_a_run_batch_is_confirmed_by_a_continue():
    log = run(QLLM(max_batch_size=4))
    first_run = next(i for i, (_, d) in enumerate(log) if isinstance(d, RunBatch))
    assert log[first_run + 1] == (log[first_run][0], CONTINUE)
