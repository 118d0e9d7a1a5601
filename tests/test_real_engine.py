"""The real engine computes exactly what Hugging Face computes, paused, merged and split or not
(tiny random models, CPU, fp32)."""

from __future__ import annotations

import os
import random

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import Granularity, Position, Stage
from real.batch import merge, split
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, load_model, preset_config

TOL = 1e-5
DEVICE = os.environ.get("QLLM_TEST_DEVICE", "cpu")  # set to cuda to run this suite on a GPU (fp32)
FAMILIES = ["tiny-mixtral", "tiny-qwen3-moe", "tiny-olmoe"]


# eager: HF's expert loop; grouped: sync-free experts (grouped_mm, dense GEMMs from 2 tokens);
# graphs: decode layers through the static-bucket runner (CUDA graphs on a GPU) with dense experts;
# varlen: fresh prompts attended as one unpadded group (real.layout.PackedGroup); lean: with the pass's rotary
# tables made once and q, k rotated together (Engine.lean_attention); passgraphs: prefill and mixed layers through
# the static-bucket pass runner too (real.passgraphs: attention over the KV pool in place, padded rows)
KINDS = {"eager": {}, "grouped": {"grouped_experts": True, "dense_tokens": (2, 64)},
         "graphs": {"grouped_experts": True, "graphs": True, "dense_tokens": (1, 64)},
         "varlen": {"varlen_prefill": True}, "lean": {"varlen_prefill": True, "lean_attention": True},
         "passgraphs": {"grouped_experts": True, "graphs": True, "dense_tokens": (1, 64), "pass_graphs": True}}


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return build_model(preset_config(request.param), DEVICE, seed=1)


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def new_engine(model, kind: str = "eager") -> Engine:
    return Engine(model, KVPool.allocate_for(model.config, 16, 96, DEVICE, torch.float32), **KINDS[kind])


def hf_last_logits(model, token_ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([token_ids], device=DEVICE)).logits[0, -1]


def check_against_hf(model, seqs, logits) -> None:
    """The pass that produced each sequence's last token saw all tokens before it."""
    for seq, row in zip(seqs, logits):
        assert (row - hf_last_logits(model, seq.token_ids[:-1])).abs().max() <= TOL


def prompts(n: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 120) for _ in range(rng.randrange(2, 12))] for _ in range(n)]


@pytest.mark.parametrize("granularity", [Granularity.LAYER, Granularity.EXPERT])
def test_greedy_tokens_equal_generate(model, kind, granularity):
    engine = new_engine(model, kind)
    prompt = prompts(1, 0)[0]
    seq = engine.add_sequence(0, prompt)
    for _ in range(6):
        logits, _ = engine.run_pass([seq], granularity)
        check_against_hf(model, [seq], logits)
    with torch.inference_mode():
        ref = model.generate(torch.tensor([prompt], device=DEVICE), max_new_tokens=6, min_new_tokens=6,
                             do_sample=False)
    assert seq.token_ids == ref[0].tolist()


@pytest.mark.parametrize("as_arrays", [False, True])
def test_batch_of_different_prompt_lengths(model, kind, as_arrays):
    """Also with the prompts handed over as int64 arrays too (as the server does): the same logits."""
    engine = new_engine(model, kind)
    seqs = [engine.add_sequence(i, p, np.array(p, dtype=np.int64) if as_arrays else None)
            for i, p in enumerate(prompts(4, 1))]
    for _ in range(3):  # one prefill pass, then decode passes, all four together
        logits, _ = engine.run_pass(seqs)
        check_against_hf(model, seqs, logits)


def test_a_prompt_array_must_match_its_ids(model):
    engine = new_engine(model)
    with pytest.raises(ValueError, match="prompt array of 2 ids for a prompt of 3"):
        engine.add_sequence(0, [1, 2, 3], np.array([1, 2]))
    assert engine.pool.num_free == engine.pool.num_slots  # no slot taken


def test_a_sequence_made_before_its_slot_is_placed_once(model):
    """The server makes a request's sequence at admission (`new_sequence`, no KV slot) and places it when its
    batch starts: the pool is untouched until then, and a placed sequence is not placed again."""
    engine = new_engine(model)
    free, ids = engine.pool.num_free, [5, 6, 7]
    seq = engine.new_sequence(0, ids, np.array(ids))
    ids.append(8)  # the caller's list stays the caller's
    assert seq.token_ids == [5, 6, 7] and seq.slot == -1 and engine.pool.num_free == free
    assert engine.place(seq) is seq and seq.slot >= 0 and engine.pool.num_free == free - 1
    with pytest.raises(ValueError, match="already holds KV slot"):
        engine.place(seq)
    with pytest.raises(ValueError, match="exceeds the KV slot length"):
        engine.new_sequence(1, [1] * (engine.pool.max_len + 1))


def random_position(rng: random.Random, engine: Engine) -> Position:
    layer = rng.randrange(1, engine.num_layers)
    if rng.random() < 0.5:
        return Position(layer, Stage.ATTENTION)
    return Position(layer, Stage.EXPERTS, rng.randrange(engine.num_experts))


def run_to(engine: Engine, batch, target: Position, granularity=Granularity.EXPERT) -> None:
    while batch.position < target:
        engine.advance(batch, granularity)
    assert batch.position == target


@pytest.mark.parametrize("seed", range(4))
def test_pause_interleave_merge_split(model, kind, seed):
    rng = random.Random(seed)
    engine = new_engine(model, kind)
    be = [engine.add_sequence(i, p) for i, p in enumerate(prompts(3, seed))]
    ls = [engine.add_sequence(10 + i, p) for i, p in enumerate(prompts(2, seed + 100))]
    # BE prefill pauses at a random layer or expert; an LS prefill runs meanwhile and merges there
    paused = engine.start(be)
    pause_at = random_position(rng, engine)
    run_to(engine, paused, pause_at)
    running = engine.start(ls)
    merge_at = pause_at if pause_at.stage == Stage.ATTENTION else Position(pause_at.layer, Stage.EXPERTS, 0)
    run_to(engine, running, merge_at)
    merged = merge(running, paused)
    while not engine.advance(merged, Granularity.EXPERT):
        pass
    logits, _ = engine.finish(merged)
    check_against_hf(model, merged.seqs, logits)
    # next decode pass: split at a random point, the halves finish one after the other
    batch = engine.start(merged.seqs)
    run_to(engine, batch, random_position(rng, engine))
    first, second = split(batch, {10, 11, 0})
    for half in (second, first):
        while not engine.advance(half, Granularity.LAYER):
            pass
        logits, _ = engine.finish(half)
        check_against_hf(model, half.seqs, logits)


def test_an_interleaved_batch_does_not_disturb_a_paused_one(model, kind):
    engine = new_engine(model, kind)
    a, b = (engine.add_sequence(i, p) for i, p in enumerate(prompts(2, 7)))
    engine.run_pass([a])
    paused = engine.start([a])  # a decode pass, paused at layer 2
    run_to(engine, paused, Position(2, Stage.ATTENTION), Granularity.LAYER)
    for _ in range(3):  # b prefills and decodes twice while a waits
        engine.run_pass([b])
    while not engine.advance(paused):
        pass
    logits, _ = engine.finish(paused)
    check_against_hf(model, [a], logits)


def test_merge_rejects_unreachable_positions(model):
    engine = new_engine(model)
    a, b = (engine.start([engine.add_sequence(i, p)]) for i, p in enumerate(prompts(2, 3)))
    run_to(engine, a, Position(2, Stage.ATTENTION), Granularity.LAYER)
    with pytest.raises(ValueError, match="cannot merge"):
        merge(b, a)


def test_loads_a_local_checkpoint(tmp_path):
    model = build_model(preset_config("tiny-mixtral"), DEVICE, seed=5)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt", DEVICE)
    prompt = prompts(1, 9)[0]
    engine = new_engine(loaded)
    seq = engine.add_sequence(0, prompt)
    logits, _ = engine.run_pass([seq])
    assert (logits[0] - hf_last_logits(model, prompt)).abs().max() <= TOL
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nothing-here")


def test_a_checkpoint_directory_is_checked_before_its_weights_load(tmp_path):
    """`model_config` takes a preset or a checkpoint folder, cuts either to fewer layers, and refuses, with the
    reason, a folder without config.json, a config that is not JSON, a model type the engine cannot drive and a cut
    deeper than the checkpoint; `load_model` refuses a checkpoint that lacks weights (transformers would make them
    random and only warn). `real serve` reads text prompts with a checkpoint's own tokenizer.model."""
    from hydra import compose, initialize_config_dir

    from real.cli import CONF_DIR
    from real.model import checkpoint_tokenizer, model_config
    from real.servecli import build_spec

    build_model(preset_config("tiny-qwen3-moe"), "cpu").save_pretrained(tmp_path / "qwen")
    assert model_config(str(tmp_path / "qwen")).num_hidden_layers == 3
    cut = model_config(str(tmp_path / "qwen"), num_hidden_layers=2)
    assert cut.model_type == "qwen3_moe" and cut.num_hidden_layers == 2 and cut.num_experts == 8
    assert model_config("tiny-mixtral", num_hidden_layers=2).num_hidden_layers == 2
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": ')
    for name, message in [(tmp_path / "none", "neither a preset"), ("mixtral-7x8b", "neither a preset"),
                          (tmp_path / "llama", "model type 'llama'"), (tmp_path / "broken", "not JSON")]:
        with pytest.raises(ValueError, match=message):
            model_config(str(name))
    with pytest.raises(ValueError, match="has 3 layers, not 4"):
        model_config(str(tmp_path / "qwen"), num_hidden_layers=4)
    model = build_model(preset_config("tiny-mixtral"), "cpu")
    model.save_pretrained(tmp_path / "partial", state_dict={k: v for k, v in model.state_dict().items()
                                                           if k != "model.norm.weight"})
    with pytest.raises(ValueError, match=r"lacks 1 of the model's weights \(model.norm.weight"):
        load_model(tmp_path / "partial")
    # text prompts over HTTP: the checkpoint's own tokenizer.model, unless `tokenizer=` names one
    assert checkpoint_tokenizer(str(tmp_path / "qwen")) is None and checkpoint_tokenizer("mixtral-8x7b") is None
    (tmp_path / "partial" / "tokenizer.model").write_bytes(b"sentencepiece")
    assert checkpoint_tokenizer(str(tmp_path / "partial")) == str(tmp_path / "partial" / "tokenizer.model")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("real_serve", [f"engine.model={tmp_path / 'partial'}", "engine.max_len=64"])
        assert build_spec(cfg, "qllm").tokenizer == str(tmp_path / "partial" / "tokenizer.model")
        assert build_spec(compose("real_serve", ["engine.max_len=64"]), "qllm").tokenizer is None
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((tmp_path / "partial" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="config-only"):
        load_model(tmp_path / "config-only")


def test_a_pass_start_sends_its_new_token_ids_with_the_layout():
    from real.layout import build_layout
    from real.pending import input_ids
    from real.sequence import Sequence
    seqs = [Sequence(0, [5, 6, 7], slot=2), Sequence(1, [8, 9, 10, 11], slot=0, num_cached=3),
            Sequence(2, [12, 13], slot=1)]
    layout = build_layout(seqs, "cpu", input_ids(seqs)[0])
    assert layout.token_ids.tolist() == [5, 6, 7, 11, 12, 13]
    assert layout.positions.tolist() == [0, 1, 2, 3, 0, 1] and layout.slots.tolist() == [2, 2, 2, 0, 1, 1]
    assert layout.last_rows.tolist() == [2, 3, 5]
    assert build_layout(seqs, "cpu").token_ids is None  # merges and splits rebuild layouts without them
    dry = build_layout(seqs, "cpu", input_ids(seqs)[0], dry=True)  # a rehearsal's: the same host work and values
    assert dry.positions.tolist() == layout.positions.tolist() and dry.token_ids.tolist() == layout.token_ids.tolist()



def test_a_rehearsal_changes_nothing(model):
    """`Engine.rehearse` (the host side of pass starts, for stand-ins) takes no KV slot and leaves the next
    pass's tokens and logits as they were."""
    engine, again = new_engine(model, "grouped"), new_engine(model, "grouped")
    seqs = [engine.add_sequence(i, p) for i, p in enumerate(prompts(3, seed=4))]
    twins = [again.add_sequence(i, list(seq.token_ids)) for i, seq in enumerate(seqs)]
    free = engine.pool.num_free
    engine.rehearse()
    assert engine.pool.num_free == free
    logits, tokens = engine.run_pass(seqs)
    engine.rehearse(launch=True)  # on a CPU, the same dry rehearsal
    more_logits, more_tokens = engine.run_pass(seqs)
    want_logits, want_tokens = again.run_pass(twins)
    want_more_logits, want_more_tokens = again.run_pass(twins)
    assert tokens == want_tokens and more_tokens == want_more_tokens
    assert torch.equal(logits, want_logits) and torch.equal(more_logits, want_more_logits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_launched_rehearsal_changes_nothing_on_the_gpu():
    """`rehearse(launch=True)` copies and embeds on its own stream and ring: the engine's next passes, and the
    ring of real starts, are as without it."""
    model = build_model(preset_config("tiny-mixtral"), "cuda", torch.bfloat16, seed=3)
    engines = [Engine.for_device(model, KVPool.allocate_for(model.config, 8, 96, "cuda", torch.bfloat16))
               for _ in range(2)]
    batches = [[e.add_sequence(i, p) for i, p in enumerate(prompts(3, seed=5))] for e in engines]
    results = []
    for engine, seqs, launch in zip(engines, batches, (False, True)):
        out = []
        for _ in range(3):
            for _ in range(5):
                engine.rehearse(launch=launch)
            out.append(engine.run_pass(seqs))
        results.append(out)
        assert (engine.rehearsal is not None) == launch
    assert engines[0].staging.next == engines[1].staging.next  # the real starts' ring: untouched by rehearsals
    for (logits, tokens), (more_logits, more_tokens) in zip(*results):
        assert tokens == more_tokens and torch.equal(logits, more_logits)


def test_stagecheck_compares_every_layout_field(capsys):
    import random

    from real import stagecheck
    from real.layout import build_layout
    from real.pending import input_ids
    stagecheck.main(["--iters", "20", "--device", "cpu"])
    assert capsys.readouterr().out.strip() == "stagecheck: 20 layouts, 0 differ"
    seqs = stagecheck.random_batch(random.Random(1))
    layout = build_layout(seqs, "cpu", input_ids(seqs)[0])
    assert len(stagecheck.tensors(layout)) == 4 + 5 * len(layout.groups)  # every tensor of the layout


def test_a_groups_real_queries_are_indexed_as_the_padded_mask_gives():
    """real.layout._group finds the real queries from the lengths; the [B, Q] mask it replaced gives the same
    indices, for groups of sequences whose packed rows have gaps (a group of some of a batch's sequences)."""
    from real.layout import _group
    rng = np.random.default_rng(1)
    for _ in range(200):
        b = int(rng.integers(1, 12))
        new, cached, slots = rng.integers(1, 40, b), rng.integers(0, 50, b), rng.integers(0, 64, b)
        offsets = np.cumsum(rng.integers(0, 3, b) + new) - new
        rows, positions, _, valid_flat, valid_rows, num_keys = _group(new, cached, slots, offsets)
        q = np.arange(new.max())
        valid = q[None, :] < new[:, None]
        padded = offsets[:, None] + np.minimum(q[None, :], new[:, None] - 1)
        assert (rows == padded).all() and (positions == padded - offsets[:, None] + cached[:, None]).all()
        assert (valid_flat == np.flatnonzero(valid)).all() and (valid_rows == padded[valid]).all()
        assert num_keys == (cached + new).max()


def test_startbench_prints_its_table(capsys):
    from real.startbench import main
    main(["--counts", "1", "3", "--repeats", "3"])
    out = capsys.readouterr().out
    assert "| prompts |" in out and "| sequences | built us | carried us |" in out  # prefill starts, decode starts
    assert out.count("\n| 1 |") == 2 and out.count("\n| 3 |") == 2


def test_fresh_prompts_form_one_packed_group_with_their_rows():
    """With `varlen`, a batch's fresh prompts are one PackedGroup: a span of rows when no decode row lies
    between them, else their rows; cu_lengths counts their tokens (sent as int32 pairs inside the int64 copy);
    a prompt with cached tokens keeps the padded group."""
    from real.layout import AttentionGroup, PackedGroup, build_layout
    from real.sequence import Sequence

    def seq(i, length, cached=0):
        return Sequence(i, [1] * length, slot=i, num_cached=cached)

    layout = build_layout([seq(0, 5), seq(1, 3), seq(2, 4)], "cpu", varlen=True)
    (group,) = layout.groups
    assert isinstance(group, PackedGroup) and group.span == (0, 12) and group.rows is None
    assert group.cu_lengths.dtype == torch.int32 and group.cu_lengths.tolist() == [0, 5, 8, 12]
    assert group.longest == 5 and layout.positions.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]

    layout = build_layout([seq(0, 3), seq(1, 9, cached=8), seq(2, 2), seq(3, 7, cached=6)], "cpu", varlen=True)
    decode, packed = layout.groups
    assert isinstance(decode, AttentionGroup) and decode.slots.tolist() == [1, 3]
    assert packed.rows.tolist() == [0, 1, 2, 4, 5] and packed.cu_lengths.tolist() == [0, 3, 5]

    layout = build_layout([seq(0, 1), seq(1, 4), seq(2, 3), seq(3, 5, cached=4)], "cpu", varlen=True)
    assert layout.groups[1].span == (1, 8) and layout.groups[1].rows is None  # decode rows only around them

    layout = build_layout([seq(0, 6, cached=2), seq(1, 4)], "cpu", varlen=True)  # cached keys: padded
    assert all(isinstance(g, AttentionGroup) for g in layout.groups)
    assert isinstance(build_layout([seq(0, 6)], "cpu", varlen=True).groups[0], PackedGroup)
    assert isinstance(build_layout([seq(0, 6)], "cpu").groups[0], AttentionGroup)


@pytest.mark.parametrize("lengths, cached, fresh", [
    ((5, 3), (0, 0), True), ((5, 3, 4), (0, 0, 0), True), ((2, 900, 17, 64), (0, 0, 0, 0), True),
    ((5, 1, 4), (0, 0, 0), False),  # a one-token prompt goes with the decode rows
    ((5, 9, 4), (0, 8, 0), False),  # a decode row between fresh prompts
    ((6, 4), (2, 0), False),  # cached keys
])
def test_a_batch_of_fresh_prompts_takes_the_short_path_to_the_same_arrays(lengths, cached, fresh):
    """`_fresh` (an LS prefill with its BE fill) gives `_packed`'s host arrays and groups, element for element and
    dtype for dtype, and declines every other batch."""
    from real.layout import _fresh, _packed
    from real.sequence import Sequence

    seqs = [Sequence(i, list(range(1, n + 1)), slot=7 - i, num_cached=c)
            for i, (n, c) in enumerate(zip(lengths, cached))]
    short = _fresh(seqs)
    assert (short is not None) == fresh
    if fresh:
        host, groups, total = _packed(seqs, varlen=True)
        assert short[1:] == (groups, total) and len(short[0]) == len(host)
        for a, b in zip(short[0], host):
            assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("cached", [(0,), (5, 17), (3, 900, 41, 7, 7)])
def test_a_decode_batch_takes_the_short_path_to_the_padded_groups_arrays(cached):
    """A batch of one new token each (a BE batch's next pass) skips `_group`'s padding arithmetic: its arrays
    equal `_group`'s, element for element, dtype and shape."""
    from real.layout import _group, _packed
    from real.sequence import Sequence

    seqs = [Sequence(i, list(range(1, c + 2)), slot=9 - i, num_cached=c) for i, c in enumerate(cached)]
    host, (group,), total = _packed(seqs)
    c, slots, one = np.array(cached), np.arange(9, 9 - len(cached), -1), np.ones(len(cached), dtype=np.int64)
    expected = _group(one, c, slots, np.arange(len(cached)))
    assert total == len(cached) and group[-1] == expected[-1] == max(cached) + 1
    for a, b in zip(host, [c, slots, np.arange(len(cached)), *expected[:-1]], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def test_a_mixed_batch_with_unpadded_prompts_matches_hf(model):
    """Decode sequences between fresh prompts in one pass (the prompts' rows gathered, not one span)."""
    engine = new_engine(model, "varlen")
    old = [engine.add_sequence(i, p) for i, p in enumerate(prompts(2, 7))]
    engine.run_pass(old)
    fresh = [engine.add_sequence(10 + i, p) for i, p in enumerate(prompts(2, 8))]
    seqs = [fresh[0], old[0], fresh[1], old[1]]
    batch = engine.start(seqs)
    assert batch.layout.groups[1].rows is not None
    for _ in range(2):
        logits, _ = engine.run_pass(seqs)
        check_against_hf(model, seqs, logits)


def gpu_prompt_batches():
    """A bf16 tiny Qwen3-MoE on the GPU and two batches of its engine's: three fresh prompts of 18-108 tokens, and
    the same with two decoding sequences between them."""
    model = build_model(preset_config("tiny-qwen3-moe"), "cuda", torch.bfloat16, seed=3)
    engine = Engine.for_device(model, KVPool.allocate_for(model.config, 8, 128, "cuda", torch.bfloat16))
    old = [engine.add_sequence(i, p) for i, p in enumerate(prompts(2, seed=5))]
    engine.run_pass(old)
    fresh = [engine.add_sequence(10 + i, [t for _ in range(9) for t in p]) for i, p in enumerate(prompts(3, 6))]
    return model, engine, (fresh, [fresh[0], old[0], fresh[1], fresh[2], old[1]])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unpadded_prompts_match_the_padded_path_on_the_gpu():
    """bf16 on a GPU: flash attention's varlen kernel against the padded SDPA path, on the same inputs, for a batch
    of fresh prompts only (one span) and for one with decode rows between them (gathered rows): the attention
    stage's outputs agree to bf16 rounding of the residual sum (H100: a few elements one ulp apart, mean |difference|
    1e-4 of the attention's own part; whole passes are not compared: a rounding flips a top-k choice)."""
    from real import stages
    from real.layout import PackedGroup, build_layout
    model, engine, batches = gpu_prompt_batches()
    for seqs in batches:
        tokens = sum(s.num_new for s in seqs)
        hidden = torch.randn(tokens, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            padded, unpadded = (stages.attention(model, 0, hidden, build_layout(seqs, "cuda", varlen=v), engine.pool)
                                .float() for v in (False, True))
        assert any(isinstance(g, PackedGroup) for g in build_layout(seqs, "cuda", varlen=True).groups)
        difference = (padded - unpadded).abs()
        assert difference.max() <= 2**-6 * padded.abs().max()  # four bf16 ulps at the output's scale
        assert difference.mean() <= 1e-2 * (padded - hidden.float()).abs().mean()


def test_prefillbench_prints_both_layouts_side_by_side(capsys, tmp_path):
    from real.prefillbench import main
    main(["--counts", "1", "3", "--repeats", "2", "--out", str(tmp_path / "p.csv")])
    out = capsys.readouterr().out
    assert "| prompts |" in out and "varlen attention ms" in out and out.count("\n| 3 |") == 1
    table = pd.read_csv(tmp_path / "p.csv")
    assert table.prompts.tolist() == [1, 3] and (table["rel diff"] < 1e-5).all()  # fp32 on a CPU: the same sums
    with pytest.raises(SystemExit, match="--counts must be >= 1"):
        main(["--counts", "0"])


@pytest.mark.parametrize("seed", range(2))
def test_lean_attention_computes_the_same_floats(model, seed):
    """`lean_attention` (rotary tables once per pass, q and k rotated together): bit for bit the logits of the
    plain stepped path, through prefill, decode, a pause, a merge and a split."""
    results = []
    for lean in (False, True):
        engine = new_engine(model, "varlen")
        engine.lean_attention = lean
        rng = random.Random(seed)
        seqs = [engine.add_sequence(i, p) for i, p in enumerate(prompts(4, seed))]
        out = [engine.run_pass(seqs[:2])[0]]
        batch, other = engine.start(seqs[:2]), engine.start(seqs[2:])
        target = Position(rng.randrange(1, engine.num_layers), Stage.ATTENTION)
        run_to(engine, batch, target)
        run_to(engine, other, target)
        batch = merge(batch, other)
        first, second = split(batch, {seqs[0].seq_id, seqs[2].seq_id})
        for half in (first, second):
            while not engine.advance(half, Granularity.LAYER):
                pass
            out.append(engine.finish(half)[0])
        results.append(out)
    for plain, lean in zip(*results):
        assert torch.equal(plain, lean)


def torch_calls(fn) -> int:
    """How many torch functions `fn()` calls (attribute reads aside): a host path's cost in calls."""
    from torch.overrides import TorchFunctionMode

    class Calls(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") != "__get__":
                Calls.count += 1
            return func(*args, **(kwargs or {}))

    with Calls():
        fn()
    return Calls.count


def test_lean_attention_issues_fewer_torch_calls():
    """The point of it: a stepped prefill attention's torch calls (the host's cost per call, 20-30 µs on a GPU's
    serving host) drop by over 20 once the pass's tables exist (Qwen3: 91 -> 69 on this padded path; on a GPU's
    unpadded one, about 70 -> 48)."""
    from real import stages
    from real.layout import build_layout
    from real.sequence import Sequence

    qwen = build_model(preset_config("tiny-qwen3-moe"), "cpu", seed=1)
    pool = KVPool.allocate_for(qwen.config, 4, 64, "cpu", torch.float32)
    layout = build_layout([Sequence(0, [1] * 20, slot=0)], "cpu")
    hidden = torch.randn(20, qwen.config.hidden_size)
    counts = []
    with torch.inference_mode():
        tables = stages.pass_rope(qwen, hidden, layout.positions)
        for rope_tables in (None, tables):
            counts.append(torch_calls(lambda: stages.attention(qwen, 0, hidden, layout, pool, rope_tables)))
    assert counts[0] - counts[1] >= 20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lean_attention_is_the_same_floats_on_the_gpu():
    """bf16 on a GPU, unpadded prompts (q and k reach flash attention as views of one rotated tensor) and a batch
    with decode rows between them: the stage's output with the pass's tables equals the plain one bit for bit."""
    from real import stages
    from real.layout import build_layout
    model, engine, batches = gpu_prompt_batches()
    for seqs in batches:
        layout = build_layout(seqs, "cuda", varlen=True)
        hidden = torch.randn(layout.num_tokens, model.config.hidden_size, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            tables = stages.pass_rope(model, hidden, layout.positions)
            plain, lean = (stages.attention(model, 0, hidden, layout, engine.pool, t) for t in (None, tables))
        assert torch.equal(plain, lean)
