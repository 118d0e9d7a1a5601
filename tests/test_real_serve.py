"""Trace replay on the real engine (tiny random Mixtral, CPU): the policies from policies/ drive it,
nothing is lost under overload, and every request gets exactly its tokens, equal to HF's greedy output."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import FCFS, QLLM, Granularity, Priority, Request, SchedulerState, Stage  # noqa: E402
from real.engine import Engine  # noqa: E402
from real.kv import KVPool  # noqa: E402
from real.lanes import PriorityLane  # noqa: E402
from real.model import build_model, preset_config  # noqa: E402
from real.run import prompt_token_ids  # noqa: E402
import real.server  # noqa: E402
from real.batch import merge  # noqa: E402
from real.server import ReplayServer  # noqa: E402
from real.timeline import DeviceTimeline  # noqa: E402
from tests.test_consults import Logged, assert_asked_again_after_every_change  # noqa: E402

MAX_LEN = 40


@pytest.fixture(scope="module")
def model():
    return build_model(preset_config("tiny-mixtral"), seed=3)


def overload(num_be: int = 10, num_ls: int = 4) -> list[Request]:
    """BE requests flood in first (more than the KV slots hold); LS requests arrive while BE batches run."""
    be = [Request(i, 0.0005 * i, 4 + (7 * i) % 17, 5 + i % 4, Priority.BE, kv_unit_tokens=MAX_LEN)
          for i in range(num_be)]
    ls = [Request(num_be + j, 0.006 + 0.005 * j, 3 + j, 2 + j % 2, Priority.LS, kv_unit_tokens=MAX_LEN)
          for j in range(num_ls)]
    return be + ls


class StepClock:
    """A deterministic clock: every reading advances it by 0.4 ms (so runs do not depend on CPU speed)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.0004
        return self.now


def replay(model, policy, requests, num_slots: int = 6, stage_stops: bool = False,
           head_stops: bool = False, defer_tokens: bool = True) -> ReplayServer:
    engine = Engine(model, KVPool.allocate_for(model.config, num_slots, MAX_LEN, "cpu", torch.float32))
    state = SchedulerState(kv_capacity_tokens=num_slots * MAX_LEN, max_batch_size=4)
    server = ReplayServer(engine, policy, state, prompt_token_ids(0, model.config.vocab_size),
                          clock=StepClock(), stage_stops=stage_stops, head_stops=head_stops,
                          defer_tokens=defer_tokens)
    server.run(requests)
    return server


@pytest.mark.parametrize("policy", [FCFS(max_batch_size=4), QLLM(max_batch_size=4),
                                    QLLM(max_batch_size=4, granularity=Granularity.EXPERT)],
                         ids=["fcfs", "qllm-layer", "qllm-expert"])
def test_overload_loses_nothing_and_tokens_match_the_trace(model, policy):
    requests = overload()
    server = replay(model, policy, requests)
    assert sorted(server.outputs) == [r.request_id for r in requests]
    for r in requests:
        assert r.num_generated_tokens == r.num_output_tokens == len(server.outputs[r.request_id])
        assert r.arrival_s <= r.first_scheduled_s <= r.first_token_s <= r.finish_s
    assert server.engine.pool.num_free == 6  # every slot given back
    assert server.unplaced == {}  # each request's sequence, made at admission, was placed in a slot
    if isinstance(policy, QLLM):
        assert any(r.num_preemptions > 0 for r in requests)  # LS arrivals did interrupt BE batches


def test_served_tokens_equal_hf_greedy_generation(model):
    requests = overload(6, 3)
    server = replay(model, QLLM(max_batch_size=4, granularity=Granularity.EXPERT), requests)
    assert any(r.num_preemptions > 0 for r in requests)  # paused, merged and resumed, yet exact
    prompts = prompt_token_ids(0, model.config.vocab_size)
    for r in requests:
        with torch.inference_mode():
            ref = model.generate(torch.tensor([prompts(r)]), max_new_tokens=r.num_output_tokens,
                                 min_new_tokens=r.num_output_tokens, do_sample=False)
        assert server.outputs[r.request_id] == ref[0, r.num_prompt_tokens:].tolist()


def test_the_server_asks_again_after_every_change(model):
    """As the simulator: a decision that changed the state is followed by another consult at once."""
    policy = Logged(QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32))
    server = replay(model, policy, overload())
    assert len(server.outputs) == 14
    assert_asked_again_after_every_change(policy.log)


class BusyTimeline(DeviceTimeline):
    """The device always looks busy: every batch the policy starts claims the urgent lane (bookkeeping
    only on the CPU), so the joins before merges, pauses and resumptions are all exercised."""

    def busy_streams(self) -> set[int]:
        return {0}  # the main stream


@pytest.mark.parametrize("policy", [QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32),
                                    QLLM(max_batch_size=4, granularity=Granularity.EXPERT)],
                         ids=["qllm-catchup", "qllm-expert"])
def test_urgent_lane_is_held_by_one_batch_at_a_time_and_changes_no_token(model, policy):
    requests = overload()
    engine = Engine(model, KVPool.allocate_for(model.config, 6, MAX_LEN, "cpu", torch.float32))
    state = SchedulerState(kv_capacity_tokens=6 * MAX_LEN, max_batch_size=4)
    clock = StepClock()
    server = ReplayServer(engine, policy, state, prompt_token_ids(0, model.config.vocab_size), clock=clock,
                          timeline=BusyTimeline(engine.device, clock), lane=PriorityLane(enabled=True))
    server.run(requests)
    claimed = [batch_id for batch_id, level in server.lane.claims]
    assert len(claimed) == len(set(claimed)) > 1  # each batch claims once, at its start
    assert {level for _, level in server.lane.claims} == {1}  # only the main stream was ever busy
    assert server.lane.batch_id is None  # given back by the end
    order = [step.batch_id for step in server.steps]
    for batch_id in set(order):
        flags = [step.level > 0 for step in server.steps if step.batch_id == batch_id]
        assert flags == sorted(flags, reverse=True)  # urgent first, then on the main stream for good
        urgent_at = [i for i, step in enumerate(server.steps) if step.batch_id == batch_id and step.level]
        if urgent_at:  # nothing else ran while it held the lane
            assert set(order[urgent_at[0]: urgent_at[-1] + 1]) == {batch_id}
    reference = replay(model, policy, overload())  # the lane switched off
    assert server.outputs == reference.outputs


@pytest.mark.parametrize("policy, graphed", [(QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32),
                                             True),
                                            (QLLM(max_batch_size=4, granularity=Granularity.EXPERT), False)],
                         ids=["qllm-catchup", "qllm-expert"])
def test_batches_that_replay_decode_graphs_never_claim_the_lane(model, policy, graphed):
    """With decode graphs (run eagerly on the CPU) and a device that always looks busy, a batch that starts as pure
    decode stays on the main stream at layer granularity (it replays graphs there), and claims the lane at expert
    granularity (no graphs: it runs stage by stage); every batch with a prompt token claims it; tokens as without."""
    requests = overload()
    engine = Engine(model, KVPool.allocate_for(model.config, 6, MAX_LEN, "cpu", torch.float32), graphs=True)
    clock = StepClock()
    server = ReplayServer(engine, policy, SchedulerState(kv_capacity_tokens=6 * MAX_LEN, max_batch_size=4),
                          prompt_token_ids(0, model.config.vocab_size), clock=clock,
                          timeline=BusyTimeline(engine.device, clock), lane=PriorityLane(enabled=True))
    server.run(requests)
    first = {}
    for step in server.steps:
        if step.from_layer == 0 and step.kind == "advance":
            first.setdefault(step.batch_id, step)
    decode = {b for b, step in first.items() if step.num_tokens == step.num_seqs}
    claimed = {batch_id for batch_id, _ in server.lane.claims}
    assert decode and decode != set(first)  # both kinds of start happened
    assert claimed & decode == (set() if graphed else decode)
    assert claimed >= set(first) - decode
    assert server.outputs == replay(model, policy, overload()).outputs


@pytest.mark.parametrize("policy", [QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32),
                                    QLLM(max_batch_size=4, granularity=Granularity.EXPERT)],
                         ids=["qllm-catchup", "qllm-expert"])
def test_deferred_joins_wait_for_the_starts_first_layer_and_come_before_the_batch_goes_on(model, policy):
    """`defer_joins`: a batch that gave the lane up to a start is joined after that start's first layer is issued,
    and always before it is advanced or merged again; nothing else changes (claims, tokens)."""
    def serve(defer_joins: bool) -> tuple[ReplayServer, list[bool]]:
        engine = Engine(model, KVPool.allocate_for(model.config, 6, MAX_LEN, "cpu", torch.float32))
        clock = StepClock()
        server = ReplayServer(engine, policy, SchedulerState(kv_capacity_tokens=6 * MAX_LEN, max_batch_size=4),
                              prompt_token_ids(0, model.config.vocab_size), clock=clock,
                              timeline=BusyTimeline(engine.device, clock), lane=PriorityLane(enabled=True),
                              defer_joins=defer_joins)
        pending_at_issue, advance, merge_ = [], engine.advance, real.server.merge

        def checked_advance(batch, *args, **kwargs):
            batch_id = next(i for i, b in server.batches.items() if b is batch)
            assert batch_id not in {held.batch_id for held in server.deferred}  # joined before it goes on
            assert server.lane.batch_id in (None, batch_id)
            pending_at_issue.append(bool(server.deferred))
            return advance(batch, *args, **kwargs)

        def checked_merge(*args, **kwargs):
            assert not server.deferred  # a merge reads both batches on the main stream
            return merge_(*args, **kwargs)

        engine.advance = checked_advance
        real.server.merge = checked_merge
        try:
            server.run(overload())
        finally:
            real.server.merge = merge_
        return server, pending_at_issue

    joined, _ = serve(False)
    deferred, pending_at_issue = serve(True)
    assert joined.start_joins == deferred.start_joins > 0  # starts that found the lane held by a batch not running
    assert sum(pending_at_issue) == deferred.start_joins  # each deferred join was pending at one layer's issue
    assert not deferred.deferred and deferred.lane.batch_id is None
    assert deferred.lane.claims == joined.lane.claims and deferred.outputs == joined.outputs


@pytest.mark.parametrize("busy, level", [(set(), None), ({0}, 1), ({0, 1}, 2), ({1}, 2), ({2}, 3), ({0, 3}, 3), ({3}, 3)])
def test_a_preempting_batch_claims_the_level_above_the_busiest(busy, level):
    lane = PriorityLane()
    assert lane.claim(7, busy) == (level is not None)
    assert lane.level == (level or 0) and lane.batch_id == (7 if level else None)
    if level:
        with pytest.raises(RuntimeError, match="join it"):
            lane.claim(8, busy)
        lane.join(None)
        assert lane.batch_id is None and lane.level == 0


def test_a_join_marks_each_memory_block_of_the_batch_once(model):
    """`record_stream` marks a tensor's whole block, so the join marks one tensor per storage: the layout's views
    of one buffer once, and every block the batch holds (its residual stream, its expert queues) still."""
    from dataclasses import replace as with_fields

    from real.batch import MoEState
    from real.lanes import _storages, _tensors
    engine = Engine(model, KVPool.allocate_for(model.config, 4, MAX_LEN, "cpu", torch.float32))
    batch = engine.start([engine.place(engine.new_sequence(i, list(range(1, 4 + i)))) for i in range(3)])
    queues = torch.zeros(5, 4)
    batch = with_fields(batch, moe=MoEState(*(queues[i] for i in range(5))))
    tensors, marked = list(_tensors(batch)), list(_storages(batch))
    blocks = {t.untyped_storage().data_ptr() for t in tensors}
    assert [t.untyped_storage().data_ptr() for t in marked] == list(dict.fromkeys(
        t.untyped_storage().data_ptr() for t in tensors))  # each block once, in the walk's order
    assert len(blocks) < len(tensors) and len(marked) == len(blocks) >= 3  # hidden, layout buffer, queues


def test_a_switched_off_lane_never_claims():
    lane = PriorityLane(enabled=False)
    assert not lane.claim(1, {0}) and lane.claims == []


@pytest.mark.parametrize("policy", [QLLM(max_batch_size=4), QLLM(max_batch_size=4, preempt_ls_decode=True,
                                                                 ls_catch_up_layers=32)],
                         ids=["qllm", "qllm-catchup"])
def test_stage_stops_end_layers_between_stages_and_change_no_token(model, policy, monkeypatch):
    """An arrival ends a stepped layer after its attention or router; the batch is paused there, and a
    batch that reaches that position absorbs it (merges before the router)."""
    merged_at = []

    def spy(running, paused, staging=None):
        merged_at.append(running.position.stage)
        return merge(running, paused, staging)
    monkeypatch.setattr(real.server, "merge", spy)
    requests = overload()
    server = replay(model, policy, requests, stage_stops=True)
    partial = [s for s in server.steps if s.kind == "advance" and not s.whole]
    assert partial and Stage.ROUTER in merged_at  # layers ended between stages, and a batch merged there
    assert sorted(server.outputs) == [r.request_id for r in requests]
    for r in requests:
        assert r.num_generated_tokens == r.num_output_tokens == len(server.outputs[r.request_id])
    assert server.engine.pool.num_free == 6
    assert server.outputs == replay(model, policy, overload()).outputs  # the same tokens as whole layers


@pytest.mark.parametrize("policy", [QLLM(max_batch_size=4), QLLM(max_batch_size=4, preempt_ls_decode=True,
                                                                 ls_catch_up_layers=32)],
                         ids=["qllm", "qllm-catchup"])
def test_head_stops_pause_before_the_lm_head_and_change_no_token(model, policy):
    """An LS request that arrives while the host waits for a BE pass's last layer is seen before the LM
    head: the BE batch is paused where only its LM head is left, the LS batch runs and absorbs it there
    (one LM head for both), and every token is as without head stops. The clock is deterministic, so
    the arrival is placed inside that wait by scanning times near the LM head of the BE request alone."""
    def be():
        return [Request(0, 0.0, 9, 3, Priority.BE, kv_unit_tokens=MAX_LEN)]
    alone = replay(model, policy, be(), head_stops=True)
    finish_s = next(s for s in alone.steps if s.kind == "finish").issued_s
    # polling for arrivals reads the step clock too, so scan arrival times around the LM head's issue
    for arrival in np.arange(finish_s - 0.002, finish_s + 0.002, 0.0002):
        def requests():
            return be() + [Request(1, float(arrival), 5, 2, Priority.LS, kv_unit_tokens=MAX_LEN)]
        server = replay(model, policy, requests(), head_stops=True)
        first_pass = [s for s in server.steps if s.batch_id == 0]
        if first_pass[-1].kind == "advance" and first_pass[-1].to_layer == server.engine.num_layers:
            break  # the BE pass ended its layers, then paused before its LM head
    else:
        pytest.fail("no arrival time paused the BE batch before its LM head")
    finishes = [s for s in server.steps if s.kind == "finish"]
    assert finishes[0].num_seqs == 2  # the LS batch absorbed the paused BE batch: one LM head for both
    assert sum(s.num_seqs for s in finishes) == 3 + 2  # tokens asked, each generated once
    reference = replay(model, policy, requests())
    assert server.outputs == reference.outputs and sorted(server.outputs) == [0, 1]
    assert (0, "finish") not in [(s.batch_id, s.kind) for s in server.steps]  # no LM head of its own
    assert (0, "finish") in [(s.batch_id, s.kind) for s in reference.steps]
    assert server.engine.pool.num_free == 6


@pytest.mark.parametrize("policy", [FCFS(max_batch_size=4), QLLM(max_batch_size=4),
                                    QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32)],
                         ids=["fcfs", "qllm", "qllm-catchup"])
def test_head_and_stage_stops_lose_nothing_under_overload(model, policy):
    requests = overload(num_be=12, num_ls=6)
    server = replay(model, policy, requests, stage_stops=True, head_stops=True)
    assert sorted(server.outputs) == [r.request_id for r in requests]
    for r in requests:
        assert r.num_generated_tokens == r.num_output_tokens == len(server.outputs[r.request_id])
    assert server.engine.pool.num_free == 6 and not server.batches
    assert server.outputs == replay(model, policy, overload(num_be=12, num_ls=6)).outputs


class ArrivesDuringTheStart:
    """Arrivals in two waves: the first due at once, the second from the first question after that, as if it
    arrived while the host was starting the first wave's batch."""

    def __init__(self, *waves: list[Request]) -> None:
        self.waves = list(waves)
        self.delivered = 0

    def start(self, origin_s: float) -> None:
        pass

    def due(self, now) -> list[Request]:
        if not self.waves:
            return []
        self.delivered += 1
        return self.waves.pop(0)

    def is_due(self, now) -> bool:
        return bool(self.waves) and self.delivered > 0

    def wait(self, now_s: float) -> None:
        pass

    def idle(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return not self.waves


@pytest.mark.parametrize("start_checks", [False, True])
def test_start_checks_decide_on_an_arrival_before_the_started_batch_runs_a_layer(model, start_checks):
    """An LS request that arrives while the host starts a BE batch: with `start_checks` the policy sees it
    before the BE batch's first layer is issued; without, that layer goes first. Either way every request
    gets its tokens, HF's."""
    be = Request(0, 0.0, 9, 3, Priority.BE, kv_unit_tokens=MAX_LEN)
    ls = Request(1, 0.0, 5, 2, Priority.LS, kv_unit_tokens=MAX_LEN)
    engine = Engine(model, KVPool.allocate_for(model.config, 4, MAX_LEN, "cpu", torch.float32))
    server = ReplayServer(engine, QLLM(max_batch_size=4), SchedulerState(kv_capacity_tokens=4 * MAX_LEN,
                                                                         max_batch_size=4),
                          prompt_token_ids(0, model.config.vocab_size), clock=StepClock(), start_checks=start_checks)
    outcome = server.serve(ArrivesDuringTheStart([be], [ls]))
    first = [s for s in server.steps if s.kind == "advance"][0]
    # with the check, the LS prompt's 5 tokens are in the first layer issued (the BE batch, paused at layer 0,
    # joins the LS batch there); without, the BE batch's 9 run a layer alone first
    assert (first.num_tokens, first.num_seqs) == ((14, 2) if start_checks else (9, 1))
    assert ls.first_scheduled_s <= be.first_token_s and sorted(r.request_id for r in outcome.requests) == [0, 1]
    prompts = prompt_token_ids(0, model.config.vocab_size)
    for r in (be, ls):
        with torch.inference_mode():
            ref = model.generate(torch.tensor([prompts(r)]), max_new_tokens=r.num_output_tokens,
                                 min_new_tokens=r.num_output_tokens, do_sample=False)
        assert server.outputs[r.request_id] == ref[0, r.num_prompt_tokens:].tolist()
    assert engine.pool.num_free == 4


RETIRE, WAIT_FOR = ReplayServer._retire, real.server.wait_for


class HeldTokens:
    """Passes' tokens as on a busy GPU: polling never finds them arrived, only a wait on the host does (on the CPU
    they exist once issued), so finished requests hold their KV slots until a `_retire(wait=True)`."""

    def __init__(self, monkeypatch) -> None:
        self.waits: list[bool] = []  # per `_retire(wait=True)`: whether it came before the end of serving
        self.fenced: list[list] = []  # per start that waited on the device: (resolved, slots) of each pass waited for
        retire, wait_for = RETIRE, WAIT_FOR

        def held_retire(server, wait: bool = False) -> None:
            if wait:
                self.waits.append(bool(server.state.queues.num_waiting or server.state.running))
            retire(server, wait)

        def recorded_wait_for(pendings) -> None:
            if pendings:
                self.fenced.append([(p.resolved, [s.slot for s in p.seqs]) for p in pendings])
            wait_for(pendings)

        monkeypatch.setattr(real.pending.PendingTokens, "poll", lambda tokens: tokens.resolved)
        monkeypatch.setattr(ReplayServer, "_retire", held_retire)
        monkeypatch.setattr(real.server, "wait_for", recorded_wait_for)


@pytest.mark.parametrize("policy", [FCFS(max_batch_size=4), QLLM(max_batch_size=4),
                                    QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32)],
                         ids=["fcfs", "qllm", "qllm-catchup"])
def test_slot_fences_reuse_a_finished_requests_slot_without_a_host_wait_and_change_no_token(model, policy,
                                                                                           monkeypatch):
    """With every slot held by finished requests whose last pass is unresolved, a start waits on the host for
    them; with `slot_fences` it takes their slots at once, its stream waiting for their pass instead, and every
    request still gets exactly the tokens it gets without (and its trace's count), every slot coming back."""
    runs = {}
    for fences in (False, True):
        held = HeldTokens(monkeypatch)
        requests = overload(num_be=12, num_ls=6)
        engine = Engine(model, KVPool.allocate_for(model.config, 4, MAX_LEN, "cpu", torch.float32))
        state = SchedulerState(kv_capacity_tokens=4 * MAX_LEN, max_batch_size=4)
        server = ReplayServer(engine, policy, state, prompt_token_ids(0, model.config.vocab_size), clock=StepClock(),
                              slot_fences=fences)
        server.run(requests)
        assert sorted(server.outputs) == [r.request_id for r in requests]
        for r in requests:
            assert r.num_generated_tokens == r.num_output_tokens == len(server.outputs[r.request_id])
        assert engine.pool.num_free == 4 and not server.fences and not server.retiring
        assert server.slot_waits["device"] == sum(map(len, held.fenced)) and server.slot_waits["host"] == sum(held.waits)
        runs[fences] = server.outputs, held
    (plain, waited), (fenced, held) = runs[False], runs[True]
    assert fenced == plain
    assert sum(waited.waits) > 0 and not waited.fenced  # the host waited for passes mid-replay
    assert sum(held.waits) == 0 and held.fenced  # never with fences: starts waited on the device
    for passes in held.fenced:  # each start waited only for passes still running, whose finished gave up slots
        assert all(not resolved and -1 in slots for resolved, slots in passes)
