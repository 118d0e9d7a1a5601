"""A decode batch's next pass derived on the device from its last one (real.carry, `Engine.carry_decode`): the
layout and token ids equal the host-built ones, the logits HF's, only a pass's exact continuation is carried, and a
replay serves the same tokens with it (tiny random models; on the CPU, or the GPU with QLLM_TEST_DEVICE=cuda, where the
decode layers replay CUDA graphs and the ids cross from the LM head's stream on the device)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import FCFS, QLLM, Granularity, SchedulerState
from real import graphs
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config
from real.run import prompt_token_ids
from real.server import ReplayServer
from real.stagecheck import tensors
from tests.test_real_engine import DEVICE, torch_calls
from tests.test_real_graphs import check_against_hf, decoding
from tests.test_real_serve import StepClock, overload

MAX_LEN = 40


@pytest.fixture(scope="module", params=["tiny-mixtral", "tiny-qwen3-moe"])
def model(request):
    return build_model(preset_config(request.param), DEVICE, seed=5)


def graphed_engine(model, key_step: int = graphs.KEY_STEP) -> Engine:
    pool = KVPool.allocate_for(model.config, 16, 96, DEVICE, torch.float32)
    dense = (1, 64) if DEVICE == "cuda" else (4, 64)  # a captured graph's experts must be dense (fp32 grouped syncs)
    return Engine(model, pool, grouped_experts=True, graphs=True, dense_tokens=dense, graph_key_step=key_step,
                  carry_decode=True)


def decode_pass(engine: Engine, seqs):
    """One decode pass of `seqs`, its tokens left on the device (a carry for the next pass)."""
    batch = engine.start(seqs)
    while not engine.advance(batch, Granularity.LAYER):
        pass
    return batch, engine.finish_async(batch)


def test_a_carried_layout_equals_the_one_built_on_the_host(model):
    engine = graphed_engine(model)
    seqs = decoding(engine, 0, 3, seed=1)
    decode_pass(engine, seqs)
    assert len(engine.carries) == 1
    engine.carry_decode = False
    built = engine.start(seqs)  # the host path: arrays, one copy, the placeholders filled in
    engine.carry_decode = True
    carried = engine.start(seqs)
    assert engine.carries == []  # taken
    assert carried.layout.num_tokens == built.layout.num_tokens == 3
    assert carried.layout.groups[0].num_keys == built.layout.groups[0].num_keys
    for mine, theirs in zip(tensors(carried.layout), tensors(built.layout), strict=True):
        assert torch.equal(mine, theirs)
    assert torch.equal(carried.hidden, built.hidden)


@pytest.mark.parametrize("key_step", [4, graphs.KEY_STEP], ids=["buckets-change", "one-bucket"])
def test_carried_passes_give_hf_logits(model, key_step):
    """Passes carried one from the next through the graph runner's buckets (a carried layout keeps its slots, so
    only its positions are loaded; with a key step of 4 the bucket changes every few passes, a full load): the
    logits equal HF's, and bit for bit those of the same passes built on the host."""
    runs = []
    for carry in (True, False):
        engine = graphed_engine(model, key_step)
        engine.carry_decode = carry
        seqs = decoding(engine, 0, 3, seed=2)
        _, first = decode_pass(engine, seqs)  # after the prefill: built on the host, nothing to carry from
        runs.append([])
        for _ in range(6):
            batch = engine.start(seqs)
            assert engine.carries == []  # the last pass's carry was taken (none kept without carry_decode)
            while not engine.advance(batch, Granularity.LAYER):
                pass
            logits, _ = engine.finish(batch)
            first.resolve()  # the first pass's ids, read on the device so far, onto the host for HF's check
            check_against_hf(model, seqs, logits)
            runs[-1].append(logits)
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_only_a_pass_exact_continuation_is_carried(model):
    engine = graphed_engine(model)
    seqs = decoding(engine, 0, 3, seed=3)
    decode_pass(engine, seqs)
    carry = engine.carries[0]
    for other in (seqs[:2], seqs[::-1], [*seqs, *decoding(engine, 10, 1, seed=4)]):
        engine.start(other)
        assert engine.carries == [carry]  # fewer, reordered or more sequences: built on the host
    engine.run_pass(seqs[:1])  # the first sequence fed its token since: not the carried pass's next
    assert not carry.matches(seqs)
    assert engine.start(seqs).layout.positions.tolist() == [len(s.token_ids) - 1 for s in seqs]


def test_a_prefill_pass_leaves_no_carry(model):
    engine = graphed_engine(model)
    seq = engine.add_sequence(0, [3, 4, 5, 6])
    decode_pass(engine, [seq])
    assert engine.carries == []


def carried_replay(model, policy, carry: bool) -> tuple[ReplayServer, int]:
    engine = Engine(model, KVPool.allocate_for(model.config, 6, MAX_LEN, "cpu", torch.float32), carry_decode=carry)
    taken, take = [], engine._carry_for

    def counted(seqs):
        found = take(seqs)
        if found is not None:
            taken.append(found)
        return found

    engine._carry_for = counted
    server = ReplayServer(engine, policy, SchedulerState(kv_capacity_tokens=6 * MAX_LEN, max_batch_size=4),
                          prompt_token_ids(0, model.config.vocab_size), clock=StepClock())
    server.run(overload(12, 6))
    return server, len(taken)


@pytest.mark.parametrize("policy", [FCFS(max_batch_size=4), QLLM(max_batch_size=4),
                                    QLLM(max_batch_size=4, preempt_ls_decode=True, ls_catch_up_layers=32)],
                         ids=["fcfs", "qllm", "qllm-catchup"])
def test_a_replay_with_carried_passes_serves_the_same_tokens(policy):
    """Under overload (preemptions, merges, requests finishing out of a batch), every request gets the tokens it
    gets without carries, as many as its trace asks, and every slot comes back."""
    cpu_model = build_model(preset_config("tiny-mixtral"), seed=3)
    carried, num_carried = carried_replay(cpu_model, policy, carry=True)
    plain, _ = carried_replay(cpu_model, policy, carry=False)
    assert num_carried > 0
    assert carried.outputs == plain.outputs and len(carried.outputs) == 18
    assert all(len(carried.outputs[r.request_id]) == r.num_output_tokens for r in overload(12, 6))
    assert carried.engine.pool.num_free == 6


def test_a_carried_start_issues_a_fraction_of_the_torch_calls(model):
    """The point of it: each torch call of a start costs a GPU's serving host 20-30 µs (real.starttrace). A carried
    decode start issues three (the positions' add, their [B, 1] view for the group, the embedding; on a GPU also three
    `record_stream`s, no kernel), the host-built one over twice as many (arrays sent in one copy and viewed per field,
    the placeholders filled in: 10 on the CPU, 13 on an H100)."""
    engine = graphed_engine(model)
    seqs = decoding(engine, 0, 4, seed=6)
    decode_pass(engine, seqs)
    counts = []
    for carry in (False, True):
        engine.carry_decode = carry
        counts.append(torch_calls(lambda: engine.start(seqs)))
    assert counts[1] <= (6 if DEVICE == "cuda" else 3) and counts[0] >= 2 * counts[1], counts
