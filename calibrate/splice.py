"""`python -m calibrate.splice RUN PROFILE --impl hf`: replace one implementation's tables in a committed profile
by those of another calibration run (`calibrate.measure --impls hf --full ...`): its stage rows, its passes
(`hf-*`) and, for HF, the decode diagnosis (`hf_steps.csv`). The other implementation's rows, the events and
the serving costs stay; `meta.json` names the run the spliced rows came from. Why: HF's stages and HF's whole
passes must come from one run (the check predicts one from the other), while the engine's stages carry the
serving events fitted against them, which a new engine calibration would have to refit.

`--stage S` splices only stage S's rows of `--impl`: a stage the engine gained since the profile was measured,
timed alone by `calibrate.measure --impls engine --stages S`. Everything else stays.

`--passes P` splices only the passes of implementation P (e.g. `engine-graphs`, timed at batch sizes the profile
lacks by `calibrate.measure --impls engine --passes-only`): the simulator reads the replayed graph layer's time
from them on the GPU clock, which leases agree on within a few percent, so no stage row need change with them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

SAME = ("model", "dtype", "gpu")  # meta.json keys two runs must share to be spliced


def splice(run: Path, profile: Path, impl: str, stage: str | None = None,
           host_reference: str | None = None) -> dict[str, int]:
    """Rows replaced per table; raises ValueError where the run cannot stand in for the profile's rows. `stage`:
    only that stage's rows of `impl` (a stage the engine gained: `calibrate.measure --stages S`); passes stay.
    `host_reference` (with `stage`): a stage both hold; the spliced host times are put on the profile's host
    clock by the median ratio of its host times, profile over run (leases' hosts differ by 10-30%; their GPU
    times by 0-5%)."""
    if stage is not None:
        return _splice_stage(run, profile, impl, stage, host_reference)
    run_meta, meta = _metas(run, profile)
    counts, tables = {}, {}
    for table, match in (("stages", lambda s: s == impl), ("passes", lambda s: s.str.startswith(f"{impl}-") | (s == impl))):
        new, old = (pd.read_csv(d / f"{table}.csv") for d in (run, profile))
        taken = new[match(new.impl)]
        if taken.empty:
            raise ValueError(f"{run / f'{table}.csv'} has no {impl} rows")
        tables[table] = pd.concat([old[~match(old.impl)], taken], ignore_index=True)
        counts[table] = len(taken)
    for table, rows in tables.items():  # written once every table is read: a refusal leaves the profile as it was
        rows.to_csv(profile / f"{table}.csv", index=False)
    if impl == "hf" and (run / "hf_steps.csv").exists():
        (profile / "hf_steps.csv").write_text((run / "hf_steps.csv").read_text())
        counts["hf_steps"] = len(pd.read_csv(run / "hf_steps.csv"))
    _name_source(profile, meta, f"stages.csv impl={impl}, passes.csv {impl}-*"
                 + (", hf_steps.csv" if "hf_steps" in counts else ""),
                 f"python -m calibrate.splice: calibrate.measure run of {run_meta.get('date')} at "
                 f"{run_meta.get('git_revision')} (repeats {run_meta.get('repeats')}, sweeps {run_meta.get('sweeps')})")
    return counts


def _metas(run: Path, profile: Path) -> tuple[dict, dict]:
    """Both folders' meta.json, once they agree on what was measured (SAME)."""
    run_meta, meta = (json.loads((d / "meta.json").read_text()) for d in (run, profile))
    for key in SAME:
        if run_meta.get(key) != meta.get(key):
            raise ValueError(f"{key}: the run has {run_meta.get(key)!r}, the profile {meta.get(key)!r}")
    return run_meta, meta


def _name_source(profile: Path, meta: dict, rows: str, source: str) -> None:
    """Write the profile's meta.json with `rows` (which rows were spliced) named as coming from `source`."""
    meta.setdefault("other_sources", {})[rows] = source
    (profile / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def host_ratio(run_rows: pd.DataFrame, profile_rows: pd.DataFrame) -> float:
    """Median over the points both measured of (profile's median host_s) / (run's median host_s)."""
    medians = [rows.groupby(["x1", "x2"]).host_s.median() for rows in (profile_rows, run_rows)]
    ratios = (medians[0] / medians[1]).dropna()
    if ratios.empty:
        raise ValueError("the host reference stage has no point in both the run and the profile")
    return float(ratios.median())


def _splice_stage(run: Path, profile: Path, impl: str, stage: str, host_reference: str | None) -> dict[str, int]:
    run_meta, meta = _metas(run, profile)
    new, old = (pd.read_csv(d / "stages.csv") for d in (run, profile))
    taken = new[(new.impl == impl) & (new.stage == stage)]
    if taken.empty:
        raise ValueError(f"{run / 'stages.csv'} has no {impl} rows of stage {stage}")
    note = ""
    if host_reference is not None:
        ratio = host_ratio(new[(new.impl == impl) & (new.stage == host_reference)],
                           old[(old.impl == impl) & (old.stage == host_reference)])
        taken = taken.assign(host_s=taken.host_s * ratio)
        note = f"; host_s x {ratio:.3f}, the median ratio of {host_reference}'s host times, profile over run"
    kept = old[~((old.impl == impl) & (old.stage == stage))]
    pd.concat([kept, taken], ignore_index=True).to_csv(profile / "stages.csv", index=False)
    _name_source(profile, meta, f"stages.csv impl={impl} stage={stage}",
                 f"python -m calibrate.splice --stage: calibrate.measure run of {run_meta.get('date')} at "
                 f"{run_meta.get('git_revision')} on {run_meta.get('gpu')} (repeats {run_meta.get('repeats')}, "
                 f"sweeps {run_meta.get('sweeps')}){note}")
    return {"stages": len(taken)}


def splice_passes(run: Path, profile: Path, impl: str) -> dict[str, int]:
    """Replace the profile's passes of `impl` (an exact name: `engine-graphs`) by the run's; nothing else changes."""
    run_meta, meta = _metas(run, profile)
    new, old = (pd.read_csv(d / "passes.csv") for d in (run, profile))
    taken = new[new.impl == impl]
    if taken.empty:
        raise ValueError(f"{run / 'passes.csv'} has no {impl} passes")
    pd.concat([old[old.impl != impl], taken], ignore_index=True).to_csv(profile / "passes.csv", index=False)
    batches = ", ".join(str(b) for b in sorted(taken.batch.unique()))
    _name_source(profile, meta, f"passes.csv impl={impl}",
                 f"python -m calibrate.splice --passes: calibrate.measure run of {run_meta.get('date')} at "
                 f"{run_meta.get('git_revision')} on {run_meta.get('gpu')} (batches {batches})")
    return {"passes": len(taken)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m calibrate.splice", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a calibrate.measure output folder")
    parser.add_argument("profile", type=Path, help="the profile folder to update in place")
    parser.add_argument("--impl", default="hf", choices=["hf", "engine"])
    parser.add_argument("--stage", default=None, help="only this stage's rows of --impl (e.g. attention_prefill_varlen)")
    parser.add_argument("--host-reference", default=None,
                        help="with --stage: a stage both hold, whose host-time ratio (profile / run) rescales the "
                             "spliced host times (e.g. attention_prefill)")
    parser.add_argument("--passes", default=None, metavar="IMPL",
                        help="only the passes of this implementation (e.g. engine-graphs); stages stay")
    args = parser.parse_args(argv)
    if args.host_reference and not args.stage:
        parser.error("--host-reference needs --stage")
    if args.passes and args.stage:
        parser.error("--passes and --stage splice different tables: one at a time")
    try:
        counts = (splice_passes(args.run, args.profile, args.passes) if args.passes else
                  splice(args.run, args.profile, args.impl, args.stage, args.host_reference))
    except (ValueError, FileNotFoundError, KeyError) as error:
        sys.exit(f"error: {error}")
    print(", ".join(f"{table}: {n} rows" for table, n in counts.items()), f"-> {args.profile}")


if __name__ == "__main__":
    main()
