"""Gather run folders (single runs or Hydra multiruns) into tidy tables for plots and reports.

`python -m sim.collect SWEEP_DIR --out results/NAME` writes `requests.parquet` (all runs, one row per
request) and `runs.csv` (one row per run: its keys and GPU-busy seconds), small enough to commit.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from sim.results import class_metrics, throughput, with_latencies

RUN_KEYS = ["source", "policy", "rate", "seed"]
CLASSES = ("ALL", "LS", "BE")
DERIVED = ["ttft_s", "turnaround_s", "tpot_s"]  # recomputed on load: smaller files to commit


def find_runs(root: Path) -> list[Path]:
    """Folders under `root` holding a requests.parquet, in a stable order."""
    return sorted(p.parent for p in Path(root).rglob("requests.parquet"))


def consolidate(sweep_dir: Path, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = find_runs(sweep_dir)
    if not runs:
        raise FileNotFoundError(f"no requests.parquet under {sweep_dir}")
    requests = pd.concat([pd.read_parquet(r / "requests.parquet") for r in runs], ignore_index=True)
    rows = [{**{k: pd.read_parquet(r / "requests.parquet", columns=[k])[k].iloc[0] for k in RUN_KEYS},
             "busy_s": _busy_s(r)} for r in runs]
    run_table = pd.DataFrame(rows).sort_values(RUN_KEYS).reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    requests.drop(columns=DERIVED).to_parquet(out_dir / "requests.parquet", index=False, compression="zstd")
    run_table.to_csv(out_dir / "runs.csv", index=False)
    return requests, run_table


def load_results(out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    out_dir = Path(out_dir)
    if not (out_dir / "requests.parquet").exists():
        raise FileNotFoundError(f"{out_dir} has no requests.parquet (run python -m sim.collect first)")
    return with_latencies(pd.read_parquet(out_dir / "requests.parquet")), pd.read_csv(out_dir / "runs.csv")


def metrics_table(requests: pd.DataFrame, runs: pd.DataFrame, slo_s: float = 3.0) -> pd.DataFrame:
    """One row per (run, priority class): latency metrics and the run's throughput."""
    busy = runs.set_index(RUN_KEYS)["busy_s"]
    rows = []
    for keys, run in requests.groupby(RUN_KEYS, sort=True):
        totals = throughput(run, float(busy.get(keys, np.nan)))
        for name in CLASSES:
            part = run if name == "ALL" else run[run.priority == name]
            rows.append({**dict(zip(RUN_KEYS, keys)), "priority": name, **class_metrics(part, slo_s), **totals})
    return pd.DataFrame(rows)


def over_seeds(metrics: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean and 95% normal-approximation band of `value` over seeds, per (source, policy, rate, class)."""
    keys = ["source", "policy", "rate", "priority"]
    grouped = metrics.groupby(keys)[value]
    out = grouped.agg(mean="mean", std="std", n="count").reset_index()
    half = 1.96 * out["std"].fillna(0.0) / np.sqrt(out["n"])
    return out.assign(lo=out["mean"] - half, hi=out["mean"] + half)


def _busy_s(run: Path) -> float:
    summary = run / "summary.json"
    if not summary.exists():
        return float("nan")
    return float(json.loads(summary.read_text())["throughput"]["busy_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        requests, runs = consolidate(args.sweep_dir, args.out)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"{len(runs)} runs, {len(requests)} requests -> {args.out}")


if __name__ == "__main__":
    main()
