"""Time each stage the simulator charges, calling the real engine's own stage functions
(real.stages) on one full-width decoder layer with random weights. Long-format output: one row per
(stage, x1, x2, split, repeat). `python -m calibrate.measure --model mixtral-8x7b --out DIR`."""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
from pathlib import Path

import pandas as pd
import torch

from calibrate.grid import GRIDS, small
from real import stages
from real.kv import KVPool
from real.layout import build_layout
from real.model import build_model, preset_config
from real.sequence import Sequence
from real.timing import timed_ms


class StageBench:
    """Inputs for one stage at one grid point, and the call to time."""

    def __init__(self, model, pool: KVPool, device):
        self.model, self.pool, self.device = model, pool, device
        self.hidden_size = model.config.hidden_size
        self.num_experts = model.model.layers[0].mlp.experts.gate_up_proj.shape[0]
        self.top_k = model.config.num_experts_per_tok
        self.run_experts = stages.experts_grouped if device == "cuda" else stages.experts_eager

    def hidden(self, tokens: int) -> torch.Tensor:
        return torch.randn(tokens, self.hidden_size, device=self.device, dtype=self.model.dtype)

    def call(self, stage: str, x1: int, x2: int):
        return getattr(self, stage)(x1, x2)

    def attention_decode(self, batch: int, context: int):
        seqs = [Sequence(i, [1] * context, slot=i, num_cached=context - 1) for i in range(batch)]
        layout, h = build_layout(seqs, self.device), self.hidden(batch)
        return lambda: stages.attention(self.model, 0, h, layout, self.pool)

    def attention_prefill(self, num_seqs: int, length: int):
        seqs = [Sequence(i, [1] * length, slot=i) for i in range(num_seqs)]
        layout, h = build_layout(seqs, self.device), self.hidden(num_seqs * length)
        return lambda: stages.attention(self.model, 0, h, layout, self.pool)

    def router(self, tokens: int, _):
        h = self.hidden(tokens)
        return lambda: stages.router(self.model, 0, h)

    def expert(self, tokens: int, _):
        """One expert's FFN on `tokens` queued tokens (the engine's expert-granularity step)."""
        x, out = self.hidden(tokens), self.hidden(tokens)
        chosen = torch.zeros(tokens, self.top_k, dtype=torch.long, device=self.device)
        queued = torch.zeros_like(chosen, dtype=torch.bool)
        queued[:, 0] = True
        weights = torch.ones(tokens, self.top_k, device=self.device)
        return lambda: self.run_experts(self.model, 0, x, weights, chosen, queued, out)

    def experts_layer(self, tokens: int, _):
        """All experts of a layer on uniformly routed tokens (the engine's layer-granularity step)."""
        x, out = self.hidden(tokens), self.hidden(tokens)
        chosen = torch.rand(tokens, self.num_experts, device=self.device).topk(self.top_k, dim=-1).indices
        weights = torch.full(chosen.shape, 1.0 / self.top_k, device=self.device)
        queued = torch.ones_like(chosen, dtype=torch.bool)
        return lambda: self.run_experts(self.model, 0, x, weights, chosen, queued, out)

    def lm_head(self, num_seqs: int, _):
        h = self.hidden(num_seqs)
        return lambda: stages.lm_head(self.model, h).argmax(-1)

    def embed(self, tokens: int, _):
        ids = torch.randint(0, self.model.config.vocab_size, (tokens,), device=self.device)
        return lambda: stages.embed(self.model, ids)


def measure(bench: StageBench, grids: dict, repeats: int, log=print) -> pd.DataFrame:
    rows = []
    for stage, splits in grids.items():
        for split, points in splits.items():
            for x1, x2 in points:
                for i, ms in enumerate(timed_ms(bench.call(stage, x1, x2), bench.device, repeats)):
                    rows.append({"stage": stage, "x1": x1, "x2": x2, "split": split, "repeat": i, "time_s": ms / 1000})
            log(f"{stage} {split}: {len(points)} points")
    return pd.DataFrame(rows)


def meta(model_name: str, dtype: torch.dtype, device: str) -> dict:
    import transformers

    import os

    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    revision = os.environ.get("QLLM_GIT_REVISION") or (done.stdout.strip() if done.returncode == 0 else "")
    return {
        "model": model_name, "dtype": str(dtype).removeprefix("torch."), "device": device,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "git_revision": revision or "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "layers_measured": 1, "method": "sync, perf_counter per call, 2 warm-up calls",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mixtral-8x7b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="a tiny grid (smoke test of the tool)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    config = preset_config(args.model, num_hidden_layers=1)
    model = build_model(config, args.device, dtype)
    grids = small(GRIDS) if args.small else GRIDS
    pool = KVPool.allocate_for(config, 64, 2049, args.device, dtype)  # the grids' largest batch and context
    table = measure(StageBench(model, pool, args.device), grids, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "stages.csv", index=False)
    (args.out / "meta.json").write_text(json.dumps(meta(args.model, dtype, args.device), indent=2))
    print(table.groupby(["stage", "split"]).time_s.median().to_string())


if __name__ == "__main__":
    main()
