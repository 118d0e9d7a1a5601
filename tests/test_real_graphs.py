"""Decode layers through the static-bucket runner (real.graphs): padded buckets, buffers shared by
paused and running batches, merges at a layer boundary, key-length buckets growing with the context.
On CPU the runner executes its layer function eagerly; on a GPU (marked tests) as CUDA graphs."""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import Granularity, Position, Stage
from real import graphs
from real.batch import merge, split
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config

TOL = 1e-5


@pytest.fixture(scope="module", params=["tiny-mixtral", "tiny-qwen3-moe"])
def model(request):
    return build_model(preset_config(request.param), "cpu", seed=3)


def new_engine(model, device="cpu", dtype=torch.float32, key_step=graphs.KEY_STEP) -> Engine:
    pool = KVPool.allocate_for(model.config, 16, 96, device, dtype)
    return Engine(model, pool, grouped_experts=True, graphs=True, dense_tokens=(4, 64), graph_key_step=key_step)


def hf_last_logits(model, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([token_ids], device=model.device)).logits[0, -1].float()


def check_against_hf(model, seqs, logits, tol=TOL) -> None:
    for seq, row in zip(seqs, logits):
        assert (row - hf_last_logits(model, seq.token_ids[:-1])).abs().max() <= tol


def decoding(engine: Engine, first_id: int, num: int, seed: int):
    """`num` sequences with different prompt lengths, prefilled: ready for decode passes."""
    rng = random.Random(seed)
    seqs = [engine.add_sequence(first_id + i, [rng.randrange(3, 120) for _ in range(rng.randrange(2, 14))])
            for i in range(num)]
    engine.run_pass(seqs)
    return seqs


def to_layer(engine: Engine, batch, layer: int) -> None:
    while batch.position < Position(layer, Stage.ATTENTION):
        engine.advance(batch, Granularity.LAYER)


def finish(engine: Engine, batch):
    while not engine.advance(batch, Granularity.LAYER):
        pass
    return engine.finish(batch)[0]


def test_decode_runs_in_padded_buckets(model):
    engine = new_engine(model)
    seqs = decoding(engine, 0, 3, seed=0)
    for _ in range(3):
        check_against_hf(model, seqs, engine.run_pass(seqs, Granularity.LAYER)[0])
    assert {size for size, _ in engine.runner.buckets} == {4}  # 3 sequences padded to a bucket of 4


def test_paused_batch_survives_a_batch_that_shares_its_bucket(model):
    engine = new_engine(model)
    a, c = decoding(engine, 0, 2, seed=1), decoding(engine, 10, 2, seed=2)
    paused = engine.start(a)
    to_layer(engine, paused, 2)  # a's residual stream now lives in the bucket's buffer
    for _ in range(2):
        check_against_hf(model, c, engine.run_pass(c, Granularity.LAYER)[0])  # same bucket: evicts a
    check_against_hf(model, a, finish(engine, paused))


@pytest.mark.parametrize("seed", range(3))
def test_decode_batches_merge_and_split_at_a_layer(model, seed):
    engine = new_engine(model)
    rng = random.Random(seed)
    be, ls = decoding(engine, 0, 3, seed), decoding(engine, 10, 2, seed + 50)
    layer = rng.randrange(1, engine.num_layers)
    paused = engine.start(be)
    to_layer(engine, paused, layer)
    running = engine.start(ls)
    to_layer(engine, running, layer)
    merged = merge(running, paused)  # 5 sequences: a new bucket from here on
    check_against_hf(model, merged.seqs, finish(engine, merged))
    batch = engine.start(merged.seqs)
    to_layer(engine, batch, rng.randrange(1, engine.num_layers))
    first, second = split(batch, {0, 10})
    for half in (second, first):
        check_against_hf(model, half.seqs, finish(engine, half))


def test_key_buckets_grow_with_the_context(model):
    engine = new_engine(model, key_step=4)
    seqs = decoding(engine, 0, 2, seed=4)
    for _ in range(6):
        check_against_hf(model, seqs, engine.run_pass(seqs, Granularity.LAYER)[0])
    assert len({keys for _, keys in engine.runner.buckets}) >= 2


@pytest.mark.parametrize("key_step, key_lengths", [(4, {16, 20}), (96, {96})])
def test_the_key_step_sets_the_key_buckets(model, key_step, key_lengths):
    """engine.graph_key_step: contexts of 13-17 keys round up to multiples of the step, capped at the slot length
    (96); one step as long as the slot leaves one key bucket per batch size, and the same logits."""
    engine = new_engine(model, key_step=key_step)
    seqs = [engine.add_sequence(i, list(range(3, 3 + n))) for i, n in enumerate((12, 13))]
    engine.run_pass(seqs)
    for _ in range(4):
        check_against_hf(model, seqs, engine.run_pass(seqs, Granularity.LAYER)[0])
    assert {keys for _, keys in engine.runner.buckets} == key_lengths
    engine.runner.prepare(4)
    assert len({keys for _, keys in engine.runner.buckets}) == (1 if key_step == 96 else 96 // key_step)


def test_expert_granularity_bypasses_the_runner(model):
    engine = new_engine(model)
    seqs = decoding(engine, 0, 2, seed=5)
    check_against_hf(model, seqs, engine.run_pass(seqs, Granularity.EXPERT)[0])
    assert not engine.runner.buckets


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_equal_the_stepwise_engine():
    """bf16 on the GPU: graph replay vs the same stages launched one by one (same kernels)."""
    model = build_model(preset_config("tiny-mixtral"), "cuda", torch.bfloat16, seed=3)
    graphed = new_engine(model, "cuda", torch.bfloat16)
    plain = Engine(model, KVPool.allocate_for(model.config, 16, 96, "cuda", torch.bfloat16), grouped_experts=True,
                   dense_tokens=(4, 64))
    outs = []
    for engine in (graphed, plain):
        seqs = decoding(engine, 0, 5, seed=6)
        outs.append(torch.stack([engine.run_pass(seqs, Granularity.LAYER)[0] for _ in range(3)]))
    assert graphed.runner.buckets and all(b.graphs for b in graphed.runner.buckets.values())
    assert (outs[0] - outs[1]).abs().max() <= 1e-2 * outs[1].abs().max()


def test_experts_choice_follows_the_queue_fill(model):
    """Dense once there are as many (token, expert) pairs as experts; grouped_mm below that and for
    one-expert steps; HF's loop unless sync-free experts are asked for (and on CPU by default)."""
    from real import stages
    engine = Engine(model, KVPool.allocate_for(model.config, 2, 16, "cpu", torch.float32), grouped_experts=True)
    low = -(-engine.num_experts // model.config.num_experts_per_tok)
    assert engine.experts_for(low - 1) is stages.experts_grouped
    assert engine.experts_for(low) is stages.experts_dense
    assert engine.experts_for(low, one_expert=True) is stages.experts_grouped
    assert Engine.for_device(model, engine.pool).experts_for(low) is stages.experts_eager


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name, self.device = name, type("Device", (), {"index": 0})()


def test_graphs_capture_on_the_stream_they_replay_on_and_the_default_streams_on_one_kept_side_stream(monkeypatch):
    """A captured GEMM keeps its capture stream's cuBLAS workspace: graphs replayed on two streams at once must not
    have been captured on one stream (real.graphs.capture_stream; the engine stall, session 25)."""
    default, urgent, made = FakeStream("default"), FakeStream("urgent"), []
    current = [default]
    monkeypatch.setattr(graphs.torch.cuda, "current_stream", lambda device=None: current[0])
    monkeypatch.setattr(graphs.torch.cuda, "default_stream", lambda device=None: default)
    monkeypatch.setattr(graphs.torch.cuda, "Stream", lambda device=None: made.append(FakeStream("side")) or made[-1])
    monkeypatch.setattr(graphs, "_DEFAULT_CAPTURE", {})
    side = graphs.capture_stream()
    assert side.name == "side" and graphs.capture_stream() is side and len(made) == 1  # kept, not one per capture
    current[0] = urgent
    assert graphs.capture_stream() is urgent


def test_the_workspace_probe_needs_a_gpu_and_says_so():
    from real import workspacecheck
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the probe would run")
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        workspacecheck.main(["--seconds", "1"])
