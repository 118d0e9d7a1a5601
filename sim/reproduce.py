"""The paper's headline claims, recomputed from a consolidated sweep:
`python -m sim.reproduce results/paper [--baseline fcfs --policy qllm]` prints a markdown table."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from sim.collect import load_results, metrics_table

PAPER = {
    "LS TTFT reduction, mean over rates": "65.2x",
    "LS TTFT reduction, max": "101.6x",
    "highest rate with mean LS TTFT <= SLO (policy)": "7 req/s",
    "highest rate with mean LS TTFT <= SLO (baseline)": "none",
    "highest rate with >= 90% of LS within SLO (policy)": "-",
    "LS turnaround reduction, max": "12.8x",
    "BE turnaround penalty, mean over rates": "1.38x",
    "BE turnaround penalty, max": "2.04x",
    "throughput ratio (jobs per busy s), min over rates": "comparable or higher",
}


def per_rate(metrics: pd.DataFrame, policy: str, priority: str, value: str) -> pd.Series:
    part = metrics[(metrics.policy == policy) & (metrics.priority == priority)]
    return part.groupby("rate")[value].mean()


def highest_rate(series: pd.Series, ok) -> str:
    good = [rate for rate, v in series.items() if ok(v)]
    return f"{max(good):g} req/s" if good else "none"


def claims(metrics: pd.DataFrame, baseline: str, policy: str, slo_s: float) -> dict[str, str]:
    get = lambda p, c, v: per_rate(metrics, p, c, v)  # noqa: E731
    ttft = get(baseline, "LS", "ttft_mean_s") / get(policy, "LS", "ttft_mean_s")
    ls_turn = get(baseline, "LS", "turnaround_mean_s") / get(policy, "LS", "turnaround_mean_s")
    be_turn = get(policy, "BE", "turnaround_mean_s") / get(baseline, "BE", "turnaround_mean_s")
    jobs = get(policy, "ALL", "jobs_per_busy_s") / get(baseline, "ALL", "jobs_per_busy_s")
    return {
        "LS TTFT reduction, mean over rates": f"{ttft.mean():.1f}x",
        "LS TTFT reduction, max": f"{ttft.max():.1f}x (at {ttft.idxmax():g} req/s)",
        "highest rate with mean LS TTFT <= SLO (policy)": highest_rate(get(policy, "LS", "ttft_mean_s"), lambda v: v <= slo_s),
        "highest rate with mean LS TTFT <= SLO (baseline)": highest_rate(get(baseline, "LS", "ttft_mean_s"), lambda v: v <= slo_s),
        "highest rate with >= 90% of LS within SLO (policy)": highest_rate(get(policy, "LS", "slo_attainment"), lambda v: v >= 0.9),
        "LS turnaround reduction, max": f"{ls_turn.max():.1f}x (at {ls_turn.idxmax():g} req/s)",
        "BE turnaround penalty, mean over rates": f"{be_turn.mean():.2f}x",
        "BE turnaround penalty, max": f"{be_turn.max():.2f}x (at {be_turn.idxmax():g} req/s)",
        "throughput ratio (jobs per busy s), min over rates": f"{jobs.min():.3f} (mean {jobs.mean():.3f})",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path)
    parser.add_argument("--baseline", default="fcfs")
    parser.add_argument("--policy", default="qllm")
    parser.add_argument("--slo-s", type=float, default=3.0)
    args = parser.parse_args()
    try:
        requests, runs = load_results(args.results)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    metrics = metrics_table(requests, runs, args.slo_s)
    shared = set(metrics[metrics.policy == args.baseline].rate) & set(metrics[metrics.policy == args.policy].rate)
    if not shared:
        found = ", ".join(sorted(metrics.policy.unique())) or "none"
        raise SystemExit(f"error: {args.results} has no rate run with both {args.baseline!r} and {args.policy!r} "
                         f"(policies there: {found})")
    ours = claims(metrics, args.baseline, args.policy, args.slo_s)
    print(f"| claim | paper | ours ({args.results}) |\n|---|---|---|")
    for name, value in ours.items():
        print(f"| {name} | {PAPER[name]} | {value} |")


if __name__ == "__main__":
    main()
