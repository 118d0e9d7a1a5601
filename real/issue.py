"""How long the host takes to issue a whole prefill pass, per layer, from serving runs' step logs:

    python -m real.issue RUNS [--by lean_attention] [--out CSV]

An iteration-level policy (fcfs) issues a prefill pass's layers without stopping, stage by stage, and below a
few thousand tokens the host, not the GPU, sets such a layer's pace (H100, Qwen3-30B-A3B: about 3 ms of issue
against 2-3 ms on the device). Its issue time per layer is the pass's advance issue to its LM head's issue over
its layers: a host clock, so it does not depend on what the GPU was still running. Passes differ in prompts and
tokens, so each group of runs also gets a least-squares line, issue = a + b * tokens + c * prompts, read at one
reference shape (`--at TOKENS PROMPTS`): two settings compare at the same pass, not at the passes each happened
to form."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.serving import headed_prefill_passes
from real.report import run_dirs
from sim.results import markdown

REFERENCE = (1000, 4)  # tokens, prompts: a typical fcfs prefill pass at 18-28 req/s (ShareGPT, H100 Qwen3)


def prefill_passes(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per whole prefill pass followed by its LM head (`calibrate.serving.headed_prefill_passes`, as the
    serving calibration reads them): prompts, tokens, host issue and device time per layer (ms)."""
    order = steps.reset_index(drop=True)
    at = headed_prefill_passes(order)
    passes, head = order.iloc[at].reset_index(drop=True), order.iloc[at + 1].reset_index(drop=True)
    layers = passes.to_layer - passes.from_layer
    return pd.DataFrame({"prompts": passes.num_seqs, "tokens": passes.num_tokens,
                         "issue_ms": 1e3 * (head.issued_s - passes.issued_s) / layers,
                         "device_ms": 1e3 * (passes.end_s - passes.begin_s) / layers})


def issue_at(passes: pd.DataFrame, tokens: int, prompts: int) -> float:
    """The least-squares line's issue time per layer (ms) at that shape; NaN with fewer than 4 passes."""
    if len(passes) < 4:
        return float("nan")
    x = np.c_[np.ones(len(passes)), passes.tokens / 1000, passes.prompts]
    coef, *_ = np.linalg.lstsq(x, passes.issue_ms.to_numpy(), rcond=None)
    return float(coef @ [1.0, tokens / 1000, prompts])


def issue_table(root: Path, by: str | None = None, at: tuple[int, int] = REFERENCE) -> pd.DataFrame:
    """Per run, then pooled per policy (and `by` value): passes, p50 issue and device ms per layer, the line's
    issue at `at`. Runs without a step log are left out."""
    rows, pooled = [], {}
    for run in run_dirs(root):
        if not (run / "steps.parquet").exists():
            continue
        info = json.loads((run / "summary.json").read_text())["run"]
        passes = prefill_passes(pd.read_parquet(run / "steps.parquet"))
        key = (info["policy"], info.get(by) if by else None)
        pooled.setdefault(key, []).append(passes)
        rows.append(_row(key, f"rate {info['rate']:g} seed {info['seed']}", passes, by, at))
    for key, parts in pooled.items():
        rows.append(_row(key, "all", pd.concat(parts), by, at))
    return pd.DataFrame(rows)


def _row(key: tuple, run: str, passes: pd.DataFrame, by: str | None, at: tuple[int, int]) -> dict:
    policy, value = key
    return {"policy": policy, **({by: value} if by else {}), "run": run, "passes": len(passes),
            "issue ms p50": passes.issue_ms.median(), "device ms p50": passes.device_ms.median(),
            f"issue ms at {at[0]} tokens, {at[1]} prompts": issue_at(passes, *at)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.issue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder of run folders (summary.json, steps.parquet)")
    parser.add_argument("--by", default=None, help="a setting of the runs' summary.json to group by")
    parser.add_argument("--at", type=int, nargs=2, default=REFERENCE, metavar=("TOKENS", "PROMPTS"))
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (CSV)")
    args = parser.parse_args(argv)
    if not args.runs.is_dir():
        raise SystemExit(f"error: {args.runs}: no such folder")
    table = issue_table(args.runs, args.by, tuple(args.at))
    if table.empty:
        raise SystemExit(f"error: {args.runs}: no run folder with a step log (steps.parquet)")
    if args.out:
        table.to_csv(args.out, index=False)
    print(markdown(table))


if __name__ == "__main__":
    main()
