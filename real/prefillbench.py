"""Fresh prompts' attention padded or unpadded (`Engine.varlen_prefill`), and unpadded with the pass's rotary
tables (`Engine.lean_attention`), side by side on one layer:

    python -m real.prefillbench --model qwen3-moe-30b-a3b --device cuda --dtype bfloat16

For batches of 1 to 32 new prompts (lengths drawn as real.startbench's), both ways on the same inputs: the attention
stage's device time (CUDA events, median), the host time to issue it, the host time of `Engine.start`, and how far
the two outputs differ (max |a - b| over max |a|). A start filled with BE prompts pads each to the longest, so the
padded way builds and sends [B, Q] index arrays, reads the keys back from the pool and attends over the padding."""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from real import stages
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config
from real.run import DTYPES
from real.startbench import median_us, prompts
from sim.results import markdown


def device_ms(fn, repeats: int, device: torch.device) -> float:
    """Median device time of `fn` (CUDA events; on a CPU, the wall clock)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def issue_us(fn, repeats: int, device: torch.device) -> float:
    """Median host time to issue `fn`, the device drained before each call (no queue to block on)."""
    times = []
    for _ in range(repeats + 3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times[3:]) * 1e6)


def compare(engine: Engine, count: int, rng: np.random.Generator, repeats: int) -> dict:
    seqs = prompts(engine, count, rng)
    device = engine.device
    row = {"prompts": count, "tokens": sum(len(s.token_ids) for s in seqs),
           "longest": max(len(s.token_ids) for s in seqs)}
    row["padded x"] = round(count * row["longest"] / row["tokens"], 2)
    hidden = torch.randn(row["tokens"], engine.model.config.hidden_size, device=device, dtype=engine.model.dtype)
    outs = {}
    for label, varlen, lean in (("padded", False, False), ("varlen", True, False), ("lean", True, True)):
        engine.varlen_prefill = varlen
        layout = engine.start(seqs).layout
        tables = stages.pass_rope(engine.model, hidden, layout.positions) if lean else None
        def attention(layout=layout, tables=tables):
            return stages.attention(engine.model, 0, hidden, layout, engine.pool, tables)
        outs[label] = attention().float()
        row[f"{label} attention ms"] = round(device_ms(attention, repeats, device), 4)
        row[f"{label} issue us"] = round(issue_us(attention, repeats, device), 1)
        if not lean:  # the start is the same with or without lean attention
            row[f"{label} start us"] = round(median_us(lambda: engine.start(seqs), repeats, device), 1)
    row["rel diff"] = float((outs["padded"] - outs["varlen"]).abs().max() / outs["padded"].abs().max())
    row["lean same"] = bool(torch.equal(outs["varlen"], outs["lean"]))  # the same floats, fewer calls
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.prefillbench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-mixtral")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--out", default=None, help="also write the table here (CSV)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if min(args.counts) < 1:
        raise SystemExit("error: --counts must be >= 1")
    config = preset_config(args.model, num_hidden_layers=1)
    model = build_model(config, args.device, DTYPES[args.dtype])
    pool = KVPool.allocate_for(config, max(args.counts), 1024, torch.device(args.device), DTYPES[args.dtype])
    engine = Engine.for_device(model, pool)
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        rows = [compare(engine, count, rng, args.repeats) for count in args.counts]
    table = pd.DataFrame(rows)
    print(f"Fresh prompts' attention: padded, unpadded (varlen), unpadded with the pass's rotary tables (lean) "
          f"({args.model}, {args.device}, {args.dtype}, one layer), "
          f"medians of {args.repeats}")
    print(markdown(table))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
