"""GPU benchmark of the engine against HF transformers' own forward, in one run:
decode-step time at several batch sizes (context 512) and prefill time, for HF eager experts,
HF grouped_mm experts and our engine (scheduling point at every layer), next to the HBM floor
(weight bytes / measured copy bandwidth); plus pause, resume and merge costs, and a bf16
agreement check. `python -m real.bench --model mixtral-8x7b --device cuda --out DIR`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch
from transformers import DynamicCache

from policies import Granularity, Position, Stage
from real.batch import merge
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config
from real.timing import copy_bandwidth_bytes_s, sync, timed_ms


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def random_prompts(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def hf_decode_ms(model, prompts: torch.Tensor, repeats: int) -> list[float]:
    device = model.device
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older transformers 5.x signature
        cache = DynamicCache()
    out = model(prompts.to(device), past_key_values=cache, use_cache=True)
    token = out.logits[:, -1:].argmax(-1)
    return timed_ms(lambda: model(token, past_key_values=cache, use_cache=True), device, repeats)


@torch.inference_mode()
def hf_prefill_ms(model, prompts: torch.Tensor, repeats: int) -> list[float]:
    ids = prompts.to(model.device)
    return timed_ms(lambda: model(ids, use_cache=False), model.device, repeats, warmup=1)


def engine_sequences(engine: Engine, prompts: torch.Tensor, first_id: int):
    return [engine.add_sequence(first_id + i, row.tolist()) for i, row in enumerate(prompts)]


def engine_decode_ms(engine: Engine, prompts: torch.Tensor, repeats: int) -> list[float]:
    seqs = engine_sequences(engine, prompts, 0)
    engine.run_pass(seqs)  # prefill
    times = timed_ms(lambda: engine.run_pass(seqs, Granularity.LAYER), engine.device, repeats)
    for seq in seqs:
        engine.release(seq)
    return times


def engine_prefill_ms(engine: Engine, prompts: torch.Tensor, repeats: int) -> list[float]:
    def once():
        seqs = engine_sequences(engine, prompts, 0)
        engine.run_pass(seqs, Granularity.LAYER)
        for seq in seqs:
            engine.release(seq)
    return timed_ms(once, engine.device, repeats, warmup=1)


def preemption_costs_ms(engine: Engine, prompts: torch.Tensor, repeats: int) -> dict[str, float]:
    """Pause + resume: a decode pass stopped at layer L/2 (device synced, control back on the host)
    and continued, minus the same pass uninterrupted. Merge: folding a batch paused at L/2 into
    another at L/2 (new packed layout, concatenated residual stream), device-synced."""
    half = len(prompts) // 2
    a_seqs, b_seqs = engine_sequences(engine, prompts[:half], 0), engine_sequences(engine, prompts[half:], 100)
    engine.run_pass(a_seqs + b_seqs)
    middle = Position(engine.num_layers // 2, Stage.ATTENTION)

    def to_middle(batch):
        while batch.position < middle:
            engine.advance(batch, Granularity.LAYER)

    def paused_pass():
        batch = engine.start(a_seqs)
        to_middle(batch)
        sync(engine.device)  # the pause: the host holds the batch, the GPU is free
        while not engine.advance(batch):
            pass
        engine.finish(batch)

    plain = timed_ms(lambda: engine.run_pass(a_seqs), engine.device, repeats)
    paused = timed_ms(paused_pass, engine.device, repeats)
    merges = []
    for _ in range(repeats):
        a, b = engine.start(a_seqs), engine.start(b_seqs)
        to_middle(a), to_middle(b)
        holder = []
        merges += timed_ms(lambda: holder.append(merge(b, a)), engine.device, 1, warmup=0)
        while not engine.advance(holder[0]):
            pass
        engine.finish(holder[0])
    for seq in a_seqs + b_seqs:
        engine.release(seq)
    median = lambda xs: float(torch.tensor(xs).median())  # noqa: E731
    return {"pass_ms": median(plain), "pass_with_pause_resume_ms": median(paused),
            "pause_resume_ms": median(paused) - median(plain), "merge_ms": median(merges)}


@torch.inference_mode()
def agreement(model, engine: Engine, prompts: torch.Tensor) -> dict[str, float]:
    """Engine (eager and grouped experts) vs HF (eager and grouped_mm experts) on the same prompts:
    max |logit difference| and greedy-token agreement of each pair."""
    refs = {}
    for impl in ("eager", "grouped_mm"):
        model.set_experts_implementation(impl)
        refs[f"hf_{impl}"] = model(prompts.to(model.device)).logits[:, -1].float()
    grouped = engine.grouped_experts
    for name, use_grouped in (("engine_eager", False), ("engine_grouped", True)):
        engine.grouped_experts = use_grouped
        seqs = engine_sequences(engine, prompts, 0)
        refs[name], _ = engine.run_pass(seqs)
        for seq in seqs:
            engine.release(seq)
    engine.grouped_experts = grouped
    out = {"logit_scale": float(refs["hf_eager"].abs().max())}
    pairs = [("engine_eager", "hf_eager"), ("engine_grouped", "hf_grouped_mm"), ("engine_grouped", "hf_eager"),
             ("hf_grouped_mm", "hf_eager"), ("engine_grouped", "engine_eager")]
    for a, b in pairs:
        out[f"{a}_vs_{b}_max_diff"] = float((refs[a] - refs[b]).abs().max())
        out[f"{a}_vs_{b}_greedy_agree"] = float((refs[a].argmax(-1) == refs[b].argmax(-1)).float().mean())
    return out


def run(args) -> tuple[pd.DataFrame, dict]:
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = build_model(preset_config(args.model), args.device, dtype)
    vocab = model.config.vocab_size
    engine = Engine(model, KVPool.allocate_for(model.config, max(args.batches) + 8, args.context + args.repeats + 64,
                                               args.device, dtype), grouped_experts=args.device == "cuda")
    rows = []
    record = lambda impl, phase, b, ms: rows.extend(  # noqa: E731
        {"impl": impl, "phase": phase, "batch": b, "context": args.context, "repeat": i, "ms": t} for i, t in enumerate(ms))
    for b in args.batches:
        prompts = random_prompts(b, args.context, vocab, seed=b)
        record("engine", "decode", b, engine_decode_ms(engine, prompts, args.repeats))
        for impl in args.hf_impls:
            model.set_experts_implementation(impl)
            record(f"hf-{impl}", "decode", b, hf_decode_ms(model, prompts, args.repeats))
    prompts = random_prompts(args.prefill_batch, args.context, vocab, seed=99)
    record("engine", "prefill", args.prefill_batch, engine_prefill_ms(engine, prompts, max(args.repeats // 2, 2)))
    for impl in args.hf_impls:
        model.set_experts_implementation(impl)
        record(f"hf-{impl}", "prefill", args.prefill_batch, hf_prefill_ms(model, prompts, max(args.repeats // 2, 2)))
    model.set_experts_implementation(args.hf_impls[-1])
    bandwidth = copy_bandwidth_bytes_s(args.device, 1 << 30 if args.device == "cuda" else 1 << 24)
    extra = {"weight_bytes": weight_bytes(model), "copy_bandwidth_bytes_s": bandwidth,
             "hbm_floor_ms": weight_bytes(model) / bandwidth * 1000,
             **preemption_costs_ms(engine, random_prompts(8, min(128, args.context), vocab, 5), args.repeats),
             **agreement(model, engine, random_prompts(4, min(64, args.context), vocab, 7))}
    if args.device == "cuda":
        extra["gpu"] = torch.cuda.get_device_name()
    extra.update(torch=torch.__version__, model=args.model)
    return pd.DataFrame(rows), extra


def summary_table(df: pd.DataFrame, floor_ms: float) -> pd.DataFrame:
    table = df.groupby(["phase", "batch", "impl"]).ms.median().unstack("impl")
    table["hbm_floor"] = floor_ms
    if "engine" in table:
        table["engine / floor"] = table["engine"] / floor_ms
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mixtral-8x7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--hf-impls", nargs="+", default=["eager", "grouped_mm"])
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    df, extra = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "real_bench.csv", index=False)
    (args.out / "real_bench.json").write_text(json.dumps(extra, indent=2))
    print(summary_table(df, extra["hbm_floor_ms"]).to_string(float_format=lambda v: f"{v:.2f}"))
    print(json.dumps(extra, indent=2))


if __name__ == "__main__":
    main()
