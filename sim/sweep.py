"""A multirun's runs side by side: at the end of `python -m sim run -m ...` (and `python -m real run -m ...`) one
table, printed and written as `sweep.csv` in the sweep folder (a Hydra callback, `hydra.callbacks.sweep_table` in
the configs). Each job printed its own summary as it ended; comparing policies across rates meant reading them all,
or running `python -m sim.collect`.

Its columns: the overrides that differ between jobs (from each job's `.hydra/overrides.yaml`), then each run's
headline numbers from its `summary.json`, the same for the simulator and the real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sim.collect import find_runs
from sim.results import markdown

# summary.json -> the table's column: (class, key, scale, name)
METRICS = (("LS", "ttft_mean_s", 1e3, "LS TTFT mean ms"), ("LS", "ttft_p99_s", 1e3, "LS TTFT p99 ms"),
           ("LS", "slo_attainment", 1.0, "LS SLO"), ("LS", "turnaround_p50_s", 1.0, "LS turnaround p50 s"),
           ("BE", "turnaround_p50_s", 1.0, "BE turnaround p50 s"))


def job_overrides(job: Path) -> dict[str, str]:
    """A job's command-line overrides, `key=value` each (none where Hydra kept no record)."""
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return dict(item.split("=", 1) for item in OmegaConf.load(path) if "=" in item)


def sweep_table(sweep_dir: Path) -> pd.DataFrame:
    """One row per job folder under `sweep_dir` with a summary.json, in job order."""
    jobs = sorted((run for run in find_runs(sweep_dir) if (run / "summary.json").is_file()),  # any subdir depth
                  key=lambda p: (int(p.name.split("_")[0]) if p.name.split("_")[0].isdigit() else 0, str(p)))
    if not jobs:
        return pd.DataFrame()
    overrides = [job_overrides(job) for job in jobs]
    swept = [k for k in dict.fromkeys(k for o in overrides for k in o)
             if len({o.get(k) for o in overrides}) > 1]
    rows = []
    for job, chosen in zip(jobs, overrides):
        summary = json.loads((job / "summary.json").read_text())
        row = {key: chosen.get(key, "") for key in swept}
        for cls, key, scale, name in METRICS:
            value = summary["classes"].get(cls, {}).get(key)
            row[name] = float("nan") if value is None else value * scale
        row["tokens/s"] = summary["throughput"]["tokens_per_s"]
        row["jobs/s (busy)"] = summary["throughput"]["jobs_per_busy_s"]
        rows.append(row)
    return pd.DataFrame(rows)


class SweepTable(Callback):
    """Prints the sweep's table and writes `sweep.csv` once every job of a multirun has ended."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = sweep_table(sweep_dir)
        if table.empty:
            return
        table.to_csv(sweep_dir / "sweep.csv", index=False)
        print(f"\n{len(table)} runs  ->  {sweep_dir / 'sweep.csv'}")
        print(markdown(table))
