"""GPU benchmark of the engine against HF transformers' own forward, in one run: decode-step time at
several batch sizes (context 512) and prefill time, for the engine (a scheduling point at every
layer: the host regains control between layers) and HF (eager and grouped_mm experts), next to the
HBM floor (weight bytes / copy bandwidth measured in the same run); pause, resume and merge costs;
and agreement of the engine's logits with HF's.

`python -m real.bench --model mixtral-8x7b --out DIR` (writes DIR/real_bench.csv and .json).
Timing: each call bracketed by device syncs, perf_counter, warm-up calls excluded, medians reported.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median

import pandas as pd
import torch
from transformers import DynamicCache

from policies import Granularity, Position, Stage
from real.batch import merge
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config
from real.timing import copy_bandwidth_bytes_s, sync, timed_ms

ENGINES = {  # name -> (Engine settings, where the host regains control); all share one KV pool
    "engine-graphs": ({"grouped_experts": True, "graphs": True}, Granularity.LAYER),  # dense from E/k tokens
    "engine-graphs-grouped_mm": ({"grouped_experts": True, "graphs": True, "dense_tokens": (0, 0)}, Granularity.LAYER),
    "engine-graphs-dense": ({"grouped_experts": True, "graphs": True, "dense_tokens": (1, 4096)}, Granularity.LAYER),
    "engine-stepwise": ({"grouped_experts": True}, Granularity.LAYER),  # the same stages, launched one by one
    "engine-expert-points": ({"grouped_experts": True, "graphs": True}, Granularity.EXPERT),  # stops between experts
}
PHASES = ("decode", "prefill", "preempt", "agree")


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def random_prompts(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def add_sequences(engine: Engine, prompts: torch.Tensor, first_id: int = 0):
    return [engine.add_sequence(first_id + i, row.tolist()) for i, row in enumerate(prompts)]


def release(engine: Engine, seqs) -> None:
    for seq in seqs:
        engine.release(seq)


def engine_pass_ms(engine: Engine, seqs, granularity: Granularity) -> tuple[float, float]:
    """(host ms until the last stage was handed to the GPU, total ms) of one pass, with the host taking
    control back at every scheduling point of `granularity`."""
    sync(engine.device)
    start = time.perf_counter()
    batch = engine.start(seqs)
    while not engine.advance(batch, granularity):
        pass
    host = time.perf_counter()
    engine.finish(batch)  # .tolist() of the tokens: synchronises
    return (host - start) * 1000, (time.perf_counter() - start) * 1000


def engine_decode_ms(engine: Engine, seqs, repeats: int, granularity: Granularity) -> tuple[list, list]:
    for _ in range(2):  # warm-up (CUDA graph capture for a new bucket happens here)
        engine_pass_ms(engine, seqs, granularity)
    runs = [engine_pass_ms(engine, seqs, granularity) for _ in range(repeats)]
    return [h for h, _ in runs], [t for _, t in runs]


@torch.inference_mode()
def hf_decode_ms(model, prompts: torch.Tensor, repeats: int) -> list[float]:
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # older transformers 5.x signature
        cache = DynamicCache()
    out = model(prompts.to(model.device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1:].argmax(-1)
    step = lambda: model(token, past_key_values=cache, use_cache=True).logits.argmax(-1).tolist()
    return timed_ms(step, model.device, repeats)


@torch.inference_mode()
def hf_prefill_ms(model, prompts: torch.Tensor, repeats: int) -> list[float]:
    ids = prompts.to(model.device)
    return timed_ms(lambda: model(ids, use_cache=False, logits_to_keep=1), model.device, repeats, warmup=1)


def engine_prefill_ms(engine: Engine, prompts: torch.Tensor, repeats: int) -> list[float]:
    def once():
        seqs = add_sequences(engine, prompts)
        engine.run_pass(seqs, Granularity.LAYER)
        release(engine, seqs)
    return timed_ms(once, engine.device, repeats, warmup=1)


def run_to(engine: Engine, batch, layer: int) -> None:
    while batch.position < Position(layer, Stage.ATTENTION):
        engine.advance(batch, Granularity.LAYER)


def run_out(engine: Engine, batch) -> None:
    while not engine.advance(batch, Granularity.LAYER):
        pass
    engine.finish(batch)


def merge_once(engine: Engine, a_seqs, b_seqs, layer: int) -> tuple[float, float]:
    """(ms of merging B into A with both at `layer`, ms of the merged batch's remaining layers), synced."""
    a, b = engine.start(a_seqs), engine.start(b_seqs)
    run_to(engine, a, layer), run_to(engine, b, layer)
    sync(engine.device)
    start = time.perf_counter()
    merged = merge(b, a)
    sync(engine.device)
    middle = time.perf_counter()
    run_out(engine, merged)
    return (middle - start) * 1000, (time.perf_counter() - middle) * 1000


def preemption_costs_ms(engine: Engine, a_seqs, b_seqs, repeats: int) -> dict[str, float]:
    """Decode batches A and B of equal size (so they share a graph bucket), stopped at layer L/2.
    - pause_resume: A stopped at L/2, device drained (the host holds the batch), resumed; minus A's pass.
    - shared_bucket: A stopped at L/2, B runs a whole pass in A's bucket (A's rows copied out), A
      resumed (copied back in); minus A's and B's passes.
    - merge: `merge(B, A)` with both at L/2 (new layout, concatenated residual streams), device-synced."""
    middle = engine.num_layers // 2
    dev = engine.device
    plain_a = timed_ms(lambda: run_out(engine, engine.start(a_seqs)), dev, repeats)
    plain_b = timed_ms(lambda: run_out(engine, engine.start(b_seqs)), dev, repeats)

    def paused(interleave: bool):
        a = engine.start(a_seqs)
        run_to(engine, a, middle)
        sync(dev)  # the pause: control on the host, GPU idle
        if interleave:
            run_out(engine, engine.start(b_seqs))
        run_out(engine, a)
    pause = timed_ms(lambda: paused(False), dev, repeats)
    shared = timed_ms(lambda: paused(True), dev, repeats)
    merges, merged_rest = [], []
    for _ in range(repeats):
        merge_ms, rest_ms = merge_once(engine, a_seqs, b_seqs, middle)
        merges.append(merge_ms), merged_rest.append(rest_ms)
    return {"pass_a_ms": median(plain_a), "pass_b_ms": median(plain_b),
            "pause_resume_ms": median(pause) - median(plain_a),
            "shared_bucket_pause_resume_ms": median(shared) - median(plain_a) - median(plain_b),
            "merge_ms": median(merges), "merged_second_half_ms": median(merged_rest)}


@torch.inference_mode()
def agreement(model, engines: dict[str, Engine], prompts: torch.Tensor, forced: int = 7) -> dict[str, float]:
    """Logits of one decode step (prompt + a forced token) from each engine and from HF (eager and
    grouped_mm experts): max |difference| of each pair and greedy agreement. In bf16 the HF-vs-HF pair
    is the noise level any implementation must be compared against."""
    logits = {}
    for name, engine in engines.items():
        seqs = add_sequences(engine, prompts)
        engine.run_pass(seqs)  # prefill
        for seq in seqs:
            seq.token_ids[-1] = forced
        logits[name], _ = engine.run_pass(seqs, Granularity.LAYER)
        release(engine, seqs)
    ids = torch.cat([prompts, torch.full((len(prompts), 1), forced)], dim=1).to(model.device)
    for impl in ("eager", "grouped_mm"):
        model.set_experts_implementation(impl)
        logits[f"hf-{impl}"] = model(ids, logits_to_keep=1).logits[:, -1].float()
    ref = logits["hf-eager"]
    out = {"logit_scale": float(ref.abs().max())}
    for name, row in logits.items():
        if name != "hf-eager":
            out[f"{name}_vs_hf-eager_max_diff"] = float((row - ref).abs().max())
            out[f"{name}_vs_hf-eager_greedy_agree"] = float((row.argmax(-1) == ref.argmax(-1)).float().mean())
    if "engine-stepwise" in logits:
        graphed, stepwise = logits["engine-graphs"], logits["engine-stepwise"]
        out["engine-graphs_vs_engine-stepwise_max_diff"] = float((graphed - stepwise).abs().max())
    return out


def decode_rows(model, engines: dict[str, Engine], args, record) -> None:
    first = next(iter(engines.values()))
    for b in args.batches:
        prompts = random_prompts(b, args.context, model.config.vocab_size, seed=b)
        seqs = add_sequences(first, prompts)
        first.run_pass(seqs)  # one prefill; every engine then decodes the same sequences
        for name, engine in engines.items():
            host, total = engine_decode_ms(engine, seqs, args.repeats, ENGINES[name][1])
            record(name, "decode", b, total)
            record(name, "decode_host", b, host)
        release(first, seqs)
        for impl in args.hf_impls:
            model.set_experts_implementation(impl)
            record(f"hf-{impl}", "decode", b, hf_decode_ms(model, prompts, args.repeats))


def prefill_rows(model, engine: Engine, args, record) -> None:
    prompts = random_prompts(args.prefill_batch, args.context, model.config.vocab_size, seed=99)
    repeats = max(args.repeats // 2, 2)
    record("engine-graphs", "prefill", args.prefill_batch, engine_prefill_ms(engine, prompts, repeats))
    for impl in args.hf_impls:
        model.set_experts_implementation(impl)
        record(f"hf-{impl}", "prefill", args.prefill_batch, hf_prefill_ms(model, prompts, repeats))


def run(args) -> tuple[pd.DataFrame, dict]:
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    model = build_model(preset_config(args.model, **overrides), args.device, dtype)
    vocab = model.config.vocab_size
    bandwidth = copy_bandwidth_bytes_s(args.device, 1 << 31 if args.device == "cuda" else 1 << 24)
    pool = KVPool.allocate_for(model.config, 2 * max(args.batches) + 8, args.context + 128, args.device, dtype)
    engines = {name: Engine(model, pool, **ENGINES[name][0]) for name in ["engine-graphs", *args.engines]}
    rows = []
    record = lambda impl, phase, b, ms: rows.extend(
        {"impl": impl, "phase": phase, "batch": b, "context": args.context, "repeat": i, "ms": t} for i, t in enumerate(ms))
    extra = {"weight_bytes": weight_bytes(model), "copy_bandwidth_bytes_s": bandwidth,
             "hbm_floor_ms": weight_bytes(model) / bandwidth * 1000}
    if "decode" in args.phases:
        decode_rows(model, engines, args, record)
    if "prefill" in args.phases:
        prefill_rows(model, engines["engine-graphs"], args, record)
    graphs = engines["engine-graphs"]
    if "preempt" in args.phases:
        half = args.preempt_batch
        a_seqs = add_sequences(graphs, random_prompts(half, args.context, vocab, 5), 1000)
        b_seqs = add_sequences(graphs, random_prompts(half, args.context, vocab, 6), 2000)
        graphs.run_pass(a_seqs), graphs.run_pass(b_seqs)
        extra.update(preempt_batch=half, **preemption_costs_ms(graphs, a_seqs, b_seqs, args.repeats))
    if "agree" in args.phases:
        extra.update(agreement(model, engines, random_prompts(4, 64, vocab, 7)))
    extra.update(torch=torch.__version__, transformers=__import__("transformers").__version__, model=args.model,
                 layers=model.config.num_hidden_layers, gpu=torch.cuda.get_device_name() if args.device == "cuda" else "cpu")
    return pd.DataFrame(rows), extra


def summary_table(df: pd.DataFrame, floor_ms: float) -> pd.DataFrame:
    table = df.groupby(["phase", "batch", "impl"]).ms.median().unstack("impl")
    table["hbm_floor"] = floor_ms
    table["graphs / floor"] = table["engine-graphs"] / floor_ms
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mixtral-8x7b")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers (smoke tests)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--preempt-batch", type=int, default=16, help="size of each of the two batches paused/merged")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--hf-impls", nargs="*", default=["eager", "grouped_mm"])
    parser.add_argument("--engines", nargs="*", default=["engine-graphs-grouped_mm", "engine-stepwise",
                                                          "engine-expert-points"],
                        choices=list(ENGINES), help="engine variants besides engine-graphs")
    parser.add_argument("--phases", nargs="+", default=list(PHASES), choices=PHASES)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args()
    df, extra = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "real_bench.csv", index=False)
    (args.out / "real_bench.json").write_text(json.dumps(extra, indent=2))
    with pd.option_context("display.width", 200):
        print(summary_table(df, extra["hbm_floor_ms"]).to_string(float_format=lambda v: f"{v:.2f}"))
    print(json.dumps(extra, indent=2))


if __name__ == "__main__":
    main()
