"""The calibration tool end to end on CPU with a tiny model: it writes a profile the simulator loads,
and its checks (held-out error, roofline, pass predictions) run on it."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate import check
from calibrate.__main__ import CalibrateConfig, argv_for, compose
from calibrate.benches import balanced_routing
from calibrate.grid import GRIDS, TILE_ROWS, grids_for
from calibrate.measure import _stage_rows
from calibrate.measure import main as measure
from sim.model import ModelSpec
from sim.profile.measured import MeasuredProfile

TINY = ModelSpec(name="tiny-mixtral", num_layers=4, hidden_size=64, intermediate_size=96, num_heads=4,
                 num_kv_heads=2, num_experts=4, top_k=2, vocab_size=128)


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profiles") / "cpu" / "tiny-mixtral-fp32"
    measure(["--model", "tiny-mixtral", "--device", "cpu", "--small", "--repeats", "2", "--inner", "1",
             "--pass-repeats", "2", "--full", "--full-impls", "engine", "--out", str(out)])
    return out


def test_tool_writes_long_tables_and_meta(profile_dir):
    stages = pd.read_csv(profile_dir / "stages.csv")
    assert {"impl", "stage", "x1", "x2", "split", "repeat", "time_s", "host_s", "gpu_s", "latency_s"} <= set(stages)
    assert set(stages.impl) == {"engine", "hf"} and set(stages.split) == {"grid", "heldout"}
    assert stages.groupby(["impl", "stage", "x1", "x2", "split"]).size().min() >= 2  # one row per repeat
    passes = pd.read_csv(profile_dir / "passes.csv")
    assert {1, 2, 4} <= set(passes.layers) and "prefill" in set(passes.phase)
    assert {"merge", "pause_resume", "merge_full"} <= set(pd.read_csv(profile_dir / "events.csv").event)
    decode = passes[passes.phase == "decode"]  # each pass's garbage collections, counted and timed
    assert decode[["gc_s", "gc0", "gc1", "gc2"]].notna().all().all() and (decode.gc_s >= 0).all()
    events = pd.read_csv(profile_dir / "events.csv").set_index("event")
    assert events.time_s["gc_tracked_objects"] > 0 and events.time_s["gc_tracked_objects_full"] > 0
    assert (events.loc[["gc_collect0", "gc_collect2_full"], "time_s"] > 0).all()
    steps = pd.read_csv(profile_dir / "hf_steps.csv")
    assert set(steps.variant) == {"grow", "grow-nogc", "fixed"} and (steps.time_s > 0).all()
    assert steps.groupby(["variant", "batch"]).size().eq(2).all()  # --pass-repeats steps each, warm-up dropped
    meta = json.loads((profile_dir / "meta.json").read_text())
    assert {"gpu", "torch", "transformers", "cuda", "git_revision", "date"} <= set(meta)


@pytest.mark.parametrize("impl", ["engine", "hf"])
def test_simulator_loads_what_the_tool_wrote(profile_dir, impl):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny grid is narrow: lookups extrapolate
        profile = MeasuredProfile(profile_dir, top_k=2, impl=impl)
        errors = check.heldout_errors(profile_dir, impl)
        predictions = check.pass_predictions(profile_dir, TINY, impl)
    assert profile.name.endswith("tiny-mixtral-fp32" + ("" if impl == "engine" else "-hf"))
    assert profile.layer_s(2, 32) > 0 and (errors.error_pct >= 0).all()
    if impl == "engine":
        assert set(predictions.index.get_level_values("phase")) == {"decode", "prefill"}


def test_balanced_routing_spreads_pairs_evenly():
    experts = balanced_routing(3, num_experts=8, top_k=2, device="cpu")
    assert experts.tolist() == [[0, 1], [2, 3], [4, 5]]  # 3 tokens -> 6 distinct experts


def test_hydra_entry_composes_overrides_into_tool_arguments():
    config = compose(["model=qwen3-moe-30b-a3b", "device=cpu", "repeats=3", "full=true", "small=true"])
    assert config == CalibrateConfig(model="qwen3-moe-30b-a3b", device="cpu", repeats=3, full=True, small=True)
    argv = argv_for(config)
    assert argv[argv.index("--model") + 1] == "qwen3-moe-30b-a3b" and "--full" in argv and "--small" in argv
    assert argv[argv.index("--out") + 1].endswith("calibrate/profiles/cpu/qwen3-moe-30b-a3b-fp32")


@pytest.mark.parametrize("experts, top_k", [(8, 2), (128, 8)])
def test_expert_grids_hold_both_sides_of_each_tile_step(experts, top_k):
    grids = grids_for(experts, top_k)
    for stage, rows_per_token in (("expert", 1.0), ("experts_layer", top_k / experts)):
        grid = {t for t, _ in grids[stage]["grid"]}
        heldout = {t for t, _ in grids[stage]["heldout"]}
        assert not grid & heldout
        for m in (1, 2, 3):  # one row past the 128-, 256-, 384-row boundaries, unless one is held out
            boundary = m * TILE_ROWS / rows_per_token
            after = math.ceil((m * TILE_ROWS + 1) / rows_per_token)
            assert (after in grid) == (int(boundary) not in heldout)
            # the first count that gives every expert a row past the boundary
            assert after * rows_per_token >= m * TILE_ROWS + 1 > (after - 1) * rows_per_token
    assert 2564 not in {t for t, _ in grids_for(8, 2)["experts_layer"]["grid"]}  # 2,560 tokens is held out
    assert grids_for(8, 2) == GRIDS


class _CountingBench:
    impl, device = "fake", "cpu"

    def __init__(self):
        self.calls = []

    def call(self, stage, x1, x2):
        self.calls.append((x1, x2))
        return lambda: None


def test_stage_points_are_timed_in_size_order_over_sweeps():
    bench = _CountingBench()
    splits = {"grid": [(1, 0), (4, 0)], "heldout": [(2, 0)]}
    rows = pd.DataFrame(_stage_rows(bench, "router", splits, repeats=5, inner=1, sweeps=2))
    assert bench.calls == [(1, 0), (2, 0), (4, 0)] * 2  # held-out point between its neighbours, twice
    assert rows.groupby("x1").repeat.apply(sorted).map(list).tolist() == [[0, 1, 2, 3, 4]] * 3
    assert rows.set_index("x1").split.to_dict() == {1: "grid", 2: "heldout", 4: "grid"}


def test_embed_gets_ten_times_the_repeats_for_its_mean():
    rows = pd.DataFrame(_stage_rows(_CountingBench(), "embed", {"grid": [(1, 0)]}, repeats=4, inner=1, sweeps=2))
    assert sorted(rows.repeat) == list(range(40))


def test_embed_grid_holds_both_sides_of_its_steps():
    seqs = {x for x, _ in GRIDS["embed"]["grid"]}
    assert {14, 15, 16, 17} <= seqs  # the layout copy's 1 KiB step and the gather's kernel switch
    assert not seqs & {x for x, _ in GRIDS["embed"]["heldout"]}


def test_whole_layers_are_checked_against_the_composition_not_pooled(profile_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = check.layer_checks(profile_dir, TINY, "engine")
        summary = check.heldout_summary(profile_dir, "engine")
        pooled = check.heldout_errors(profile_dir, "engine", "gpu_s")
    assert set(layers.stage) == {"layer_decode", "layer_prefill"} and (layers.composed_ms > 0).all()
    interpolated = pooled[~pooled.stage.isin(check.NOT_INTERPOLATED)].error_pct
    assert summary.loc["all", ("gpu", "max")] == pytest.approx(interpolated.max())
    read = pooled[pooled.stage.isin(check.READ["gpu_s"])].error_pct
    assert summary.loc["read", ("gpu", "median")] == pytest.approx(read.median())


def test_embeddiag_times_each_part_and_both(capsys):
    from calibrate import embeddiag
    embeddiag.main(["--device", "cpu", "--repeats", "2", "--tokens", "4"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert [r[1] for r in rows] == ["layout", "gather", "both"]
    assert all(r[0] == "4" and len(r) == 4 and all(float(v) > 0 for v in r[2:]) for r in rows)


def test_prefill_passes_are_timed_both_ways_and_checked_against_the_composition(profile_dir, tmp_path):
    from calibrate import prefillpass
    directory = tmp_path / profile_dir.name
    shutil.copytree(profile_dir, directory)
    prefillpass.main(["--model", "tiny-mixtral", "--device", "cpu", "--layers", "2", "--repeats", "2",
                      "--seqs", "1", "2", "--lengths", "8", "16", "--routing", "--out", str(directory)])
    table = pd.read_csv(directory / "prefill_passes.csv")
    assert table.groupby(["mode", "seqs", "tokens"]).size().to_dict() == {
        (mode, seqs, tokens): 2 for mode in ("whole", "stepped") for seqs in (1, 2) for tokens in (8, 16)}
    assert (table[["layer_s", "issue_s"]] > 0).all().all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = check.prefill_pass_checks(directory, TINY)
    assert list(checked.index) == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert (checked["composed ms"] > 0).all() and checked["composed / whole %"].notna().all()
    routing = pd.read_csv(directory / "prefill_routing.csv")
    assert routing.groupby(["seqs", "tokens"]).layer.apply(sorted).map(list).tolist() == [[0, 1]] * 4  # every layer
    assert (routing.max_over_mean >= 1).all() and routing.active.between(1, TINY.num_experts).all()
    ratios = check.routing_checks(directory)
    assert list(ratios.index) == [8, 16, 32] and (ratios.own_over_balanced > 0).all()  # seqs x tokens = 8 twice


def test_timed_passes_count_the_collections_inside_them():
    import gc

    from calibrate.passes import timed_gc

    rows = timed_gc(lambda: gc.collect(1), "cpu", repeats=3, warmup=0)
    assert [(r["gc0"], r["gc1"], r["gc2"]) for r in rows] == [(0, 1, 0)] * 3
    assert all(r["gc_s"] > 0 and r["time_s"] >= r["gc_s"] for r in rows)


@pytest.mark.parametrize(("probes", "best"), [
    ({-1: [10, 20], 0: [9, 9], 1: [8, 30]}, 0),   # 1 is fastest at its median but slow at times
    ({-1: [10, 11], 0: [12, 12], 1: [10, 14]}, -1),  # no core beats the scheduler's choice
    ({0: [12, 13], 3: [11, 12]}, 3),               # no unpinned probe: the steadiest core
])
def test_host_pin_picks_the_core_whose_worst_round_is_fastest(probes, best):
    from calibrate.hostpin import best_cpu

    table = pd.DataFrame([{"round": r, "cpu": cpu, "issue_us": t} for cpu, times in probes.items()
                          for r, t in enumerate(times)])
    assert best_cpu(table) == best


def test_measure_rejects_a_bad_pin(capsys):
    with pytest.raises(SystemExit) as stop:
        measure(["--model", "tiny-mixtral", "--device", "cpu", "--pin", "fast", "--out", "/tmp/unused"])
    assert stop.value.code == 2 and "--pin must be auto, none or a CPU number" in capsys.readouterr().err


def test_some_stages_alone_without_passes(tmp_path, capsys):
    """`--stages ... --no-passes` (a stage to splice into a profile): those stages' grids only; an unknown stage
    is refused with the list of known ones."""
    out = tmp_path / "run"
    measure(["--model", "tiny-qwen3-moe", "--device", "cpu", "--small", "--impls", "engine", "--repeats", "2",
             "--inner", "1", "--sweeps", "1", "--stages", "attention_prefill", "attention_prefill_varlen",
             "attention_prefill_lean", "--no-passes", "--out", str(out)])
    stages = pd.read_csv(out / "stages.csv")
    assert set(stages.stage) == {"attention_prefill", "attention_prefill_varlen", "attention_prefill_lean"}
    assert set(stages.impl) == {"engine"}
    assert not (out / "passes.csv").exists() and not (out / "events.csv").exists()
    with pytest.raises(SystemExit) as stop:
        measure(["--model", "tiny-mixtral", "--device", "cpu", "--stages", "attention", "--out", str(out)])
    assert stop.value.code == 2 and "no such stage attention (stages: attention_decode" in capsys.readouterr().err


def test_heldout_noise_is_half_the_split_half_difference(tmp_path):
    """A held-out router point whose later sweeps ran at twice the earlier ones' time: its median is 1.5 ms,
    its halves' medians 1 and 2 ms, so its noise is 50 x 1 / 1.5 = 33.3%; its interpolated time is exact
    at the grid's 1 ms, an error of 33.3% too, and the host probes' phases are summarised in run order."""
    rows = [{"impl": "engine", "stage": "router", "x1": x, "x2": 0, "split": "grid", "repeat": r,
             "time_s": 1e-3, "host_s": 1e-3, "gpu_s": 1e-3} for x in (1, 100) for r in range(10)]
    rows += [{"impl": "engine", "stage": "router", "x1": 10, "x2": 0, "split": "heldout", "repeat": r,
              "time_s": t, "host_s": t, "gpu_s": t} for r, t in enumerate([1e-3] * 5 + [2e-3] * 5)]
    pd.DataFrame(rows).to_csv(tmp_path / "stages.csv", index=False)
    errors = check.heldout_errors(tmp_path, "engine", "host_s")
    assert errors.noise_pct.tolist() == pytest.approx([100 / 3]) and errors.error_pct.tolist() == pytest.approx([100 / 3])
    summary = check.noise_summary(tmp_path, "engine")
    assert summary.loc["gpu", "points > 10%"] == 1 and summary.loc["host", "points with noise > 5%"] == 1
    pd.DataFrame({"label": ["engine router", "engine passes 1", "engine full decode"], "at_s": [0, 5, 9],
                  "issue_us": [6.0, 8.0, 7.0]}).to_csv(tmp_path / "host_probe.csv", index=False)
    steadiness = check.host_steadiness(tmp_path)
    assert steadiness.index.tolist() == ["stage grids", "calibration passes", "full passes"]
    assert steadiness["median"].tolist() == [6.0, 8.0, 7.0]


@pytest.mark.parametrize("held, spread, verdict", [
    (1.0, 0.00, "within (90%)"),   # steady repeats, exactly on the line: shown within 10%
    (1.5, 0.00, "over (90%)"),     # steady repeats, 50% off the line: shown over
    (1.0, 0.60, "cannot tell"),    # on the line on average, but repeats 0.4-1.6x: 10 of them cannot tell
])
def test_heldout_resolution_tells_over_from_within_from_noise(tmp_path, held, spread, verdict):
    """A router grid at 1 ms (steady) and one held-out point: its repeats decide what the run can show."""
    rows = [{"impl": "engine", "stage": "router", "x1": x, "x2": 0, "split": "grid", "repeat": r,
             "time_s": 1e-3, "host_s": 1e-3, "gpu_s": 1e-3} for x in (1, 100) for r in range(10)]
    times = 1e-3 * held * (1 + spread * np.linspace(-1, 1, 10))
    rows += [{"impl": "engine", "stage": "router", "x1": 10, "x2": 0, "split": "heldout", "repeat": r,
              "time_s": t, "host_s": t, "gpu_s": t} for r, t in enumerate(times)]
    pd.DataFrame(rows).to_csv(tmp_path / "stages.csv", index=False)
    result = check.heldout_resolution(tmp_path, "engine", "host_s", draws=50)
    assert result["points"] == 1 and result[verdict] == 1
    assert result["over (90%)"] + result["within (90%)"] + result["cannot tell"] == 1


def test_the_host_probe_is_a_grid_point_of_every_engine_profile(tmp_path):
    """calibrate.hostspeed: the probe's point is read from a profile's stages (an error where it is missing),
    and a KV pool too short for its prompt gives no probe."""
    import torch

    from calibrate.hostspeed import POINT, probe_s, reference_s
    from real.kv import KVPool
    from real.model import build_model, preset_config
    from sim.profile.select import PROFILES_DIR
    for gpu in ("h100", "h200"):
        assert 1e-4 < reference_s(PROFILES_DIR / gpu / "mixtral-8x7b-bf16") < 1e-2
    stage, x1, x2 = POINT
    pd.DataFrame([{"impl": "engine", "stage": stage, "x1": x1, "x2": x2 * 2, "split": "grid", "repeat": 0,
                   "time_s": 1e-3, "host_s": 1e-3}]).to_csv(
        tmp_path / "stages.csv", index=False)
    with pytest.raises(ValueError, match="host probe"):
        reference_s(tmp_path)
    model = build_model(preset_config("tiny-mixtral"), "cpu", torch.float32)
    short = KVPool.allocate_for(model.config, 2, x2 // 2, "cpu", torch.float32)
    assert math.isnan(probe_s(model, short, "cpu"))
    assert probe_s(model, KVPool.allocate_for(model.config, 2, x2, "cpu", torch.float32), "cpu", repeats=2) > 0
