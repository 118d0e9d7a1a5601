"""Checks of a measured profile: interpolation error at the held-out grid (measured in the same
run), measured stage times vs the roofline floor, and whole-pass predictions (the simulator's
`decode_step_s` / `prefill_s`) vs the passes timed in the same run.
`python -m calibrate.check calibrate/profiles/h200/mixtral-8x7b-bf16 [--impl engine|hf]`"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.analytic import AnalyticProfile
from sim.profile.base import AttentionLoad
from sim.profile.derive import decode_step_s, layer_s, prefill_s
from sim.profile.measured import READ, MeasuredProfile, curves, load_table, point_times

CONF = Path(__file__).resolve().parents[1] / "conf"
WHOLE_LAYERS = ("layer_decode", "layer_prefill")  # measured to check how the simulator composes layers
NOT_INTERPOLATED = ("layer_prefill",)  # the simulator reads layer_decode (its host time), never layer_prefill
PASS_IMPLS = {"engine": ["engine"], "engine-graphs": ["engine-graphs"], "hf": ["hf-grouped_mm", "hf-eager"]}


def model_spec(name: str) -> ModelSpec:
    values = yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text())
    return ModelSpec(**{k: v for k, v in values.items() if k != "defaults"})


def profile_model(directory: Path) -> ModelSpec:
    """The model a profile folder was measured on: its meta.json's `model`, else the folder's name (<model>-<dtype>),
    so a copy under another name (sim.validate --profile) still knows its model."""
    meta = Path(directory) / "meta.json"
    name = json.loads(meta.read_text()).get("model") if meta.exists() else None
    return model_spec(name or Path(directory).name.rsplit("-", 1)[0])  # FileNotFoundError: no such model config


def stepped_profile(directory: Path, serving: bool = False, model: ModelSpec | None = None, impl: str = "engine",
                    varlen_prefill: bool = False, lean_attention: bool = False,
                    host_scale: float = 1.0) -> MeasuredProfile:
    """The profile's stepped engine (`impl="engine-graphs"`: with its decode layers replayed as graphs) as the
    simulator builds it (`model`: default, the folder's), attending prefills as a run did (`varlen_prefill`,
    `lean_attention`: its summary's); with `serving`, also the server costs already in events.csv
    (calibrate.serving measures its residuals without them); `host_scale`: its host-side costs x this."""
    model = model or profile_model(directory)
    return MeasuredProfile(directory, top_k=model.top_k, impl=impl, serving=serving,
                           projection_share=model.attention_params / model.expert_params,
                           varlen_prefill=varlen_prefill, lean_attention=lean_attention, host_scale=host_scale)


def hardware_spec(directory: Path) -> HardwareSpec:
    """Rates of conf/hardware/<folder>.yaml, the folder being the profile's parent (h100, h200) or
    else named after the GPU in meta.json."""
    name = Path(directory).parent.name
    if not (CONF / "hardware" / f"{name}.yaml").exists():
        gpu = json.loads((Path(directory) / "meta.json").read_text())["gpu"].lower()
        name = next((n for n in ("h100", "h200", "a100") if n in gpu), gpu)
    values = yaml.safe_load((CONF / "hardware" / f"{name}.yaml").read_text())
    return HardwareSpec(**{k: v for k, v in values.items() if k != "profile"})


def interpolated(table: pd.DataFrame, impl: str, clock: str) -> pd.DataFrame:
    """Each held-out point's measured and interpolated time (s) and their |error| (%), from `table`'s rows."""
    fitted = curves(table, impl, "grid", clock)
    held = point_times(table[(table.impl == impl) & (table.split == "heldout")], clock)
    out = pd.DataFrame({"measured": held, "interpolated": [fitted[s](x1, x2) for s, x1, x2 in held.index]},
                       index=held.index)
    out["error_pct"] = 100 * (out.interpolated - out.measured).abs() / out.measured
    return out


def heldout_errors(directory: Path, impl: str = "engine", clock: str = "time_s") -> pd.DataFrame:
    table = load_table(directory)
    points = interpolated(table, impl, clock)
    rows = table[(table.impl == impl) & (table.split == "heldout")]
    early = rows.repeat < rows.groupby(["stage", "x1", "x2"]).repeat.transform("max") / 2
    halves = point_times(rows[early], clock), point_times(rows[~early], clock)
    return pd.DataFrame({"measured_ms": points.measured * 1000, "interpolated_ms": points.interpolated * 1000,
                         "noise_pct": 50 * (halves[0] - halves[1]).abs() / points.measured,
                         "error_pct": points.error_pct}).rename_axis(["stage", "x1", "x2"]).reset_index()


def heldout_by_clock(directory: Path, impl: str) -> dict[str, pd.DataFrame]:
    """`heldout_errors` for each timing column the profile has (what both summaries below read)."""
    table = load_table(directory)
    clocks = [clock for clock in ("time_s", "host_s", "gpu_s") if clock in table]
    return {clock: heldout_errors(directory, impl, clock) for clock in clocks}


def noise_summary(directory: Path, impl: str, errors: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Per clock, over the interpolated stages' held-out points: the error (%) and the points' own noise
    (half the difference of the medians of their earlier and later sweeps, % of the point: about one
    standard error of the point's time). Where the noise is as large as the error, the target measures the
    host, not the interpolation. `errors`: `heldout_by_clock`'s, where the caller has them already."""
    rows = {}
    for clock, table in (errors or heldout_by_clock(directory, impl)).items():
        points = table[~table.stage.isin(NOT_INTERPOLATED)]
        rows[clock.removesuffix("_s")] = {
            "error median": points.error_pct.median(), "error max": points.error_pct.max(),
            "points > 10%": int((points.error_pct > 10).sum()), "noise median": points.noise_pct.median(),
            "noise max": points.noise_pct.max(), "points with noise > 5%": int((points.noise_pct > 5).sum()),
            "points": len(points)}
    return pd.DataFrame(rows).T


def heldout_resolution(directory: Path, impl: str, clock: str, draws: int = 100, seed: int = 0,
                       target_pct: float = 10.0) -> dict:
    """Can this run's repeats tell whether each held-out point is within `target_pct`? Bootstrap: the
    repeats of every point (grid and held-out) are resampled `draws` times and the held-out errors taken
    again. A point is over the target at 90% confidence where its 5th percentile exceeds it, within it where
    its 95th percentile does not; otherwise its repeats cannot tell (the host's noise on the host clock)."""
    table = load_table(directory)
    table = table[(table.impl == impl) & ~table.stage.isin(NOT_INTERPOLATED)].reset_index(drop=True)

    def errors(rows: pd.DataFrame) -> pd.Series:
        return interpolated(rows, impl, clock).error_pct

    rng = np.random.default_rng(seed)
    groups = list(table.groupby(["stage", "x1", "x2", "split"]).indices.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # resampled grids extrapolate at their edges like the real one
        observed = errors(table)
        draws_table = pd.concat([errors(table.iloc[np.concatenate([rng.choice(g, len(g)) for g in groups])])
                                 for _ in range(draws)], axis=1)
    low, high = draws_table.quantile(0.05, axis=1), draws_table.quantile(0.95, axis=1)
    return {"points": len(observed), "observed over": int((observed > target_pct).sum()),
            "over (90%)": int((low > target_pct).sum()), "within (90%)": int((high <= target_pct).sum()),
            "cannot tell": int(((low <= target_pct) & (high > target_pct)).sum())}


def resolution_summary(directory: Path, impl: str, draws: int = 100) -> pd.DataFrame:
    """`heldout_resolution` per clock: how many held-out points the run shows over / within 10%."""
    clocks = [clock for clock in ("time_s", "host_s", "gpu_s") if clock in load_table(directory)]
    return pd.DataFrame({clock.removesuffix("_s"): heldout_resolution(directory, impl, clock, draws)
                         for clock in clocks}).T


def host_steadiness(directory: Path) -> pd.DataFrame:
    """The host's issue speed logged through the run (host_probe.csv, us per tiny launch): per step, and
    its spread. A host that changed speed between the stage grids and the whole passes makes a host-bound
    pass's prediction miss by that factor, whatever the interpolation."""
    path = Path(directory) / "host_probe.csv"
    if not path.exists():
        return pd.DataFrame()
    probes = pd.read_csv(path)
    phase = probes.label.map(lambda label: "full passes" if "full" in label else
                             "calibration passes" if "passes" in label else "stage grids")
    return probes.groupby(phase, sort=False).issue_us.agg(["count", "median", "min", "max"])


def roofline_points(model: ModelSpec) -> list[tuple[str, int, int]]:
    return [("attention_decode", 1, 512), ("attention_decode", 32, 512), ("attention_decode", 64, 4096),
            ("attention_prefill", 1, 512), ("attention_prefill", 8, 1024), ("router", 32, 0), ("router", 4096, 0),
            ("expert", 32, 0), ("expert", 4096, 0), ("experts_layer", 1, 0), ("experts_layer", 32, 0),
            ("experts_layer", 8192, 0), ("lm_head", 32, 0)]


def floor_s(floor: AnalyticProfile, model: ModelSpec, stage: str, x1: int, x2: int) -> float:
    if stage == "attention_decode":
        return floor.attention_s(AttentionLoad(num_decode_seqs=x1, decode_ctx_tokens=x1 * x2))
    if stage == "attention_prefill":
        return floor.attention_s(AttentionLoad(x1, x1 * x2, x1 * x2 * x2))
    if stage == "router":
        return floor.router_s(x1)
    if stage == "expert":
        return float(floor.experts_s(np.array([x1]))[0])
    if stage == "experts_layer":
        loads = np.bincount(np.arange(x1 * model.top_k) % model.num_experts, minlength=model.num_experts)
        return float(floor.experts_s(loads).sum())
    return floor.lm_head_s(x1)


def roofline(directory: Path, model: ModelSpec, hardware: HardwareSpec, impl: str = "engine") -> pd.DataFrame:
    table = load_table(directory)
    fitted = {clock: curves(table, impl, clock=clock) for clock in ("time_s", "gpu_s") if clock in table}
    floor = AnalyticProfile(model, hardware, kernel_launch_s=0.0)
    rows = []
    for stage, x1, x2 in roofline_points(model):
        if stage not in fitted["time_s"]:
            continue
        row = {"stage": stage, "x1": x1, "x2": x2, "roofline_ms": floor_s(floor, model, stage, x1, x2) * 1000}
        for clock, fit in fitted.items():
            row[clock.removesuffix("_s") + "_ms"] = fit[stage](x1, x2) * 1000
        rows.append(row)
    out = pd.DataFrame(rows)
    for column in ("time_ms", "gpu_ms"):
        if column in out:
            out[column.removesuffix("_ms") + "/roofline"] = out[column] / out.roofline_ms
    return out


def pass_predictions(directory: Path, model: ModelSpec, impl: str = "engine", clock: str = "pipelined") -> pd.DataFrame:
    """Whole-model passes timed in the run vs the simulator's prediction from the stage profile."""
    if not (Path(directory) / "passes.csv").exists():
        return pd.DataFrame()
    passes = pd.read_csv(Path(directory) / "passes.csv")
    full = passes[(passes.layers == model.num_layers) & passes.impl.isin(PASS_IMPLS[impl])]
    if full.empty:
        return pd.DataFrame()
    profile = MeasuredProfile(directory, top_k=model.top_k, impl=impl, clock=clock, serving=False)
    measured = full.groupby(["phase", "batch", "context", "impl"]).time_s.median().unstack("impl") * 1000
    predict = {"decode": decode_step_s, "prefill": prefill_s}
    out = pd.DataFrame({"predicted_ms": [predict[ph](profile, model, b, c) * 1000 for ph, b, c in measured.index]},
                       index=measured.index)
    for name in measured.columns:
        out[f"{name}_ms"] = measured[name]
        out[f"error vs {name} %"] = 100 * (out.predicted_ms - measured[name]) / measured[name]
    return out


def heldout_summary(directory: Path, impl: str,
                    errors: dict[str, pd.DataFrame] | None = None) -> pd.DataFrame:
    """Median and max held-out error (%) per stage, for each timing column. The row `all` pools the
    stages the simulator interpolates; `layer_prefill` is listed but not pooled: the
    simulator composes prefill layers from the stages (`layer_checks` compares the two). The row
    `read` pools, per clock, only the stages the pipelined simulator charges at that clock (READ).
    `errors`: `heldout_by_clock`'s, where the caller has them already."""
    errors = errors or heldout_by_clock(directory, impl)
    parts = {clock.removesuffix("_s"): table.groupby("stage").error_pct.agg(["median", "max"])
             for clock, table in errors.items()}
    out = pd.concat(parts, axis=1)
    def pooled(clock: str, stages=None) -> pd.Series:
        rows = errors[clock]
        keep = rows.stage.isin(stages) if stages is not None else ~rows.stage.isin(NOT_INTERPOLATED)
        return rows[keep].error_pct
    out.loc["all"] = [pooled(c + "_s").agg(m) for c, m in out.columns]
    out.loc["read"] = [pooled(c + "_s", READ[c + "_s"]).agg(m) for c, m in out.columns]
    return out


def layer_checks(directory: Path, model: ModelSpec, impl: str = "engine") -> pd.DataFrame:
    """Whole layers timed in the run (steady state, grid and held-out points) vs the layer the simulator
    composes from the stage profile: how well it prices a decode or prefill layer of equal sequences.
    (The engine's per-stage work is itself derived from `layer_decode`, so the decode rows check the
    composition's shape over batch sizes, not its level.)"""
    table = load_table(directory)
    rows = table[(table.impl == impl) & table.stage.isin(WHOLE_LAYERS)]
    if rows.empty:
        return pd.DataFrame()
    profile = MeasuredProfile(directory, top_k=model.top_k, impl=impl, serving=False)
    measured = rows.groupby(["stage", "x1", "x2"]).time_s.median()
    out = pd.DataFrame([{"stage": stage, "x1": x1, "x2": x2, "measured_ms": t * 1000,
                         "composed_ms": _composed_layer_s(profile, model, stage, x1, x2) * 1000}
                        for (stage, x1, x2), t in measured.items()])
    out["error_pct"] = 100 * (out.composed_ms - out.measured_ms) / out.measured_ms
    return out


def prefill_pass_checks(directory: Path, model: ModelSpec) -> pd.DataFrame:
    """Short prefill passes (`python -m calibrate.prefillpass`: prefill_passes.csv) vs the stepped engine's
    layer composed from the stages (without server costs), per (sequences, tokens) and issue mode, in ms."""
    path = Path(directory) / "prefill_passes.csv"
    if not path.exists():
        return pd.DataFrame()
    table = load_table(directory, "prefill_passes.csv", ["mode", "seqs", "tokens", "repeat", "layer_s", "issue_s"])
    profile = stepped_profile(directory, model=model)
    out = (table.groupby(["seqs", "tokens", "mode"])[["layer_s", "issue_s"]].median() * 1000).unstack("mode")
    out.columns = [f"{mode} {clock.removesuffix('_s')} ms" for clock, mode in out.columns]
    out["composed ms"] = [_composed_layer_s(profile, model, "layer_prefill", s, t) * 1000 for s, t in out.index]
    out["composed / whole %"] = 100 * (out["composed ms"] / out["whole layer ms"] - 1)
    return out


def routing_checks(directory: Path) -> pd.DataFrame:
    """The experts stage with the engine's own routing (`calibrate.prefillpass --routing`: prefill_routing.csv)
    over the grid's balanced routing, per layer token count: medians over the measured layers."""
    path = Path(directory) / "prefill_routing.csv"
    if not path.exists():
        return pd.DataFrame()
    table = load_table(directory, "prefill_routing.csv", ["seqs", "tokens", "layer", "max_over_mean", "pass_s", "balanced_s"])
    table = table.assign(layer_tokens=table.seqs * table.tokens, ratio=table.pass_s / table.balanced_s)
    out = table.groupby("layer_tokens").agg(max_over_mean=("max_over_mean", "median"), own_ms=("pass_s", "median"),
                                            balanced_ms=("balanced_s", "median"), own_over_balanced=("ratio", "median"))
    out[["own_ms", "balanced_ms"]] *= 1000
    return out


def _composed_layer_s(profile: MeasuredProfile, model: ModelSpec, stage: str, x1: int, x2: int) -> float:
    if stage == "layer_decode":
        load = AttentionLoad(num_decode_seqs=x1, decode_ctx_tokens=x1 * x2, decode_max_ctx=x2)
    else:
        load = AttentionLoad(x1, x1 * x2, x1 * x2 * x2, prefill_max_tokens=x2)
    return layer_s(profile, model, load)


def report(directory: Path, impls: list[str] | None = None, clock: str = "pipelined") -> None:
    directory = Path(directory)
    model = profile_model(directory)
    impls = impls or sorted(set(load_table(directory).impl))
    if "engine" in impls and (directory / "passes.csv").exists() and \
            "engine-graphs" in set(pd.read_csv(directory / "passes.csv").impl):
        impls = [*impls, "engine-graphs"]
    fmt = lambda v: f"{v:.3f}"
    steadiness = host_steadiness(directory)
    if not steadiness.empty:
        print("host issue speed through the run (us per launch, host_probe.csv):")
        print(steadiness.to_string(float_format=fmt))
    for impl in impls:
        profile = MeasuredProfile(directory, top_k=model.top_k, impl=impl, clock=clock, serving=False)
        print(f"\n== {profile.name} ({profile.clock}); overheads: {profile.overheads}")
        if impl != "engine-graphs":
            print("held-out interpolation error (%):")
            errors = heldout_by_clock(directory, impl)  # both tables below read them
            print(heldout_summary(directory, impl, errors).to_string(float_format=fmt))
            print("held-out error against the points' own noise (%, stages pooled as in `all`):")
            print(noise_summary(directory, impl, errors).to_string(float_format=fmt))
            print("held-out points over / within 10% at 90% confidence (bootstrap of the repeats, 100 draws):")
            print(resolution_summary(directory, impl).to_string())
            print("measured vs roofline floor (one layer):")
            print(roofline(directory, model, hardware_spec(directory), impl).to_string(index=False, float_format=fmt))
            layers = layer_checks(directory, model, impl)
            if not layers.empty:
                print("whole layers: measured (steady) vs composed from the stages, |error| % median / max:")
                print(layers.assign(abs_error=layers.error_pct.abs()).groupby("stage").abs_error
                      .agg(["median", "max"]).to_string(float_format=fmt))
        if impl == "engine":
            passes = prefill_pass_checks(directory, model)
            if not passes.empty:
                print("short prefill passes (device ms per layer, whole / stepped issue) vs composed:")
                print(passes.to_string(float_format=fmt))
            routing = routing_checks(directory)
            if not routing.empty:
                print("experts stage, the engine's own routing vs the grid's balanced routing (not charged by the simulator):")
                print(routing.to_string(float_format=fmt))
        predictions = pass_predictions(directory, model, impl, clock)
        if not predictions.empty:
            print("whole passes: prediction vs measured:")
            print(predictions.to_string(float_format=fmt))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--impl", nargs="+", default=None, choices=["engine", "engine-graphs", "hf"])
    parser.add_argument("--clock", default="pipelined", choices=["pipelined", "time_s", "latency_s", "host_s", "gpu_s"])
    args = parser.parse_args(argv)
    if not (args.directory / "stages.csv").exists():
        parser.error(f"{args.directory} has no stages.csv: not a calibration profile folder")
    try:
        report(args.directory, args.impl, args.clock)
    except FileNotFoundError as error:  # the folder name must be <model>-<dtype> of a known model
        parser.error(f"{args.directory.name}: {error.strerror}: {error.filename} (name profile folders <model>-<dtype>, "
                     "e.g. mixtral-8x7b-bf16)")


if __name__ == "__main__":
    main()
