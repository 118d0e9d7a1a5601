"""Property tests: under every policy and granularity, on random small workloads, every request
finishes exactly once with exactly its output tokens, and time only moves forward."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies import QLLM, Decision, Granularity, SchedulerView
from sim.cli import CONF_DIR
from sim.compose import compose_spec
from sim.model import ModelSpec
from sim.simulate import simulate
from tests.conftest import request, toy_costs


@dataclass
class EveryPointQLLM(QLLM):
    """QLLM consulted at every scheduling point: must behave exactly like QLLM with skipping."""

    consults_every_point: bool = True


@dataclass
class Recorder:
    """Wraps a policy and checks the view it is shown on every consult."""

    inner: object
    granularity: Granularity = Granularity.LAYER
    last_now: float = 0.0

    def __post_init__(self) -> None:
        self.granularity = self.inner.granularity

    def schedule(self, view: SchedulerView) -> Decision:
        assert view.now_s >= self.last_now
        assert view.num_free_kv_tokens >= 0
        self.last_now = view.now_s
        return self.inner.schedule(view)


def configured_policies() -> dict:
    """Every policy in conf/policy/ (the conformance suite a user policy must pass too), at B = 4."""
    names = sorted(p.stem for p in (Path(CONF_DIR) / "policy").glob("*.yaml"))
    return {name: compose_spec([f"policy={name}", "max_batch_size=4"]).policy for name in names}


POLICIES = {name: (lambda p=p: copy.deepcopy(p)) for name, p in configured_policies().items()}
POLICIES["qllm-every-point"] = lambda: EveryPointQLLM(max_batch_size=4)

workloads = st.lists(
    st.tuples(
        st.floats(0, 0.2),  # arrival
        st.integers(1, 40),  # prompt tokens
        st.integers(1, 6),  # output tokens
        st.sampled_from(["LS", "BE"]),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("name", POLICIES)
@settings(max_examples=40, deadline=None)
@given(workload=workloads, kv_slack=st.integers(0, 200), seed=st.integers(0, 3))
def test_every_request_finishes_once_with_its_tokens(name, workload, kv_slack, seed):
    requests = [request(i, a, p, o, c) for i, (a, p, o, c) in enumerate(workload)]
    capacity = max(r.num_kv_tokens for r in requests) + kv_slack  # tight memory: admission must wait
    finished = []
    model = ModelSpec(name="toy", num_layers=3, hidden_size=64, intermediate_size=128, num_heads=4,
                      num_kv_heads=2, num_experts=4, top_k=2, vocab_size=100)
    outcome = simulate(requests, Recorder(POLICIES[name]()), toy_costs(model=model, seed=seed),
                       kv_capacity_tokens=capacity, max_batch_size=4, on_finish=finished.append)
    assert sorted(r.request_id for r in finished) == list(range(len(requests)))
    for r in requests:
        assert r.num_generated_tokens == r.num_output_tokens
        assert r.arrival_s <= r.first_token_s <= r.finish_s <= outcome.makespan_s
    assert outcome.busy_s <= outcome.makespan_s + 1e-12


@settings(max_examples=30, deadline=None)
@given(workload=workloads, seed=st.integers(0, 3))
def test_skipping_points_does_not_change_the_schedule(workload, seed):
    """The engine's event skipping is an optimisation only: same timeline as consulting everywhere."""
    timelines = []
    for policy in (QLLM(max_batch_size=4), EveryPointQLLM(max_batch_size=4)):
        requests = [request(i, a, p, o, c) for i, (a, p, o, c) in enumerate(workload)]
        simulate(requests, policy, toy_costs(seed=seed), kv_capacity_tokens=10_000, max_batch_size=4)
        timelines.append([v for r in requests for v in (r.first_token_s, r.finish_s, r.num_preemptions)])
    assert timelines[0] == pytest.approx(timelines[1])
