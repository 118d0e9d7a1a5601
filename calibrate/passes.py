"""Whole passes and preemption events, timed in the same run as the stage grids:

- decode passes of 1 and 2 layers of the calibration model (engine and HF): their difference is the
  per-layer cost inside a pipelined pass, which gives the per-stage and per-pass host overheads that
  the stage functions alone do not include;
- decode passes of the full model (HF eager, HF grouped_mm, the engine): what the simulator must predict;
- merge and pause+resume of the engine's batches."""

from __future__ import annotations

import gc
from contextlib import contextmanager

import torch
from transformers import DynamicCache

from calibrate.timing import timed_s
from policies import Granularity, Position, Stage
from real.batch import merge
from real.engine import Engine
from real.gcwatch import GCWatch


@contextmanager
def layers(model, num_layers: int):
    """Run only the first `num_layers` decoder layers (HF forward and the engine read the config)."""
    full = model.config.num_hidden_layers
    model.config.num_hidden_layers = num_layers
    try:
        yield
    finally:
        model.config.num_hidden_layers = full


def prompts(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def hf_decode(model, ids: torch.Tensor, repeats: int) -> list[dict]:
    cache = _new_cache(model)
    out = model(ids.to(model.device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    return timed_gc(lambda: model(token, past_key_values=cache, use_cache=True), _device(model), repeats, warmup=2)


@torch.inference_mode()
def hf_prefill(model, ids: torch.Tensor, repeats: int) -> list[float]:
    ids = ids.to(model.device)
    return timed_s(lambda: model(ids, use_cache=False, logits_to_keep=1), _device(model), repeats)  # as generate


def engine_decode(engine: Engine, ids: torch.Tensor, repeats: int) -> list[dict]:
    seqs = [engine.add_sequence(i, row.tolist()) for i, row in enumerate(ids)]
    try:
        engine.run_pass(seqs)  # prefill
        return timed_gc(lambda: engine.run_pass(seqs, Granularity.LAYER), engine.device.type, repeats, warmup=2)
    finally:
        for seq in seqs:
            engine.release(seq)


def timed_gc(fn, device: str, repeats: int, warmup: int = 1) -> list[dict]:
    """Per repeat: the pass's wall seconds, and the garbage collections that fell inside it (count per
    generation, seconds paused). HF's own forward runs with the collector on, so a pause would be part of
    what a host-bound pass costs (H200, session 9: at most 2 generation-0 collections in 60 HF passes)."""
    rows = []
    for _ in range(warmup):
        fn()
    for _ in range(repeats):
        with GCWatch() as watch:
            time_s = timed_s(fn, device, 1, warmup=0)[0]
        counts = watch.summary()["collections"]
        rows.append({"time_s": time_s, "gc_s": sum(p for _, p in watch.pauses),
                     **{f"gc{g}": n for g, n in enumerate(counts)}})
    return rows


def heap_census(repeats: int = 5) -> list[dict]:
    """The collector's state where passes are timed: objects it tracks, and the pause of a forced
    collection of each generation (`repeats` each): what a collection inside a pass would cost."""
    gc.collect()
    rows = [{"event": "gc_tracked_objects", "repeat": 0, "time_s": float(len(gc.get_objects()))}]
    for generation in range(3):
        for i in range(repeats):
            with GCWatch() as watch:
                gc.collect(generation)
            rows.append({"event": f"gc_collect{generation}", "repeat": i, "time_s": sum(p for _, p in watch.pauses)})
    return rows


def engine_prefill(engine: Engine, ids: torch.Tensor, repeats: int) -> list[float]:
    def once():
        seqs = [engine.add_sequence(i, row.tolist()) for i, row in enumerate(ids)]
        try:
            engine.run_pass(seqs, Granularity.LAYER)
        finally:
            for seq in seqs:
                engine.release(seq)
    return timed_s(once, engine.device.type, repeats)


def make_engine(model, pool, impl: str) -> Engine:
    """engine: stage by stage (real.run's default); engine-graphs: decode layers as CUDA graphs."""
    on_cuda = pool.k[0].device.type == "cuda"
    return Engine(model, pool, grouped_experts=on_cuda, graphs=impl == "engine-graphs" and on_cuda)


def decode_passes(model, pool, impls: list[str], batches, context: int, repeats: int) -> list[dict]:
    """Rows (impl, layers, phase, batch, context, repeat, time_s) at the model's current depth."""
    rows, depth = [], model.config.num_hidden_layers
    engines = {impl: make_engine(model, pool, impl) for impl in impls if impl.startswith("engine")}
    for batch in batches:
        ids = prompts(batch, context, model.config.vocab_size, seed=batch)
        for impl in impls:
            if impl in engines:
                times = engine_decode(engines[impl], ids, repeats)
            else:
                model.set_experts_implementation(impl.removeprefix("hf-"))
                times = hf_decode(model, ids, repeats)
            rows += [{"impl": impl, "layers": depth, "phase": "decode", "batch": batch, "context": context,
                      "repeat": i, **t} for i, t in enumerate(times)]
    return rows


def prefill_passes(model, pool, impls: list[str], batch: int, length: int, repeats: int) -> list[dict]:
    rows, ids = [], prompts(batch, length, model.config.vocab_size, seed=99)
    for impl in impls:
        if impl.startswith("engine"):
            times = engine_prefill(make_engine(model, pool, impl), ids, repeats)
        else:
            model.set_experts_implementation(impl.removeprefix("hf-"))
            times = hf_prefill(model, ids, repeats)
        rows += [{"impl": impl, "layers": model.config.num_hidden_layers, "phase": "prefill", "batch": batch,
                  "context": length, "repeat": i, "time_s": t} for i, t in enumerate(times)]
    return rows


def preemption_events(engine: Engine, vocab: int, repeats: int, batch: int = 4, context: int = 128) -> list[dict]:
    """Merge: folding a batch paused at the middle layer into another there (sync-bracketed).
    pause_resume: a decode pass stopped at the middle layer (device synced, control on the host)
    and continued, minus the same pass uninterrupted (paired repeats)."""
    ids = prompts(2 * batch, context, vocab, seed=5)
    a = [engine.add_sequence(i, row.tolist()) for i, row in enumerate(ids[:batch])]
    b = [engine.add_sequence(100 + i, row.tolist()) for i, row in enumerate(ids[batch:])]
    try:
        return _preemption_rows(engine, a, b, repeats)
    finally:
        for seq in a + b:
            engine.release(seq)


def _preemption_rows(engine: Engine, a: list, b: list, repeats: int) -> list[dict]:
    engine.run_pass(a + b)
    middle = Position(max(engine.num_layers // 2, 1), Stage.ATTENTION)
    device = engine.device.type

    def to_middle(batch_state):
        while batch_state.position < middle:
            engine.advance(batch_state, Granularity.LAYER)

    def finish(batch_state):
        while not engine.advance(batch_state):
            pass
        engine.finish(batch_state)

    def paused_pass():
        state = engine.start(a)
        to_middle(state)
        torch.cuda.synchronize() if device == "cuda" else None
        finish(state)

    rows = []
    for i in range(repeats):
        plain = timed_s(lambda: engine.run_pass(a), device, 1, warmup=0)[0]
        paused = timed_s(paused_pass, device, 1, warmup=0)[0]
        left, right = engine.start(a), engine.start(b)
        to_middle(left), to_middle(right)
        holder = []
        merged = timed_s(lambda h=holder, r=right, l=left: h.append(merge(r, l, engine.staging)), device, 1,
                         warmup=0)[0]
        finish(holder[0])
        rows += [{"event": "pause_resume", "repeat": i, "time_s": paused - plain},
                 {"event": "merge", "repeat": i, "time_s": merged}]
    return rows


def _device(model) -> str:
    return next(model.parameters()).device.type


@torch.inference_mode()
def hf_decode_diagnosis(model, ids: torch.Tensor, steps: int) -> list[dict]:
    """Per-step rows of HF's own decode under three variants, to find what a growing `DynamicCache`
    costs beyond the stages: `grow` (as `hf_decode`), `grow-nogc` (Python's collector off, as the real
    engine replays), `fixed` (the cache cropped back after each step: constant context). Each row
    carries the caching allocator's device mallocs and retries during that step."""
    rows, device = [], _device(model)
    for variant in ("grow", "grow-nogc", "fixed"):
        cache = _new_cache(model)
        out = model(ids.to(model.device), past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)

        def step(crop=variant == "fixed", cache=cache, token=token):
            model(token, past_key_values=cache, use_cache=True)
            if crop:
                cache.crop(-1)
        was_enabled = gc.isenabled()
        if variant == "grow-nogc":
            gc.disable()
        try:
            for i in range(steps + 2):
                before = _alloc_stats(device)
                time_s = timed_s(step, device, 1, warmup=0)[0]
                after = _alloc_stats(device)
                if i >= 2:
                    rows.append({"variant": variant, "batch": ids.shape[0], "context": ids.shape[1], "step": i - 2,
                                 "time_s": time_s, **{k: after[k] - before[k] for k in after}})
        finally:
            if was_enabled:
                gc.enable()
        del cache
    return rows


def _new_cache(model):
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers 5.x signature
        return DynamicCache()


def _alloc_stats(device: str) -> dict:
    if device != "cuda":
        return {"device_mallocs": 0, "alloc_retries": 0}
    stats = torch.cuda.memory_stats()
    return {"device_mallocs": stats.get("num_device_alloc", 0), "alloc_retries": stats.get("num_alloc_retries", 0)}
