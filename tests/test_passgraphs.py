"""The pass runner (real.passgraphs): prefill and mixed layers in static buckets, attention over the KV pool in
place (real.spans), computes what Hugging Face computes (tiny random models, CPU, fp32; CUDA graphs on a GPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import Granularity, Position, Stage
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config
from real.passgraphs import PassRunner
from real.sequence import Sequence
from real.spans import PoolSpans, host_spans
from tests.test_real_engine import FAMILIES, check_against_hf, gpu_prompt_batches, prompts, run_to


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return build_model(preset_config(request.param), "cpu", seed=1)


def new_engine(model, pass_graphs: bool = True) -> Engine:
    pool = KVPool.allocate_for(model.config, 16, 96, "cpu", torch.float32)
    return Engine(model, pool, grouped_experts=True, graphs=True, dense_tokens=(1, 64), pass_graphs=pass_graphs)


def counting(engine: Engine) -> list:
    """The (tokens, sequences) of each layer the pass runner runs."""
    seen, run = [], engine.pass_runner.run_layer

    def run_layer(batch):
        seen.append((batch.layout.num_tokens, len(batch.seqs)))
        run(batch)
    engine.pass_runner.run_layer = run_layer
    return seen


def test_spans_of_a_mixed_batch_padded_to_its_bucket():
    """A fresh prompt (slot 2), a decode with 7 cached (slot 0), a prompt with 4 cached (slot 1): 5 + 1 + 3 rows in
    a bucket of 12 rows and 4 sequences; KV slots of 10 tokens, scratch slot 5."""
    seqs = [Sequence(0, [1] * 5, slot=2), Sequence(1, [1] * 8, slot=0, num_cached=7),
            Sequence(2, [1] * 7, slot=1, num_cached=4)]
    spans = PoolSpans.over(torch.from_numpy(host_spans(seqs, 12, 4, 10, 5)), 12, 4)
    assert spans.positions.tolist() == [0, 1, 2, 3, 4, 7, 4, 5, 6, 0, 0, 0]
    assert spans.slots.tolist() == [2] * 5 + [0] + [1] * 3 + [5] * 3
    assert spans.cu_queries.tolist() == [0, 5, 6, 9, 9, 12]  # an empty sequence, then the padding's 3 rows
    assert spans.key_starts.tolist() == [20, 0, 10, 50, 50, 50]
    assert spans.used.tolist() == [5, 8, 7, 0, 0]
    assert spans.max_queries == 12


def test_spans_reject_a_batch_over_the_bucket():
    with pytest.raises(ValueError, match="exceed a bucket"):
        host_spans([Sequence(0, [1] * 13, slot=0)], 12, 4, 16, 5)
    with pytest.raises(ValueError, match="exceed a bucket"):
        host_spans([Sequence(i, [1], slot=i) for i in range(5)], 12, 4, 16, 5)


def test_a_mixed_batch_runs_through_the_runner_and_matches_hf(model):
    """Decodes between fresh prompts, then a pass where some prompts resume after a cached prefix: every layer in
    the runner, the logits HF's."""
    engine = new_engine(model)
    seen = counting(engine)
    old = [engine.add_sequence(i, p) for i, p in enumerate(prompts(2, 7))]
    engine.run_pass(old)
    fresh = [engine.add_sequence(10 + i, p) for i, p in enumerate(prompts(2, 8))]
    seqs = [fresh[0], old[0], fresh[1], old[1]]
    logits, _ = engine.run_pass(seqs)
    check_against_hf(model, seqs, logits)
    assert len(seen) == 2 * engine.num_layers  # both prefill passes; the decode-only ones are the decode runner's
    resumed = Sequence(20, prompts(1, 9)[0] + [5, 6, 7], slot=engine.pool.acquire())
    engine.run_pass([resumed])  # its whole prompt cached, then three tokens more as one pass
    resumed.token_ids += [8, 9, 10]
    logits, _ = engine.run_pass([resumed, old[0]])
    check_against_hf(model, [resumed, old[0]], logits)


def test_only_layer_steps_with_the_switch_on_use_the_runner(model):
    engine = new_engine(model, pass_graphs=False)
    seen = counting(engine)
    seq = engine.add_sequence(0, prompts(1, 3)[0])
    engine.run_pass([seq])
    assert seen == []  # switched off
    engine.pass_graphs = True
    batch = engine.start([engine.add_sequence(1, prompts(1, 4)[0])])
    engine.advance(batch, Granularity.EXPERT)  # expert stepping: stage by stage
    assert seen == [] and batch.position.layer == 0 and batch.position.stage == Stage.EXPERTS
    run_to(engine, batch, Position(1, Stage.ATTENTION))
    while not engine.advance(batch, Granularity.LAYER):
        pass
    assert len(seen) == engine.num_layers - 1


def test_two_batches_sharing_a_bucket_keep_their_rows(model):
    """A paused prefill's residual stream lives in the bucket; another batch of the same size class takes the bucket
    meanwhile (its rows copied out first), and both finish as HF computes."""
    engine = new_engine(model)
    seen = counting(engine)
    a, b = (engine.add_sequence(i, p) for i, p in enumerate(prompts(2, 11)))
    paused = engine.start([a])
    run_to(engine, paused, Position(1, Stage.ATTENTION), Granularity.LAYER)
    logits_b, _ = engine.run_pass([b])
    while not engine.advance(paused):
        pass
    logits_a, _ = engine.finish(paused)
    check_against_hf(model, [a], logits_a)
    check_against_hf(model, [b], logits_b)
    assert len({key for key in seen}) == 2 and len(seen) == 2 * engine.num_layers


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attention_over_the_pool_matches_the_packed_path_on_the_gpu():
    """bf16 on a GPU: flash attention over the KV pool in place (one call, padded to a bucket) against the engine's
    stepped attention, on the same inputs: fresh prompts only, and prompts with decodes between them. The real rows
    agree to bf16 rounding of the residual sum (as test_unpadded_prompts_match_the_padded_path_on_the_gpu); the
    padding rows' attention is exactly 0."""
    from real import stages
    from real.layout import build_layout
    model, engine, batches = gpu_prompt_batches()
    pool = engine.pool
    for seqs in batches:
        tokens = sum(s.num_new for s in seqs)
        block = torch.from_numpy(host_spans(seqs, 512, 16, pool.max_len, pool.scratch_slot)).cuda()
        hidden = torch.randn(512, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            stepped = stages.attention(model, 0, hidden[:tokens], build_layout(seqs, "cuda", varlen=True), pool)
            pooled = stages.attention_pooled(model, 0, hidden, PoolSpans.over(block, 512, 16), pool)
        assert torch.equal(pooled[tokens:], hidden[tokens:])
        stepped, pooled = stepped.float(), pooled[:tokens].float()
        difference = (stepped - pooled).abs()
        assert difference.max() <= 2**-6 * stepped.abs().max()
        assert difference.mean() <= 1e-2 * (stepped - hidden[:tokens].float()).abs().mean()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_replayed_layer_computes_what_its_code_computes_eagerly_on_the_gpu():
    """The captured graphs replay the runner's own layer: a runner that runs it eagerly gives the same rows, to the
    order of the experts' accumulation (index_add_ adds a token's expert outputs in any order)."""
    model, engine, batches = gpu_prompt_batches()
    eager = PassRunner(model, engine.pool, engine.experts_for, capture=False)
    assert engine.pass_runner.capture
    for seqs in batches:
        outs = []
        for runner in (engine.pass_runner, eager):
            batch = engine.start(seqs)
            with torch.inference_mode():
                for _ in range(2):
                    runner.run_layer(batch)
                outs.append(batch.hidden.float())
        assert (outs[0] - outs[1]).abs().max() <= 2**-7 * outs[1].abs().max()


def test_the_runner_is_built_with_the_decode_one_and_not_captured_on_the_cpu(model):
    engine = new_engine(model)
    assert isinstance(engine.pass_runner, PassRunner) and not engine.pass_runner.capture
    assert Engine(model, KVPool.allocate_for(model.config, 4, 32, "cpu", torch.float32)).pass_runner is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_each_stream_replays_its_own_runner_on_the_gpu():
    """An engine warmed up on a second stream builds a runner for it; a batch run there replays that runner's graphs
    and computes the rows the main stream's runner computes (to the experts' accumulation order)."""
    model, engine, batches = gpu_prompt_batches()
    side = torch.cuda.Stream(priority=-1)
    engine.warm_up(4)
    with torch.cuda.stream(side):
        engine.warm_up(4)
    assert len(engine.pass_runners) == 2 and all(r.num_graphs for r in engine.pass_runners.values())
    engine.pass_graphs = True
    outs = []
    for stream in (torch.cuda.current_stream(), side):
        with torch.cuda.stream(stream):
            batch = engine.start(batches[1])
            for _ in range(2):
                engine.advance(batch)
            engine.release_rows(batch)
        torch.cuda.current_stream().wait_stream(stream)
        outs.append(batch.hidden.float())
    assert (outs[0] - outs[1]).abs().max() <= 2**-7 * outs[0].abs().max()


def test_the_simulator_knows_the_largest_bucket():
    from real.passgraphs import ROW_SIZES, SEQ_SIZES
    from sim.profile.measured import PASS_GRAPH_SEQS, PASS_GRAPH_TOKENS
    assert (PASS_GRAPH_TOKENS, PASS_GRAPH_SEQS) == (ROW_SIZES[-1], SEQ_SIZES[-1])


def test_the_simulator_knows_the_decode_buckets():
    from real.graphs import BUCKET_SIZES
    from sim.profile.measured import DECODE_GRAPH_BUCKETS
    assert DECODE_GRAPH_BUCKETS == BUCKET_SIZES


@pytest.mark.parametrize("pass_graphs", [False, True])
def test_a_batch_stops_where_a_paused_one_waits_inside_a_layer(model, pass_graphs):
    """An LS prefill paused between stages of layer 1 (a catch-up): the next prefill batch, told where it waits
    (`merge_at`), steps that layer instead of replaying it, stops there, absorbs it, and both compute what HF
    computes. Replayed, the layer would pass the paused batch by."""
    from real.batch import merge
    engine = new_engine(model, pass_graphs)
    seen = counting(engine)
    first, second = (engine.add_sequence(i, p) for i, p in enumerate(prompts(2, 13)))
    paused = engine.start([first])
    run_to(engine, paused, Position(1, Stage.EXPERTS, 0), Granularity.EXPERT)
    running = engine.start([second])
    assert not engine.advance(running, Granularity.LAYER, lambda p: p.can_absorb(paused.position), (paused.position,))
    assert engine.pass_graphed(running) == pass_graphs and running.position == Position(1, Stage.ATTENTION)
    assert not engine.advance(running, Granularity.LAYER, lambda p: p.can_absorb(paused.position), (paused.position,))
    assert running.position.can_absorb(paused.position)
    assert len(seen) == (1 if pass_graphs else 0)  # layer 0 replayed, layer 1 stepped
    both = merge(running, paused)
    while not engine.advance(both):
        pass
    logits, _ = engine.finish(both)
    check_against_hf(model, both.seqs, logits)
