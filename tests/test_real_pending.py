"""Deferred tokens (real.pending): a pass's sampled ids reach the host in the background, and a next pass
that feeds them reads them on the device; nothing computed changes (tiny random models; CPU, or the GPU
with QLLM_TEST_DEVICE=cuda, where the ids cross streams)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import FCFS, QLLM, Granularity, SchedulerState
from real import pending as pending_mod
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config
from real.pending import PLACEHOLDER, HostRing, PendingTokens, input_ids
from real.run import prompt_token_ids
from real.sequence import Sequence
from real.server import ReplayServer
from real.timeline import DeviceTimeline
from tests.test_real_engine import DEVICE, check_against_hf, new_engine, prompts
from tests.test_real_serve import StepClock, overload, replay


@pytest.fixture(scope="module")
def model():
    return build_model(preset_config("tiny-mixtral"), DEVICE, seed=1)


def issued(ids: list[int], seqs: list[Sequence]) -> PendingTokens:
    return PendingTokens.issue(torch.tensor(ids), seqs)


def test_input_ids_number_placeholders_by_their_row_in_the_pendings_concatenation():
    a, b, c, d = (Sequence(i, [10 + i, 20 + i], num_cached=0) for i in range(4))
    first = issued([7, 8], [a, b])  # a, b: placeholders at rows 0, 1
    second = issued([9], [c])  # c: row 0 of the second
    ids, pendings = input_ids([c, d, b])  # c's pending is met first: offset 0; first's rows follow it
    assert ids.tolist() == [-(1 + 0), 13, 23, -(1 + 1 + 1)]  # b: row 1 of `first`, after second's one row
    assert pendings == [second, first]
    assert a.token_ids == [10, 20, PLACEHOLDER] and a.num_cached == 2 and a.num_new == 1
    second.poll()  # resolved: its ids are on the host and fed as such
    ids, pendings = input_ids([c, b])
    assert ids.tolist() == [9, -(1 + 1)] and pendings == [first]
    assert c.token_ids == [12, 22, 9] and c.pending is None


def test_prompts_made_ready_as_arrays_pack_as_their_lists_do():
    """A prompt given as an int64 array (the server makes it at admission) is packed from the array; after its
    prefill pass, or beside decodes and placeholders, the ids are those the lists give."""
    import numpy as np
    ready = [Sequence(i, [3 + i, 4 + i, 5 + i], prompt=np.array([3 + i, 4 + i, 5 + i])) for i in range(2)]
    plain = Sequence(9, [40, 41])
    decode = Sequence(5, [60, 61, 62], num_cached=2)
    ids, pendings = input_ids([ready[0], decode, ready[1], plain])
    assert ids.dtype == np.int64 and ids.tolist() == [3, 4, 5, 62, 4, 5, 6, 40, 41] and pendings == []
    waiting = issued([7, 8], ready)  # their prefill pass ran: each now feeds one token, not its array
    assert input_ids(ready)[0].tolist() == [-1, -2] and input_ids(ready)[1] == [waiting]
    waiting.poll()
    assert input_ids(ready + [decode])[0].tolist() == [7, 8, 62]


def test_a_later_pass_keeps_the_earlier_placeholder_filled_in_place():
    seq = Sequence(0, [5, 6])
    first = issued([7], [seq])
    second = issued([8], [seq])  # issued before the first was polled (the host ran ahead)
    assert seq.token_ids == [5, 6, PLACEHOLDER, PLACEHOLDER] and seq.pending == (second, 0)
    assert second.resolve() == [8] and seq.pending is None
    assert first.resolve() == [7] and seq.token_ids == [5, 6, 7, 8]


def test_the_host_ring_waits_for_a_buffer_only_while_its_ids_are_unresolved():
    ring = HostRing([torch.empty(4, dtype=torch.int64) for _ in range(2)], [None, None])
    seqs = [Sequence(i, [1]) for i in range(3)]
    users = []
    for seq in seqs:
        ring.take(1)
        users.append(issued([3], [seq]))
        ring.claim(users[-1])
    assert users[0].resolved and not users[1].resolved and not users[2].resolved  # the third take reused #0
    with pytest.raises(ValueError, match="exceed"):
        ring.take(5)


def test_deferred_tokens_feed_the_next_pass_from_the_device(model):
    """Two sequences whose last tokens come from two LM heads, neither read by the host, decode together:
    the logits equal HF's on the sampled tokens, and the placeholders then resolve to those tokens."""
    engine = new_engine(model, "grouped")
    seqs = [engine.add_sequence(i, p) for i, p in enumerate(prompts(2, 5))]
    pendings = []
    for seq in seqs:
        batch = engine.start([seq])
        while not engine.advance(batch, Granularity.LAYER):
            pass
        pendings.append(engine.finish_async(batch))
    assert all(s.token_ids[-1] == PLACEHOLDER for s in seqs)
    decode = engine.start(seqs)  # reads both LM heads' ids on the device
    while not engine.advance(decode, Granularity.LAYER):
        pass
    logits, _ = engine.finish(decode)
    assert [p.resolve() for p in pendings] == [[s.token_ids[-2]] for s in seqs]
    check_against_hf(model, seqs, logits)


@pytest.mark.parametrize("policy", [FCFS(max_batch_size=4), QLLM(max_batch_size=4),
                                    QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32)],
                         ids=["fcfs", "qllm", "qllm-catchup"])
def test_a_replay_with_deferred_tokens_serves_the_same_tokens(policy, monkeypatch):
    """Under overload (slots short, so a new sequence sometimes waits for a finished one's tokens), with
    placeholders read on the device at pass starts: every request gets its tokens, the same as when the
    host waits for each LM head, and every slot comes back."""
    cpu_model = build_model(preset_config("tiny-mixtral"), seed=3)
    fills, fill = [], pending_mod.fill
    monkeypatch.setattr("real.engine.fill_pending", lambda ids, p: fills.append(len(p)) or fill(ids, p))
    slot_waits, free_slot = [], ReplayServer._free_slot
    def counted(self):
        slot_waits.append(self.engine.pool.num_free == 0)  # every slot held, some by finished requests
        return free_slot(self)
    monkeypatch.setattr(ReplayServer, "_free_slot", counted)
    deferred = replay(cpu_model, policy, overload(12, 6))
    assert any(slot_waits) or isinstance(policy, FCFS)  # FCFS's passes never need the slot of the one in flight
    waited = replay(cpu_model, policy, overload(12, 6), defer_tokens=False)
    assert sum(n > 0 for n in fills) > 0  # some pass start did read placeholders on the device
    assert deferred.outputs == waited.outputs and len(deferred.outputs) == 18
    assert all(PLACEHOLDER not in out for out in deferred.outputs.values())
    assert deferred.engine.pool.num_free == 6 and not deferred.retiring
    finishes = [s for s in deferred.steps if s.kind == "finish"]
    assert sum(s.num_seqs for s in finishes) == sum(r.num_output_tokens for r in overload(12, 6))


class MarkLog(DeviceTimeline):
    """Records, per mark, whether the host waited there for the device (interruptibly)."""

    def __init__(self, device, clock) -> None:
        super().__init__(device, clock)
        self.waits: list[bool] = []

    def mark(self, throttle: bool = False, interrupt=None) -> int:
        self.waits.append(throttle and interrupt is not None)
        return super().mark(throttle, interrupt)


@pytest.mark.parametrize("policy", [FCFS(max_batch_size=4), QLLM(max_batch_size=4)], ids=["fcfs", "qllm"])
def test_the_host_waits_for_the_device_after_every_lm_head(policy):
    """Without the LM head's sync, the throttle after each pass is what keeps an iteration-level policy's
    host from queueing passes far ahead of the device (and deciding them long before they run)."""
    cpu_model = build_model(preset_config("tiny-mixtral"), seed=3)
    engine = Engine(cpu_model, KVPool.allocate_for(cpu_model.config, 6, 40, "cpu", torch.float32))
    clock = StepClock()
    timeline = MarkLog(engine.device, clock)
    server = ReplayServer(engine, policy, SchedulerState(kv_capacity_tokens=6 * 40, max_batch_size=4),
                          prompt_token_ids(0, cpu_model.config.vocab_size), clock=clock, timeline=timeline)
    server.run(overload(6, 2))
    finishes = [step for step in server.steps if step.kind == "finish"]
    assert finishes and all(timeline.waits[step.end] for step in finishes)
