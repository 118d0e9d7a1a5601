"""A prefill or mixed layer stepped stage by stage against the same layer replayed from the pass runner's CUDA graph
(`Engine.pass_graphs`, real.passgraphs), side by side on one layer:

    python -m real.passbench --model qwen3-moe-30b-a3b --device cuda --dtype bfloat16

For batches of 1 to 32 new prompts (lengths drawn as real.startbench's), alone and with 24 decoding sequences of
300-1,000 cached tokens: each way's device time and host time to issue the layer (calibrate.timing's clocks,
medians). The runner's time includes putting the batch's residual stream into its bucket, which a pass does once
(before its first graphed layer), so it is an upper bound."""

from __future__ import annotations

import numpy as np
import torch

from policies import Position
from real.engine import Engine
from real.kv import KVPool
from real.passgraphs import ROW_SIZES, SEQ_SIZES
from real.prefillbench import times
from real.sequence import Sequence
from real.startbench import bench_parser, one_layer, print_table, prompts

NUM_DECODES = 24


def decodes(count: int, first_slot: int, rng: np.random.Generator) -> list[Sequence]:
    """Sequences with 300-1,000 tokens cached, one new token each."""
    return [Sequence(1000 + i, [1] * (int(n) + 1), slot=first_slot + i, num_cached=int(n))
            for i, n in enumerate(rng.integers(300, 1000, count))]


def compare(engine: Engine, seqs: list[Sequence], repeats: int) -> dict:
    tokens = sum(s.num_new for s in seqs)
    row = {"prompts": sum(s.num_cached == 0 for s in seqs), "decodes": sum(s.num_cached > 0 for s in seqs),
           "tokens": tokens, "bucket rows": next((r for r in ROW_SIZES if r >= tokens), None)}
    batch = engine.start(seqs)
    start = batch.hidden.clone()

    def one_layer_of(batch=batch):
        batch.position, batch.hidden = Position(), start
        engine.advance(batch)
    for label, graphed in (("stepped", False), ("graph", True)):
        engine.pass_graphs = graphed
        gpu_ms, host_us = times(one_layer_of, repeats, engine.device)
        row[f"{label} ms"], row[f"{label} issue us"] = round(gpu_ms, 4), round(host_us, 1)
    row["issue ratio"] = round(row["stepped issue us"] / row["graph issue us"], 2)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("python -m real.passbench", __doc__, [1, 4, 16, 32], 50)
    parser.add_argument("--out", default=None, help="also write the table here (CSV)")
    args = parser.parse_args(argv)
    if max(args.counts) + NUM_DECODES > SEQ_SIZES[-1]:
        raise SystemExit(f"error: --counts must be <= {SEQ_SIZES[-1] - NUM_DECODES}")
    model, _ = one_layer(args)
    pool = KVPool.allocate_for(model.config, max(args.counts) + NUM_DECODES, 1024, torch.device(args.device),
                               model.dtype)
    engine = Engine(model, pool, grouped_experts=pool.k[0].is_cuda, graphs=True)
    engine.pass_runner.prepare()
    rng = np.random.default_rng(0)
    rows = []
    with torch.inference_mode():
        for count in args.counts:
            fresh = prompts(engine, count, rng)
            for seqs in (fresh, fresh + decodes(NUM_DECODES, count, rng)):
                if sum(s.num_new for s in seqs) <= ROW_SIZES[-1]:
                    rows.append(compare(engine, seqs, args.repeats))
    print_table(rows, f"One layer stepped, or replayed from the pass runner's graph ({args.model}, {args.device}, "
                f"{args.dtype}), medians of {args.repeats}", args.out)


if __name__ == "__main__":
    main()
