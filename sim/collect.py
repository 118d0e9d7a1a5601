"""Gather run folders (single runs or Hydra multiruns) into tidy tables for plots and reports."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sim.results import class_metrics, throughput

RUN_KEYS = ["source", "policy", "rate", "seed"]


def find_runs(root: Path) -> list[Path]:
    """Folders under `root` holding a requests.parquet, in a stable order."""
    return sorted(p.parent for p in Path(root).rglob("requests.parquet"))


def load_requests(root: Path) -> pd.DataFrame:
    runs = find_runs(root)
    if not runs:
        raise FileNotFoundError(f"no requests.parquet under {root}")
    return pd.concat([pd.read_parquet(run / "requests.parquet") for run in runs], ignore_index=True)


def run_metrics(root: Path, slo_s: float = 3.0) -> pd.DataFrame:
    """One row per (run, priority class): latency metrics plus the run's throughput."""
    rows = []
    for run in find_runs(root):
        df = pd.read_parquet(run / "requests.parquet")
        busy_s = _busy_s(run)
        keys = {k: df[k].iloc[0] for k in RUN_KEYS}
        totals = throughput(df, busy_s)
        for name, part in (("ALL", df), ("LS", df[df.priority == "LS"]), ("BE", df[df.priority == "BE"])):
            rows.append({**keys, "priority": name, **class_metrics(part, slo_s), **totals, "run_dir": str(run)})
    return pd.DataFrame(rows)


def _busy_s(run: Path) -> float:
    summary = run / "summary.json"
    if not summary.exists():
        return float("nan")
    return float(json.loads(summary.read_text())["throughput"]["busy_s"])
