"""Check a measured profile: interpolation error on the held-out grid, measured vs roofline floor,
and whole decode-pass predictions vs the decode steps real.bench measured.
`python -m calibrate.check calibrate/profiles/h200/mixtral-8x7b-bf16 [--bench results/real_bench/h200_run2.csv]`"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.analytic import AnalyticProfile
from sim.profile.base import AttentionLoad
from sim.profile.derive import decode_step_s
from sim.profile.measured import MeasuredProfile, curves, load_table

MODELS = {"mixtral-8x7b": ModelSpec(), "qwen3-moe-30b-a3b": ModelSpec(
    name="qwen3-moe-30b-a3b", num_layers=48, hidden_size=2048, intermediate_size=768, num_heads=32,
    num_kv_heads=4, num_experts=128, top_k=8, vocab_size=151936)}


def heldout_errors(directory: Path) -> pd.DataFrame:
    table = load_table(directory)
    fitted = curves(table, "grid")
    held = table[table.split == "heldout"].groupby(["stage", "x1", "x2"]).time_s.median()
    rows = [{"stage": s, "x1": x1, "x2": x2, "measured_ms": t * 1000, "interpolated_ms": fitted[s](x1, x2) * 1000}
            for (s, x1, x2), t in held.items()]
    df = pd.DataFrame(rows)
    df["error_pct"] = 100 * (df.interpolated_ms - df.measured_ms).abs() / df.measured_ms
    return df


def roofline(directory: Path, model: ModelSpec, hardware: HardwareSpec) -> pd.DataFrame:
    measured = curves(load_table(directory))
    floor = AnalyticProfile(model, hardware, kernel_launch_s=0.0)
    points = [
        ("attention_decode", 32, 512, floor.attention_s(AttentionLoad(num_decode_seqs=32, decode_ctx_tokens=32 * 512))),
        ("attention_decode", 64, 2048, floor.attention_s(AttentionLoad(num_decode_seqs=64, decode_ctx_tokens=64 * 2048))),
        ("attention_prefill", 8, 1024, floor.attention_s(AttentionLoad(8, 8192, 8 * 1024**2))),
        ("expert", 32, 0, float(floor.experts_s(np.array([32]))[0])),
        ("expert", 4096, 0, float(floor.experts_s(np.array([4096]))[0])),
        ("experts_layer", 32, 0, float(floor.experts_s(np.full(model.num_experts, 32 * model.top_k / model.num_experts)).sum())),
        ("experts_layer", 8192, 0, float(floor.experts_s(np.full(model.num_experts, 8192 * model.top_k / model.num_experts)).sum())),
        ("router", 2048, 0, floor.router_s(2048)),
        ("lm_head", 32, 0, floor.lm_head_s(32)),
    ]
    rows = [{"stage": s, "x1": a, "x2": b, "measured_ms": measured[s](a, b) * 1000, "roofline_ms": f * 1000}
            for s, a, b, f in points]
    df = pd.DataFrame(rows)
    df["measured / roofline"] = df.measured_ms / df.roofline_ms
    return df


def decode_predictions(directory: Path, model: ModelSpec, bench: Path) -> pd.DataFrame:
    profile = MeasuredProfile(directory, top_k=model.top_k)
    medians = pd.read_csv(bench).query("phase == 'decode'").groupby(["impl", "batch"]).ms.median().unstack("impl")
    out = pd.DataFrame({"predicted_ms": [decode_step_s(profile, model, b, 512) * 1000 for b in medians.index]},
                       index=medians.index)
    for impl in medians.columns:
        out[impl + "_ms"] = medians[impl]
        out[f"error vs {impl} %"] = 100 * (out.predicted_ms - medians[impl]) / medians[impl]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--bench", type=Path, default=None)
    parser.add_argument("--hardware-tflops", type=float, default=790.0)
    parser.add_argument("--hardware-tb-s", type=float, default=4.1)
    args = parser.parse_args()
    model = MODELS[args.directory.name.rsplit("-", 1)[0]]
    errors = heldout_errors(args.directory)
    fmt = lambda v: f"{v:.3f}"  # noqa: E731
    print("held-out interpolation error (%) per stage:")
    print(errors.groupby("stage").error_pct.agg(["median", "max", "count"]).to_string(float_format=fmt))
    print(f"all stages: median {errors.error_pct.median():.2f}%, max {errors.error_pct.max():.2f}%\n")
    hardware = HardwareSpec(peak_tflops=args.hardware_tflops, hbm_tb_s=args.hardware_tb_s)
    print("measured vs roofline floor (one layer):")
    print(roofline(args.directory, model, hardware).to_string(index=False, float_format=fmt))
    if args.bench is not None:
        print("\nwhole decode pass (context 512): profile prediction vs measured:")
        print(decode_predictions(args.directory, model, args.bench).to_string(float_format=fmt))


if __name__ == "__main__":
    main()
