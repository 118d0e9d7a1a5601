"""Benchmark: wall time of the paper sweep (fcfs and qllm, rates 1..10, 1,000 requests each,
layer granularity) in one process. `python -m sim.bench [--rates 1 2 ...] [--experiment paper]`."""

from __future__ import annotations

import argparse
import time

import pandas as pd

from sim.compose import compose_spec
from sim.run import execute


def sweep(experiment: str, policies: list[str], rates: list[float], num_requests: int, seed: int) -> pd.DataFrame:
    rows = []
    for policy in policies:
        for rate in rates:
            spec = compose_spec([f"experiment={experiment}", f"policy={policy}", f"rate={rate}",
                                 f"num_requests={num_requests}", f"seed={seed}", "progress=false"])
            start = time.perf_counter()
            result = execute(spec)
            elapsed = time.perf_counter() - start
            ls = result.summary["classes"]["LS"]
            rows.append({"policy": policy, "rate": rate, "sim_wall_s": elapsed,
                         "consults": result.summary["run"]["num_consults"],
                         "ls_ttft_mean_s": ls["ttft_mean_s"], "ls_slo": ls["slo_attainment"],
                         "jobs_per_s": result.summary["throughput"]["jobs_per_s"]})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiment", default="paper")
    parser.add_argument("--policies", nargs="+", default=["fcfs", "qllm"])
    parser.add_argument("--rates", nargs="+", type=float, default=[float(r) for r in range(1, 11)])
    parser.add_argument("--num-requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    table = sweep(args.experiment, args.policies, args.rates, args.num_requests, args.seed)
    total = time.perf_counter() - start
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{len(table)} runs, total {total:.1f} s (median {table.sim_wall_s.median():.2f} s per run)")


if __name__ == "__main__":
    main()
