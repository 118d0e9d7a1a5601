"""Fresh prompts' attention padded or unpadded (`Engine.varlen_prefill`), and unpadded with the pass's rotary
tables (`Engine.lean_attention`), side by side on one layer:

    python -m real.prefillbench --model qwen3-moe-30b-a3b --device cuda --dtype bfloat16

For batches of 1 to 32 new prompts (lengths drawn as real.startbench's), each way on the same inputs: the attention
stage's device time and the host time to issue it (calibrate.timing's clocks, medians), the host time of
`Engine.start`, and how far the outputs differ (max |a - b| over max |a|). A start filled with BE prompts pads each
to the longest, so the padded way builds and sends [B, Q] index arrays, reads the keys back from the pool and attends
over the padding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from calibrate.timing import measure
from real import stages
from real.engine import Engine
from real.startbench import bench_parser, median_us, one_layer, print_table, prompts


def times(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(device ms, host issue µs) of `fn`, medians of calibrate.timing's repeats (the calibration's own clocks:
    CUDA events and the issue time behind a sleep kernel; on a CPU both are the wall clock)."""
    rows = pd.DataFrame(measure(fn, device.type, repeats, inner=1))
    return 1e3 * float(rows.gpu_s.median()), 1e6 * float(rows.host_s.median())


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
        gpu_ms, host_us = times(attention, repeats, device)
        row[f"{label} attention ms"], row[f"{label} issue us"] = round(gpu_ms, 4), round(host_us, 1)
        if not lean:  # the start is the same with or without lean attention
            row[f"{label} start us"] = round(median_us(lambda: engine.start(seqs), repeats, device), 1)
    row["rel diff"] = float((outs["padded"] - outs["varlen"]).abs().max() / outs["padded"].abs().max())
    row["lean same"] = bool(torch.equal(outs["varlen"], outs["lean"]))  # the same floats, fewer calls
    return row


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("python -m real.prefillbench", __doc__, [1, 2, 4, 8, 16, 32], 50)
    parser.add_argument("--out", default=None, help="also write the table here (CSV)")
    args = parser.parse_args(argv)
    engine = Engine.for_device(*one_layer(args))
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        rows = [compare(engine, count, rng, args.repeats) for count in args.counts]
    print_table(rows, f"Fresh prompts' attention: padded, unpadded (varlen), unpadded with the pass's rotary tables "
                f"(lean) ({args.model}, {args.device}, {args.dtype}, one layer), medians of {args.repeats}", args.out)


if __name__ == "__main__":
    main()
