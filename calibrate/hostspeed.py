"""The host's issue speed, as one calibrated number: the host time of one stepped prefill layer (one prompt of
128 tokens, `layer_prefill` of the stage grid), timed exactly as `calibrate.measure` times it (behind a sleep kernel,
`calibrate.timing`). A real run times it before its replay (`host_probe_ms` in summary.json); the profile holds the
same point from its calibration run; their ratio is the run's `host_scale` for the simulator (`python -m sim.validate
RUNS --host-scale auto`). Hosts of different leases issue the same layer 10-20% apart (BENCHMARKS.md, session 13),
and fcfs's prefill passes are host-bound."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sim.profile.measured import load_table

POINT = ("layer_prefill", 1, 128)  # (stage, prompts, tokens each): a grid point of every engine profile


def probe_s(model, pool, device: str, repeats: int = 10) -> float:
    """Median host seconds to issue the probe layer with this model and KV pool (layer 0, KV slot 0: call it
    before any sequence holds that slot)."""
    from calibrate.benches import EngineBench
    from calibrate.timing import measure  # torch: here, so the simulator's reference_s runs without it

    stage, num_seqs, tokens = POINT
    if pool.max_len < tokens:  # slots too short for the probe's prompt: no probe (and no host_scale from it)
        return float("nan")
    fn = EngineBench(model, pool, device).call(stage, num_seqs, tokens)
    return float(np.median([row["host_s"] for row in measure(fn, device, repeats=repeats, inner=4)]))


def reference_s(profile_dir: Path) -> float:
    """The profile's own time of the probe point: median host seconds of the engine's repeats there."""
    table = load_table(Path(profile_dir))  # the simulator's reader: missing or malformed profiles say so
    stage, x1, x2 = POINT
    rows = table[(table.impl == "engine") & (table.stage == stage) & (table.x1 == x1) & (table.x2 == x2)]
    if rows.empty or "host_s" not in rows:
        raise ValueError(f"{profile_dir}: no engine {stage} host time at {x1} x {x2}, the host probe's point")
    return float(rows.host_s.median())


def run_scale(run_dir: Path, profile_dir: Path) -> float:
    """A run's host scale: its probe (`host_probe_ms` in its summary.json) over the profile's time of the same
    point; an error with a message for a run without one (runs before session 13)."""
    summary = Path(run_dir) / "summary.json"
    probe_ms = json.loads(summary.read_text())["run"].get("host_probe_ms") if summary.exists() else None
    if probe_ms is None or not probe_ms > 0:
        raise SystemExit(f"error: {run_dir}: no host probe in summary.json (runs before session 13): "
                         "--host-scale auto needs one")
    return probe_ms / (1e3 * reference_s(profile_dir))
