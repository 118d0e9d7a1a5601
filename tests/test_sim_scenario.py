"""Hand-computed timelines: an LS request arrives while a BE prefill is inside layer 1.

Toy model: 4 layers, 2 experts, top-2 (every token visits both experts). Stage costs: attention
1.0 ms, router 0.1 ms, each expert 0.5 ms, LM head 2.0 ms -> one layer 2.1 ms, one pass 10.4 ms.
BE request 0 (prompt 10, 2 output tokens) arrives at 0; LS request 1 (prompt 5, 1 token) at 3.0 ms.
"""

from __future__ import annotations

import pytest

from policies import FCFS, QLLM, Granularity
from sim.simulate import simulate
from tests.conftest import request, toy_costs

US = 1e-6  # microsecond tolerance

CASES = [
    # FCFS: LS waits for the whole BE prefill pass, then its own prefill; BE decodes after.
    ("fcfs", FCFS(), {"be_first": 10.4, "ls_first": 20.8, "be_finish": 31.2, "ls_preempt": 0, "be_preempt": 0, "ls_start": 10.4}),
    # QLLM/layer: LS arrives in layer 1 (2.1-4.2 ms); BE paused at layer 2 at 4.2 ms; LS runs layers
    # 0-1 (to 8.4), merges with BE at layer 2, layers 2-3 + head -> 14.6; BE decode 14.6-25.0.
    ("qllm-layer", QLLM(), {"be_first": 14.6, "ls_first": 14.6, "be_finish": 25.0, "ls_preempt": 0, "be_preempt": 1,
                            "ls_start": 4.2}),
    # QLLM/expert: BE paused before expert 0 of layer 1 (3.2 ms); LS runs layer 0 and layer 1's
    # attention + router (to 6.4), merges in the expert queues, experts + layers 2-3 + head -> 13.6.
    ("qllm-expert", QLLM(granularity=Granularity.EXPERT),
     {"be_first": 13.6, "ls_first": 13.6, "be_finish": 24.0, "ls_preempt": 0, "be_preempt": 1, "ls_start": 3.2}),
]


@pytest.mark.parametrize("name,policy,expected", CASES, ids=[c[0] for c in CASES])
def test_ls_arrival_during_be_prefill(name, policy, expected):
    be, ls = request(0, 0.0, 10, 2, "BE"), request(1, 3.0e-3, 5, 1, "LS")
    simulate([be, ls], policy, toy_costs(), kv_capacity_tokens=1000)
    assert be.first_token_s == pytest.approx(expected["be_first"] * 1e-3, abs=US)
    assert ls.first_token_s == pytest.approx(expected["ls_first"] * 1e-3, abs=US)
    assert ls.finish_s == ls.first_token_s
    assert be.finish_s == pytest.approx(expected["be_finish"] * 1e-3, abs=US)
    assert (ls.num_preemptions, be.num_preemptions) == (expected["ls_preempt"], expected["be_preempt"])
    assert ls.first_scheduled_s == pytest.approx(expected["ls_start"] * 1e-3, abs=US)  # preemption reaction
    assert be.first_scheduled_s == 0.0


def test_pause_resume_merge_costs_are_charged():
    from sim.profile import Overheads
    from tests.conftest import ConstantProfile

    profile = ConstantProfile(overheads=Overheads(pause_s=0.2e-3, merge_s=0.3e-3))
    be, ls = request(0, 0.0, 10, 1, "BE"), request(1, 3.0e-3, 5, 1, "LS")
    simulate([be, ls], QLLM(), toy_costs(profile), kv_capacity_tokens=1000)
    # pause at 4.2 (+0.2), LS layers 0-1 to 8.6, merge (+0.3) -> 8.9, layers 2-3 + head -> 15.1
    assert ls.first_token_s == pytest.approx(15.1e-3, abs=US)


def test_stage_stops_end_the_layer_at_the_next_stage():
    """QLLM/layer with stage stops: the LS arrival (3.0 ms) falls in layer 1's attention (2.1-3.1), so
    BE pauses before layer 1's router at 3.1 ms. LS runs layer 0 and layer 1's attention (to 6.2),
    merges with BE before the router, router + experts (to 7.3), layers 2-3 (to 11.5), head -> 13.5."""
    be, ls = request(0, 0.0, 10, 2, "BE"), request(1, 3.0e-3, 5, 1, "LS")
    simulate([be, ls], QLLM(), toy_costs(), kv_capacity_tokens=1000, stage_stops=True)
    assert ls.first_scheduled_s == pytest.approx(3.1e-3, abs=US)  # the reaction: one stage, not the layer
    assert ls.first_token_s == be.first_token_s == pytest.approx(13.5e-3, abs=US)
    assert be.finish_s == pytest.approx(23.9e-3, abs=US)
    assert (ls.num_preemptions, be.num_preemptions) == (0, 1)
    fcfs = [request(0, 0.0, 10, 2, "BE"), request(1, 3.0e-3, 5, 1, "LS")]
    simulate(fcfs, FCFS(), toy_costs(), kv_capacity_tokens=1000, stage_stops=True)  # iteration level
    assert fcfs[1].first_scheduled_s == pytest.approx(10.4e-3, abs=US)
