"""Policies side by side on real runs' traces: what each would have done, in the simulator, on exactly the
traces, KV slots and batch size of a set of real-engine runs. A policy idea is tried here in seconds,
before it costs GPU time, on the traces whose real results are already known.

    python -m sim.tracecmp results/real/h200_defer_ab/on --runs-of fcfs --hardware h200-measured \\
        --model mixtral-8x7b --variant fcfs --variant qllm \\
        --variant "qllm+room=qllm policy.be_prefill_room=true"

A variant is `POLICY [OVERRIDE ...]` or `LABEL=POLICY [OVERRIDE ...]` (Hydra overrides of the simulator's
config); the first is the baseline of the tokens/s ratio. Prints per rate the means over the runs' seeds."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from sim.gridnotes import gathered
from sim.results import markdown, ratio_to, serving_metrics
from sim.validate import run_key, served_model, simulate_like


@dataclass(frozen=True)
class Variant:
    label: str
    policy: str
    overrides: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Variant:
        words = shlex.split(text)
        if not words:
            raise ValueError("an empty --variant")
        label, _, policy = words[0].rpartition("=")
        return cls(label or policy, policy, tuple(words[1:]))


def compare(run_dirs: list[Path], variants: list[Variant], hardware: str, model: str) -> pd.DataFrame:
    """One row per (run, variant), with the tokens/s ratio to the first variant on the same trace."""
    rows = []
    with gathered(len(run_dirs) * len(variants)), tqdm(total=len(run_dirs) * len(variants), desc="simulating",
                                                        unit="run", leave=False) as bar:
        for run in run_dirs:
            info = json.loads((run / "summary.json").read_text())["run"]
            for v in variants:
                table = simulate_like(run, hardware, model, v.policy, v.overrides)
                rows.append({"rate": info["rate"], "seed": info["seed"], "variant": v.label,
                             **serving_metrics(table, 3.0)})
                bar.update()
    table = pd.DataFrame(rows)
    return table.assign(**{"tokens/s ratio": ratio_to(table, table.variant == variants[0].label, "tokens/s")})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sim.tracecmp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder of real.run output folders")
    parser.add_argument("--runs-of", default=None, help="only the runs of this policy (one per trace)")
    parser.add_argument("--variant", action="append", required=True, help="[LABEL=]POLICY [OVERRIDE ...]")
    parser.add_argument("--hardware", default="h200-measured")
    parser.add_argument("--model", default=None,
                        help="a simulator model (conf/model) or a Hugging Face config.json; default: the one the runs "
                             "served")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the per-run rows")
    args = parser.parse_args(argv)
    try:
        variants = [Variant.parse(v) for v in args.variant]
    except ValueError as err:
        parser.error(str(err))
    runs = sorted(p.parent for p in args.runs.rglob("summary.json") if (p.parent / "trace.csv").exists())
    if args.runs_of:
        runs = [r for r in runs if run_key(r)[0] == args.runs_of]
    if not runs:
        raise SystemExit(f"error: no real runs (summary.json + trace.csv) under {args.runs}")
    try:
        table = compare(runs, variants, args.hardware, args.model or served_model(runs))
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # a bad policy name, key or value
        raise SystemExit(f"error: {str(err).splitlines()[0]}") from None
    if args.out:
        table.to_csv(args.out, index=False)
    order = {v.label: i for i, v in enumerate(variants)}
    means = table.drop(columns="seed").groupby(["rate", "variant"]).mean().reset_index()
    means = means.sort_values(["rate", "variant"], key=lambda c: c.map(order) if c.name == "variant" else c)
    print(f"{len(runs)} traces x {len(variants)} variants, {args.hardware}, means over seeds:")
    print(markdown(means))


if __name__ == "__main__":
    main()
