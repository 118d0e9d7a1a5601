"""First call of a prefill stage at a shape the process has not run before, against the second call
at that shape: what a serving engine pays for per-shape kernel planning (SDPA backends that build an
execution plan per shape, GEMM heuristics) on every prefill batch whose padded shape is new. The
calibration grids never see it (their warm-up runs each shape first), the server does on almost
every prefill.

`python3 -m calibrate.newshape --model mixtral-8x7b --out DIR [--shapes 12]` (needs no Hydra) writes
DIR/newshape.csv (backend, stage, num_seqs, longest, tokens, call, time_s) and prints medians per
backend and stage."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from calibrate.timing import timed_s
from real import stages
from real.engine import Engine
from real.kv import KVPool
from real.layout import build_layout
from real.model import PRESETS, build_model, preset_config
from real.sequence import Sequence

BACKENDS = ("engine", "torch-default", "cudnn", "efficient", "math")


@contextmanager
def backend_context(name: str):
    """The engine's eager SDPA backends (`real.stages.CUDA_SDPA`) swapped for one backend, or for all
    of them ("torch-default": torch's own priority order); "engine" leaves them as they are."""
    from torch.nn.attention import SDPBackend
    chosen = {"torch-default": list(SDPBackend.__members__.values()), "cudnn": [SDPBackend.CUDNN_ATTENTION],
              "efficient": [SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH]}.get(name)
    kept = list(stages.CUDA_SDPA)
    if chosen is not None:
        stages.CUDA_SDPA[:] = [b for b in chosen if b != SDPBackend.ERROR]
    try:
        yield
    finally:
        stages.CUDA_SDPA[:] = kept


def random_shapes(count: int, seed: int, max_len: int) -> list[tuple[int, list[int]]]:
    """Prefill batches of 1-8 prompts of 16..max_len tokens, all of different padded shapes."""
    rng = np.random.default_rng(seed)
    shapes, seen = [], set()
    while len(shapes) < count:
        lengths = rng.integers(16, max_len, size=int(rng.integers(1, 9))).tolist()
        key = (len(lengths), max(lengths), sum(lengths))
        if key not in seen:
            seen.add(key)
            shapes.append((len(lengths), lengths))
    return shapes


def probe(engine: Engine, backend: str, shapes, device: str) -> list[dict]:
    rows = []
    model, pool, hidden_size = engine.model, engine.pool, engine.model.config.hidden_size
    for num_seqs, lengths in shapes:
        seqs = [Sequence(i, [1] * n, slot=i) for i, n in enumerate(lengths)]
        layout = build_layout(seqs, device)
        h = torch.randn(layout.num_tokens, hidden_size, device=device, dtype=model.dtype)
        experts = engine.experts_for(layout.num_tokens)
        calls = {
            "attention": lambda h=h, layout=layout: stages.attention(model, 0, h, layout, pool),
            "layer": lambda h=h, layout=layout, experts=experts: stages.layer(model, 0, h, layout, pool, experts),
        }
        for stage, fn in calls.items():
            for call in ("first", "second"):
                with backend_context(backend):
                    rows.append({"backend": backend, "stage": stage, "num_seqs": num_seqs, "longest": max(lengths),
                                 "tokens": layout.num_tokens, "call": call,
                                 "time_s": timed_s(fn, device, 1, warmup=0)[0]})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mixtral-8x7b", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", type=int, default=12, help="new shapes per backend")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = preset_config(args.model, num_hidden_layers=1)
    model = build_model(config, args.device, dtype)
    pool = KVPool.allocate_for(config, 8, args.max_len, args.device, dtype)
    engine = Engine(model, pool, grouped_experts=args.device == "cuda")
    seq = engine.add_sequence(0, [1] * 8)
    engine.run_pass([seq])  # library handles, first kernels
    engine.release(seq)
    rows = []
    for i, backend in enumerate(args.backends):  # each backend its own, never-seen shapes
        try:
            rows += probe(engine, backend, random_shapes(args.shapes, seed=i, max_len=args.max_len), args.device)
        except RuntimeError as error:  # a backend that cannot run these inputs
            print(f"{backend}: {str(error).splitlines()[0]}")
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "newshape.csv", index=False)
    summary = table.groupby(["backend", "stage", "call"]).time_s.median().unstack("call") * 1000
    print("median ms over new prefill shapes (1-8 prompts):")
    print(summary.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
