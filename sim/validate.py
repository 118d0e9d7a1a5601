"""Sim vs real: replay each real run's own trace through the simulator with the profile of the same
GPU and compare latency percentiles and throughput.
`python -m sim.validate results/real/h200_round9 --hardware h200-measured --model mixtral-8x7b`

`--against OTHER` scores the real runs against OTHER's runs of the same policy, rate and seed (the same traces
on another lease, say) instead of the simulator: the engine against itself, the floor under any simulator's
error (BENCHMARKS.md, session 12: round 11 against round 9, 78 of 108 cells within target; the simulator
against round 11, 77). Where the folder itself holds several runs of one policy, rate and seed (the same trace
replayed more than once), each is also scored against the others and printed per metric beside the simulator's
score: a miss the engine also makes against itself is its own run-to-run spread, not the simulator's error.

`--profile DIR` prices with another measured profile folder than the hardware's: calibrate a copy's serving events
on some runs (`cp -r` the profile, `python -m calibrate serving RUNS --profile COPY [--only EVENT ...]`) and score
it on others without touching the committed profile.

`--speed-band P` replays each run with the engine P% slower and faster too and counts the misses a speed error that
small explains (sim.speedband): under load a 1% speed error moves TTFT by 2-5%."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import pandas as pd
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm import tqdm

from calibrate.hostspeed import run_scale
from policies import Policy
from sim.cli import CONF_DIR
from sim.compose import compose_spec
from sim.gridnotes import gathered
from sim.model import ModelSpec
from sim.pipeline import ran_ahead
from sim.plan import CostModel
from sim.profile.select import ProfileError, build_profile, measured_directory
from sim.results import class_metrics, requests_table, throughput
from sim.routing import ExpertRouter
from sim.simulate import simulate
from sim.speedband import band_row, band_summary, stretch, unstretch
from sim.targets import cells_inside, within_target
from sim.workload import read_trace, to_requests

METRICS = [("LS", "ttft_p50_s"), ("LS", "ttft_p99_s"), ("LS", "turnaround_p50_s"), ("LS", "turnaround_p99_s"),
           ("BE", "ttft_p50_s"), ("BE", "ttft_p99_s"), ("BE", "turnaround_p50_s"), ("BE", "turnaround_p99_s")]


def _sim_models() -> list[str]:
    """The simulator's models by name (conf/model), `hf` (a config.json's dimensions) left out."""
    return sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml") if p.stem != "hf")


def model_overrides(model: str) -> list[str]:
    """A simulator model by name (conf/model), or a Hugging Face config.json, or the checkpoint folder holding one."""
    if model in _sim_models() or not Path(model).exists():
        return [f"model={model}"]
    return ["model=hf", f"model.config={model}"]


def served_model(runs: list[Path]) -> str:
    """The model the real runs served (their summary.json's `engine`), for `--model` left out: a simulator model of
    that name, or for a checkpoint folder the simulator model of its dimensions, else the folder itself. Exits with a message where the runs disagree or served a
    model the simulator has no dimensions for (the tiny test models)."""
    engines = sorted({json.loads((run / "summary.json").read_text())["run"].get("engine") or "" for run in runs})
    if "" in engines:
        raise SystemExit("error: a run's summary.json does not say which model it served: pass --model")
    if len(engines) != 1:
        raise SystemExit(f"error: the runs served {len(engines)} models ({', '.join(engines)}): pass --model")
    engine = engines[0]
    if engine in _sim_models():
        return engine
    if (Path(engine) / "config.json").is_file():  # a checkpoint: its preset's name where the dimensions are one's
        return _preset_like(ModelSpec.from_hf_config(engine)) or engine
    raise SystemExit(f"error: the runs served {engine!r}, which the simulator has no dimensions for: pass --model "
                     f"({', '.join(_sim_models())}, or a Hugging Face config.json)")


def _preset_like(model: ModelSpec) -> str | None:
    """The simulator model (conf/model) of `model`'s dimensions, if one has them all: its measured profiles then
    price a checkpoint of that model (they are looked up by name)."""
    return next((name for name in _sim_models()
                 if replace(compose_spec([f"model={name}"]).model, name=model.name) == model), None)


def simulate_like(run_dir: Path, hardware: str, model: str, policy: str | None = None,
                  extra: tuple[str, ...] = (), host_scale: float | str | None = None,
                  profile_dir: Path | None = None, speed: float = 1.0) -> pd.DataFrame:
    """The simulator on the real run's trace, policy, batch size and KV slots (`policy`, `extra`: another
    policy, further Hydra overrides, to ask what it would have done on the same trace: sim.tracecmp).
    `host_scale`: the measured profile's host-side costs x this; "auto": the run's host probe over the
    profile's (calibrate.hostspeed). `profile_dir`: a measured profile folder to price with instead of the
    hardware's own (a copy whose serving events were refitted, say). `speed`: the simulated engine `speed` x
    as fast (sim.speedband)."""
    summary = json.loads((run_dir / "summary.json").read_text())["run"]
    saved = None if policy else saved_policy(run_dir)
    policy = policy or summary["policy"]
    # a group to compose with; the saved policy replaces what it builds (its own group may be gone)
    group = policy if saved is None or (Path(CONF_DIR) / "policy" / f"{policy}.yaml").exists() else "fcfs"
    overrides = [f"policy={group}", f"hardware={hardware}", *model_overrides(model),
                 f"seed={summary['seed']}", "progress=false", *extra]
    if summary.get("graphs") and hardware.endswith("-measured"):  # the profile of the engine as it ran
        overrides.append("hardware.profile.impl=engine-graphs")
    if hardware.endswith("-measured"):  # its prefill attention as it ran (runs before the setting: padded)
        overrides.append(f"hardware.profile.varlen_prefill={str(bool(summary.get('varlen_prefill'))).lower()}")
        overrides.append(f"hardware.profile.pass_graphs={str(bool(summary.get('pass_graphs'))).lower()}")
        overrides.append(f"hardware.profile.lean_attention={str(bool(summary.get('lean_attention'))).lower()}")
    if summary.get("num_layers"):  # the depth it ran at (engine.num_layers may cut the model)
        overrides.append(f"model.num_layers={int(summary['num_layers'])}")
    spec = compose_spec(overrides)
    if saved is not None:
        spec = replace(spec, policy=saved)
    if profile_dir is not None:
        spec = replace(spec, profile=replace(spec.profile, directory=str(profile_dir.resolve())))
    if host_scale == "auto":
        host_scale = run_scale(run_dir, measured_directory(spec.profile, spec.model, spec.hardware))
    if host_scale is not None:
        spec = replace(spec, profile=replace(spec.profile, host_scale=float(host_scale)))
    requests = to_requests(read_trace(run_dir / "trace.csv"))
    for request in requests:
        request.kv_unit_tokens = summary["kv_slot_tokens"]
    stretch(requests, speed)
    router = ExpertRouter(spec.model.num_layers, spec.model.num_experts, spec.model.top_k, seed=spec.seed)
    costs = CostModel(spec.model, build_profile(spec.profile, spec.model, spec.hardware), router)
    outcome = simulate(requests, spec.policy, costs, summary["num_slots"] * summary["kv_slot_tokens"],
                       spec.max_batch_size, stage_stops=bool(summary.get("stage_stops", False)),
                       host_ahead=ran_ahead(summary))
    return unstretch(requests_table(outcome.requests, "sim", policy, summary["rate"], summary["seed"]), speed)


def saved_policy(run_dir: Path) -> Policy | None:
    """The policy exactly as the run built it, from its saved config (.hydra/config.yaml): a policy group's
    defaults may have changed since (qllm's `be_prefill_room`, off before session 11) or the group be gone
    (qllm_room); None without a saved config."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return None
    return instantiate(OmegaConf.to_container(OmegaConf.load(path), resolve=True)["policy"])


def compare(real: pd.DataFrame, sim: pd.DataFrame, slo_s: float = 3.0) -> dict[str, float]:
    row = {"policy": real.policy.iloc[0], "rate": real.rate.iloc[0]}
    for cls, metric in METRICS:
        r = class_metrics(real[real.priority == cls], slo_s)[metric]
        s = class_metrics(sim[sim.priority == cls], slo_s)[metric]
        row[f"{cls} {metric} real"], row[f"{cls} {metric} err %"] = r, 100 * (s - r) / r
    for name, table in (("real", real), ("sim", sim)):
        ls = table[table.priority == "LS"]
        reaction = ls.scheduled_s - ls.arrival_s
        row[f"LS reaction p50 ms {name}"] = 1e3 * reaction.median()
        row[f"LS reaction p99 ms {name}"] = 1e3 * reaction.quantile(0.99)
    r, s = throughput(real, 0.0)["tokens_per_s"], throughput(sim, 0.0)["tokens_per_s"]
    row["tokens/s real"], row["tokens/s err %"] = r, 100 * (s - r) / r
    for cls in ("LS", "BE"):
        row[f"{cls} ttft paired %"] = paired_pct(real, sim, cls, "ttft_s")
    return row


def paired_pct(real: pd.DataFrame, sim: pd.DataFrame, cls: str, column: str) -> float:
    """Median over the class's requests of (sim / real - 1), in %, each request against itself. A run's
    p50 of ~60 LS requests moves by 10-40% between bootstrap resamples (H200, round 5) where the
    distribution has a gap at its middle; the paired median does not, so it tells a model error from
    a percentile's sampling noise."""
    both = real[real.priority == cls].merge(sim[sim.priority == cls], on="request_id",
                                            suffixes=("_real", "_sim"))
    ratio = both[f"{column}_sim"] / both[f"{column}_real"]
    return 100 * (float(ratio.median()) - 1) if len(ratio) else float("nan")


def same_trace_pairs(runs: list[Path]) -> list[tuple[Path, Path]]:
    """Every ordered pair (reference, run) of distinct runs of one policy, rate and seed: one trace replayed
    twice, whose difference is the engine's own run-to-run spread."""
    groups: dict[tuple[str, float, int], list[Path]] = defaultdict(list)
    for run in runs:
        groups[run_key(run)].append(run)
    return [(a, b) for group in groups.values() for a in group for b in group if a != b]


def floor_table(table: pd.DataFrame, floor: pd.DataFrame) -> pd.DataFrame:
    """Per metric, cells within target: the simulator's (`table`) beside the engine's against itself (`floor`)."""
    def shares(frame: pd.DataFrame) -> pd.Series:
        inside = cells_inside(frame)
        return inside.sum().astype(int).astype(str) + " of " + str(len(inside))
    out = pd.DataFrame({"simulator": shares(table), "engine against itself": shares(floor)})
    out.index = [c.removesuffix(" err %") for c in out.index]
    return out


def run_key(run_dir: Path) -> tuple[str, float, int]:
    info = json.loads((run_dir / "summary.json").read_text())["run"]
    return info["policy"], float(info["rate"]), int(info["seed"])


def paired_runs(runs: list[Path], other_root: Path) -> list[tuple[Path, Path]]:
    """Each run with OTHER's run of the same policy, rate and seed; an error if none of them has one."""
    other = {run_key(p.parent): p.parent for p in other_root.rglob("summary.json")
             if (p.parent / "requests.parquet").exists()}
    pairs = [(run, other[run_key(run)]) for run in runs if run_key(run) in other]
    if not pairs:
        raise SystemExit(f"error: no run under {other_root} has the policy, rate and seed of a run under the first folder")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="folder of real run folders (each with trace.csv, requests.parquet)")
    parser.add_argument("--hardware", default="h200-measured")
    parser.add_argument("--model", default=None,
                        help="a simulator model (conf/model) or a Hugging Face config.json; default: the one the runs "
                             "served (their summary.json)")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the error table")
    parser.add_argument("--sim-out", type=Path, default=None, help="folder for the simulated runs' tables")
    parser.add_argument("--against", type=Path, default=None,
                        help="folder of real runs of the same traces to score against instead of the simulator")
    parser.add_argument("--host-scale", default=None,
                        help="the runs' host speed against the profile's: host-side costs x this "
                             "(hardware.profile.host_scale); auto: each run's host probe over the profile's")
    parser.add_argument("--speed-band", type=float, default=None, metavar="PCT",
                        help="also replay each run with the engine PCT%% slower and faster, and count the misses a "
                             "speed error that small explains (sim.speedband)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="a measured profile folder to price with instead of the hardware's own: a copy whose "
                             "serving events `python -m calibrate serving` refitted on other runs, say")
    args = parser.parse_args()
    host_scale = args.host_scale
    if host_scale is not None and host_scale != "auto":
        try:
            host_scale = float(host_scale)
        except ValueError:
            raise SystemExit(f"error: --host-scale must be a number or auto, got {host_scale!r}") from None
        if not host_scale > 0:
            raise SystemExit(f"error: --host-scale must be > 0, got {host_scale}")
    band = None if args.speed_band is None else args.speed_band / 100
    if band is not None and not 0 < band < 0.5:
        raise SystemExit(f"error: --speed-band must be between 0 and 50 (%), got {args.speed_band}")
    if band is not None and args.against:
        raise SystemExit("error: --speed-band replays the simulator; it does not apply with --against")
    speeds = (1.0,) if band is None else (1.0, 1 - band, 1 + band)
    runs = sorted(p.parent for p in args.runs.rglob("requests.parquet") if (p.parent / "trace.csv").exists())
    if not runs:
        raise SystemExit(f"error: no real runs (requests.parquet + trace.csv) under {args.runs}")
    model = args.model or (None if args.against else served_model(runs))
    if args.against is not None and not args.against.is_dir():
        raise SystemExit(f"error: --against {args.against}: no such folder")
    if args.against:
        sims = {run: {1.0: pd.read_parquet(other / "requests.parquet")}
                for run, other in paired_runs(runs, args.against)}
    else:
        try:
            with gathered(len(runs)):
                sims = {run: {speed: simulate_like(run, args.hardware, model, host_scale=host_scale,
                                                   profile_dir=args.profile, speed=speed) for speed in speeds}
                        for run in tqdm(runs, desc="simulating", unit="run", leave=False)}
        except ProfileError as error:  # e.g. a run with unpadded prompts against a profile without their curve
            raise SystemExit(f"error: {error}") from None
    reals = {run: pd.read_parquet(run / "requests.parquet") for run in runs}
    rows = []
    for run, tables in sims.items():
        if args.sim_out is not None and not args.against:
            (args.sim_out / run.name).mkdir(parents=True, exist_ok=True)
            tables[1.0].to_parquet(args.sim_out / run.name / "requests.parquet", index=False)
        row = {**compare(reals[run], tables[1.0]), "seed": run_key(run)[2]}
        if band is not None:
            row.update(band_row({speed: compare(reals[run], table) for speed, table in tables.items()}, band))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["policy", "rate", "seed"])
    if args.out:
        table.to_csv(args.out, index=False)
    shown = [c for c in table.columns if not c.endswith((" elasticity", " in band"))]
    print(table[shown].T.to_string(header=False, float_format=lambda v: f"{v:.2f}"))
    inside, cells = within_target(table)
    print(f"{len(table)} runs against {args.against or 'the simulator'}: {inside} of {cells} cells within target "
          f"(p50 <= 5%, p99 <= 10%, tokens/s <= 3%)")
    if band is not None:
        print(f"\nthe simulator's speed x {1 - band:g} and x {1 + band:g} besides x 1: the cells whose real value "
              f"lies within the band those speeds span, and how far each metric moves per % of speed")
        print(band_summary(table, band).to_string(float_format=lambda v: f"{v:.2f}"))
    pairs = [] if args.against else same_trace_pairs(runs)
    if pairs:
        floor = pd.DataFrame([compare(reals[a], reals[b]) for a, b in pairs])
        inside, cells = within_target(floor)
        print(f"\nthe engine against itself: {len(pairs)} ordered pairs of runs of one trace (their settings may "
              f"differ): {inside} of {cells} cells within target")
        print(floor_table(table, floor).to_string())


if __name__ == "__main__":
    main()
