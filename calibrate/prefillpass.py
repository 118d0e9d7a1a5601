"""Short prefill passes timed the two ways the server issues them, per layer:

- `whole`: one `Engine.advance` at iteration granularity (fcfs: all layers issued back to back, no bound on
  how far the host runs ahead);
- `stepped`: one advance per layer with the server's run-ahead bound (`DeviceTimeline.mark(throttle=True)`,
  depth 1: the qllm policies).

Serving round 6 (H200) priced fcfs's prefill layers of 129-1,024 tokens 0.25 ms under their device time and the
qllm variants' within 0.05 ms, with the same stage profile. This times both issue modes on the same shapes,
with the layout build and embedding of `Engine.start` (`prefill_passes.csv` in the profile). On the H200 the
mode was not the cause (the two agree within 1% where the device is the bottleneck); the experts' routing was
(`--routing`, BENCHMARKS_calibrate.md).

    python3 -m calibrate.prefillpass --model mixtral-8x7b --out DIR [--layers 8] [--repeats 7] [--routing]

`--routing` also times the experts stage of each layer of one pass with the routing the pass produced
against the calibration's balanced routing (`calibrate.benches.balanced_routing`), same tokens, same layer:
whether the stage grid's balanced loads explain the gap (writes prefill_routing.csv).

Rows: mode, seqs, tokens (per sequence), repeat, layer_s (device time per layer: first layer's start to the
last layer's end, over the layers), issue_s (host time to issue the pass's layers, per layer)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from calibrate.benches import balanced_routing
from calibrate.timing import measure as time_point
from policies import Granularity
from real import stages
from real.engine import Engine
from real.kv import KVPool
from real.model import build_model, preset_config
from real.timeline import DeviceTimeline

LENGTHS = (32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)
MODES = ("whole", "stepped")


def one_pass(engine: Engine, prompts: list[list[int]], mode: str) -> dict:
    """Device time per layer and host issue time per layer of one prefill pass (from an idle device)."""
    timeline = DeviceTimeline(engine.device)
    timeline.start()
    seqs = [engine.add_sequence(i, p) for i, p in enumerate(prompts)]
    try:
        batch = engine.start(seqs)
        begin = timeline.mark()
        start = time.perf_counter()
        if mode == "whole":
            engine.advance(batch, Granularity.ITERATION)
            end = timeline.mark()
        else:
            while not engine.advance(batch, Granularity.LAYER):
                timeline.mark(throttle=True)
            end = timeline.mark()
        issue = time.perf_counter() - start
        engine.finish(batch)
        times = timeline.times_s()
        return {"layer_s": (times[end] - times[begin]) / engine.num_layers, "issue_s": issue / engine.num_layers}
    finally:
        for seq in seqs:
            engine.release(seq)


def measure(engine: Engine, vocab: int, seqs_list, lengths, repeats: int, log=print) -> list[dict]:
    """Modes interleaved per repeat (the host's speed drifts over minutes)."""
    gen = torch.Generator().manual_seed(7)
    rows = []
    for num_seqs in seqs_list:
        for tokens in lengths:
            prompts = [torch.randint(3, vocab, (tokens,), generator=gen).tolist() for _ in range(num_seqs)]
            for mode in MODES:  # warm-up
                one_pass(engine, prompts, mode)
            for repeat in range(repeats):
                for mode in MODES:
                    rows.append({"mode": mode, "seqs": num_seqs, "tokens": tokens, "repeat": repeat,
                                 **one_pass(engine, prompts, mode)})
            done = pd.DataFrame(rows[-repeats * len(MODES):]).groupby("mode")[["layer_s", "issue_s"]].median() * 1e3
            log(f"  {num_seqs} x {tokens}: " + "  ".join(
                f"{m} {done.layer_s[m]:.3f} ms/layer (issue {done.issue_s[m]:.3f})" for m in MODES))
    return rows


def _recorded_routing(engine: Engine, prompts: list[list[int]]) -> list[tuple]:
    """(x, weights, experts) of every layer of one stepped prefill pass of `prompts` (the router's own output)."""
    seen, original = [], stages.router

    def recording(model, layer: int, hidden: torch.Tensor):
        seen.append(original(model, layer, hidden))
        return seen[-1]
    stages.router = recording
    try:
        one_pass(engine, prompts, "stepped")
    finally:
        stages.router = original
    return seen


def _experts_gpu_s(engine: Engine, layer: int, x, weights, experts, repeats: int) -> float:
    """Median GPU-clock time of the layer's experts stage for this routing (`calibrate.timing.measure`)."""
    queued, out = torch.ones_like(experts, dtype=torch.bool), torch.empty_like(x)
    run = engine.experts_for(x.shape[0])
    rows = time_point(lambda: run(engine.model, layer, x, weights, experts, queued, out), engine.device.type,
                      repeats, inner=2)
    return float(np.median([r["gpu_s"] for r in rows]))


@torch.inference_mode()
def routing_rows(engine: Engine, vocab: int, seqs_list, lengths, repeats: int, log=print) -> list[dict]:
    """Per layer of one pass: expert loads (max over mean, experts used) and the experts stage's device time
    with the pass's own routing and with balanced routing (`calibrate.benches.balanced_routing`)."""
    gen, rows = torch.Generator().manual_seed(11), []
    top_k, num_experts = engine.model.config.num_experts_per_tok, engine.num_experts
    for num_seqs in seqs_list:
        for tokens in lengths:
            prompts = [torch.randint(3, vocab, (tokens,), generator=gen).tolist() for _ in range(num_seqs)]
            seen = _recorded_routing(engine, prompts)
            for layer, (x, weights, experts) in enumerate(seen):
                loads = torch.bincount(experts.flatten(), minlength=num_experts).float()
                balanced = balanced_routing(x.shape[0], num_experts, top_k, x.device)
                rows.append({"seqs": num_seqs, "tokens": tokens, "layer": layer,
                             "max_over_mean": float(loads.max() / loads.mean()), "active": int((loads > 0).sum()),
                             "pass_s": _experts_gpu_s(engine, layer, x, weights, experts, repeats),
                             "balanced_s": _experts_gpu_s(engine, layer, x, weights, balanced, repeats)})
            done = pd.DataFrame(rows[-len(seen):])
            log(f"  routing {num_seqs} x {tokens}: max/mean load {done.max_over_mean.median():.2f}, experts "
                f"{1e3 * done.pass_s.median():.3f} ms with the pass's routing, {1e3 * done.balanced_s.median():.3f} balanced")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mixtral-8x7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seqs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--routing", action="store_true", help="also time the experts with the pass's own routing")
    parser.add_argument("--no-passes", action="store_true", help="with --routing: skip the pass timings")
    parser.add_argument("--out", type=Path, required=True, help="profile directory: writes prefill_passes.csv")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = preset_config(args.model, num_hidden_layers=args.layers)
    model = build_model(config, args.device, dtype)
    max_len = max(*args.lengths, 1024) + 8  # warm_up runs prompts of up to 1,024 tokens
    pool = KVPool.allocate_for(config, max(args.seqs), max_len, args.device, dtype)
    engine = Engine(model, pool, grouped_experts=args.device == "cuda")  # the server's stepped engine
    engine.warm_up(max(args.seqs))
    print(f"prefill passes, {args.model} ({args.layers} layers, {args.device}): device ms per layer")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_passes:
        rows = measure(engine, config.vocab_size, args.seqs, args.lengths, args.repeats)
        pd.DataFrame(rows).to_csv(args.out / "prefill_passes.csv", index=False)
        print(f"wrote {args.out / 'prefill_passes.csv'}")
    if args.routing:
        rows = routing_rows(engine, config.vocab_size, args.seqs, args.lengths, args.repeats)
        pd.DataFrame(rows).to_csv(args.out / "prefill_routing.csv", index=False)
        print(f"wrote {args.out / 'prefill_routing.csv'}")


if __name__ == "__main__":
    main()
