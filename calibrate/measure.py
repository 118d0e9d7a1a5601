"""Time every stage the simulator charges, with the very functions the real engine runs
(real.stages) and, beside them, Hugging Face's own modules; plus 1-/2-layer passes (overheads),
merge and pause costs, and optionally full-model decode passes to check predictions against.

Runs where Hydra is not installed (the GPU image): `python3 -m calibrate.measure --model
mixtral-8x7b --out DIR [--full]`; `python -m calibrate run model=...` wraps it.

Writes DIR/stages.csv (impl, stage, x1, x2, split, repeat, time_s, latency_s, host_s, gpu_s),
DIR/passes.csv (impl, layers, phase, batch, context, repeat, time_s, gc_s, gc0-gc2: the garbage
collections inside the pass), DIR/events.csv (event, repeat, time_s; gc_*: the collector's heap census),
DIR/host_probe.csv (label, at_s, issue_us: the host's speed before each step), with --full
DIR/hf_steps.csv (HF's decode step by step: growing vs fixed cache, allocator mallocs) and
DIR/meta.json. The calibration model has 4 decoder layers (stages time layer 0; passes run 1, 2 and 4
of them)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from calibrate import hostpin, passes
from calibrate.benches import BENCHES
from calibrate.grid import (
    GRAPH_PASS_BATCHES,
    GRIDS,
    PASS_BATCHES,
    PASS_CONTEXT,
    PASS_DEPTHS,
    grids_for,
    largest,
    small,
)
from calibrate.timing import measure as time_point
from real.kv import KVPool
from real.model import PRESETS, build_model, preset_config
from sim.profile.measured import MEAN_STAGES

MEAN_REPEATS = 10  # repeats per point of MEAN_STAGES, over --repeats: their two modes need many for a mean


def measure_grid(bench, grids: dict, repeats: int, inner: int, log=print, sweeps: int = 5,
                 probe=lambda label: None) -> list[dict]:
    """Every stage's points; `probe(label)` is called before each stage (the host-speed log)."""
    rows = []
    for stage, splits in grids.items():
        if stage not in bench.stages():
            continue
        probe(f"{bench.impl} {stage}")
        start = time.perf_counter()
        try:
            rows += _stage_rows(bench, stage, splits, repeats, inner, sweeps)
        except Exception as error:  # noqa: BLE001 - one broken stage must not lose a device run
            log(f"  {bench.impl} {stage}: FAILED {error!r}")
            continue
        log(f"  {bench.impl} {stage}: {sum(len(p) for p in splits.values())} points, "
            f"{time.perf_counter() - start:.1f} s")
    return rows


def _stage_rows(bench, stage: str, splits: dict, repeats: int, inner: int, sweeps: int = 5) -> list[dict]:
    """The host's speed on these shared machines drifts by 10-15% over minutes, which a host-bound
    stage's times follow. So grid and held-out points are timed together, in order of size (a held-out
    point next to its grid neighbours), and the repeats are spread over `sweeps` passes through the
    stage, so that a slow spell lands on every point's median rather than on a run of neighbours
    (H200, one sweep: prefill attention's host time 1.26 ms at 2-4 sequences, 0.77 at 1, 1.02 at 8).
    Each sweep builds the point's inputs anew, so HF's layer, which routes its own random hidden
    states, is timed over `sweeps` routings (two sweeps: its decode layer 10.9% off at batch 10, H200)."""
    points = sorted((x1, x2, split) for split, pts in splits.items() for x1, x2 in pts)
    if stage in MEAN_STAGES:  # its point time is a mean of two modes: ten times the repeats (a few ms each)
        repeats *= MEAN_REPEATS
    per_sweep = [len(part) for part in np.array_split(np.arange(repeats), min(sweeps, repeats))]
    rows, counts = [], dict.fromkeys(points, 0)
    for count in per_sweep:
        for point in points:
            x1, x2, split = point
            for clocks in time_point(bench.call(stage, x1, x2), bench.device, count, inner):
                rows.append({"impl": bench.impl, "stage": stage, "x1": x1, "x2": x2, "split": split,
                             "repeat": counts[point], **clocks})
                counts[point] += 1
    return rows


def _guarded(step, *args, label: str = "") -> None:
    try:
        step(*args)
    except Exception as error:  # noqa: BLE001 - keep what the earlier steps measured
        import traceback

        traceback.print_exc()
        print(f"{label or step.__name__} FAILED: {error!r}", flush=True)


def _free_memory(device: str) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        print(f"  GPU memory in use: {torch.cuda.memory_allocated() / 2**30:.1f} GiB", flush=True)


def meta(args, dtype: torch.dtype) -> dict:
    import transformers

    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    revision = os.environ.get("QLLM_GIT_REVISION") or (done.stdout.strip() if done.returncode == 0 else "")
    return {
        "model": args.model, "dtype": str(dtype).removeprefix("torch."), "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda,
        "git_revision": revision or "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "calibration_layers": max(PASS_DEPTHS), "repeats": args.repeats, "inner": args.inner, "sweeps": args.sweeps,
        "impls": args.impls,
        "method": "calibrate.timing: latency (sync-bracketed call), time (steady state of back-to-back calls), "
                  "host (issue time behind a sleep kernel), gpu (CUDA events behind it); 3 warm-up calls",
        "routing": "balanced (token i -> experts (i*k+j) mod E)",
    }


class Writer:
    """Writes the tables after each step, so a run cut short still leaves what it measured."""

    def __init__(self, out: Path, info: dict, device: str = "cpu"):
        self.out, self.info, self.device = out, info, device
        self.tables: dict[str, list[dict]] = {"stages": [], "passes": [], "events": []}
        self.start = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)

    def probe(self, label: str) -> None:
        """One row of host_probe.csv: the host's issue speed before the step `label` (GPU runs only)."""
        if self.device == "cuda":
            self.add("host_probe", [{"label": label, "at_s": round(time.perf_counter() - self.start, 1),
                                     "issue_us": hostpin.issue_us()}])

    def add(self, table: str, rows: list[dict]) -> None:
        self.tables.setdefault(table, [])
        self.tables[table] += rows
        pd.DataFrame(self.tables[table]).to_csv(self.out / f"{table}.csv", index=False)
        (self.out / "meta.json").write_text(json.dumps(self.info, indent=2))


def calibration_model(args, dtype):
    config = preset_config(args.model, num_hidden_layers=max(PASS_DEPTHS))
    num_experts = getattr(config, "num_local_experts", None) or config.num_experts  # Mixtral | Qwen3-MoE
    grids = grids_for(num_experts, config.num_experts_per_tok)
    grids = small(grids) if args.small else grids
    slots, max_len = largest(grids)
    if args.stages:
        grids = {stage: grids[stage] for stage in args.stages}
    model = build_model(config, args.device, dtype)
    pool = KVPool.allocate_for(config, slots, max_len, args.device, dtype)
    return grids, model, pool


def run_grids(args, dtype, writer: Writer) -> None:
    grids, model, pool = calibration_model(args, dtype)
    hf_experts = "grouped_mm" if args.device == "cuda" else "eager"
    for impl in [] if args.passes_only else args.impls:
        model.set_experts_implementation(hf_experts)
        writer.add("stages", measure_grid(BENCHES[impl](model, pool, args.device), grids, args.repeats, args.inner,
                                          sweeps=args.sweeps, probe=writer.probe))
    if args.no_passes:
        return
    impls = [i if i == "engine" else f"hf-{hf_experts}" for i in args.impls]
    impls += ["engine-graphs"] * ("engine" in impls and args.device == "cuda")
    writer.add("events", passes.heap_census())
    for depth in PASS_DEPTHS:
        for impl in impls:
            writer.probe(f"{impl} passes {depth}")
            with passes.layers(model, depth):
                batches = GRAPH_PASS_BATCHES if impl == "engine-graphs" else PASS_BATCHES
                _guarded(lambda impl=impl, batches=batches: writer.add("passes", passes.decode_passes(
                    model, pool, [impl], batches, PASS_CONTEXT, args.pass_repeats)), label=f"{impl} passes")
    engine = passes.make_engine(model, pool, "engine")
    _guarded(lambda: writer.add("events", passes.preemption_events(engine, model.config.vocab_size,
                                                                   args.pass_repeats)), label="events")
    print("  passes and events done", flush=True)


def run_full(args, dtype, writer: Writer) -> None:
    """The whole model, built on the device: decode (and one prefill) passes to predict."""
    config = preset_config(args.model, **({"num_hidden_layers": 4} if args.small else {}))
    model = build_model(config, args.device, dtype)
    pool = KVPool.allocate_for(config, 2 * max(PASS_BATCHES) + 8, PASS_CONTEXT + 128, args.device, dtype)
    engine = passes.make_engine(model, pool, "engine")
    impls = [i for i in args.full_impls if args.device == "cuda" or i != "hf-grouped_mm"]
    writer.add("events", [{**row, "event": f"{row['event']}_full"} for row in passes.heap_census()])
    for impl in impls:
        writer.probe(f"{impl} full decode")
        _guarded(lambda impl=impl: writer.add("passes", passes.decode_passes(model, pool, [impl], PASS_BATCHES, PASS_CONTEXT,
                                                                   args.pass_repeats)), label=f"{impl} full decode")
    for impl in [i for i in impls if i in ("engine", "hf-grouped_mm")]:
        _guarded(lambda impl=impl: writer.add("passes", passes.prefill_passes(model, pool, [impl], 8, PASS_CONTEXT,
                                                                    max(args.pass_repeats // 2, 2))),
                 label=f"{impl} full prefill")
    hf_experts = "grouped_mm" if args.device == "cuda" else "eager"

    def diagnose():
        model.set_experts_implementation(hf_experts)
        for batch in PASS_BATCHES:
            ids = passes.prompts(batch, PASS_CONTEXT, config.vocab_size, seed=batch)
            writer.add("hf_steps", [{"impl": f"hf-{hf_experts}", **row} for row in
                                    passes.hf_decode_diagnosis(model, ids, args.pass_repeats)])
    _guarded(diagnose, label="hf decode diagnosis")
    _guarded(lambda: writer.add("events", [{**row, "event": f"{row['event']}_full"} for row in
                                           passes.preemption_events(engine, config.vocab_size, args.pass_repeats)]),
             label="full events")


def _pin_host(args, writer: Writer) -> None:
    """--pin: probe the CPUs (auto) and move the process to one; the probe and the choice go in the run."""
    if args.pin == "none" or args.device != "cuda":  # on a CPU the stages' own threads need the cores
        return
    cpu = int(args.pin) if args.pin.isdigit() else -1
    if cpu >= 0 and cpu not in hostpin.allowed_cpus():
        raise SystemExit(f"error: --pin {cpu}: this process may run on CPUs {hostpin.allowed_cpus()} only")
    if args.pin == "auto":
        table = hostpin.probe(rounds=5)
        writer.add("cpu_probe", table.to_dict("records"))
        print(hostpin.summary(table).round(2).to_string(), flush=True)
        cpu = hostpin.best_cpu(table)
    hostpin.pin(cpu)
    writer.info["host_cpu"] = cpu
    print(f"host pinned to cpu {cpu}" if cpu >= 0 else "host not pinned (no CPU beat the scheduler)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mixtral-8x7b", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impls", nargs="+", default=["engine", "hf"], choices=sorted(BENCHES))
    parser.add_argument("--repeats", type=int, default=10, help="repeats per grid point (one row each)")
    parser.add_argument("--inner", type=int, default=4, help="back-to-back calls per repeat")
    parser.add_argument("--sweeps", type=int, default=5,
                        help="passes through each stage's points, the repeats split among them")
    parser.add_argument("--pass-repeats", type=int, default=10)
    parser.add_argument("--small", action="store_true", help="tiny grids (smoke test of the tool)")
    parser.add_argument("--no-grid", action="store_true", help="skip the calibration model (grids and passes)")
    parser.add_argument("--passes-only", action="store_true", help="calibration model: passes and events only")
    parser.add_argument("--stages", nargs="+", default=None, help="time only these stages (default: all)")
    parser.add_argument("--no-passes", action="store_true", help="calibration model: the stage grids only (no "
                                                                 "passes, no events), e.g. for calibrate.splice --stage")
    parser.add_argument("--full", action="store_true", help="also time whole-model passes (needs its memory)")
    parser.add_argument("--full-impls", nargs="+", default=["engine", "engine-graphs", "hf-grouped_mm", "hf-eager"])
    parser.add_argument("--pin", default="none",
                        help="run the host on one CPU: auto (the fastest steady one, calibrate.hostpin), "
                             "none, or a CPU number")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.stages or ()) - set(GRIDS))
    if unknown:
        parser.error(f"--stages: no such stage {', '.join(unknown)} (stages: {', '.join(sorted(GRIDS))})")
    if args.pin not in ("auto", "none") and not args.pin.isdigit():
        parser.error(f"--pin must be auto, none or a CPU number, got {args.pin!r}")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    writer = Writer(args.out, meta(args, dtype), args.device)
    _pin_host(args, writer)
    start = time.perf_counter()
    with torch.inference_mode():  # no autograd history: in-place KV writes would otherwise chain every call
        if not args.no_grid:
            print(f"{args.model}: stage grids ({', '.join(args.impls)})", flush=True)
            _guarded(run_grids, args, dtype, writer)
            _free_memory(args.device)
        if args.full:
            print(f"{args.model}: full-model passes", flush=True)
            _guarded(run_full, args, dtype, writer)
    print(f"done in {time.perf_counter() - start:.0f} s -> {args.out}", flush=True)
    try:  # the roofline and held-out checks, where the simulator's profile code imports
        import warnings

        from calibrate.check import report

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report(args.out)
    except Exception as error:  # noqa: BLE001 - a check must never lose a run's tables
        print(f"check skipped: {error!r}")


if __name__ == "__main__":
    main()
