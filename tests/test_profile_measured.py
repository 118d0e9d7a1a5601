"""Measured profiles: loading, interpolation, extrapolation warning, measured overheads, malformed
files rejected with a message, the scaled kind, and the committed GPU profiles."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.base import AttentionLoad
from sim.profile.derive import decode_step_s
from sim.profile.measured import MIN_GRAPH_ROWS, MeasuredProfile, MeasuredProfileError, point_times
from sim.profile.select import PROFILES_DIR, ProfileError, ProfileSpec, build_profile

GRID = {"attention_decode": [(b, c) for b in (1, 4, 16) for c in (100, 1000)],
        "attention_prefill": [(n, p) for n in (1, 4) for p in (10, 100)],
        "router": [(t, 0) for t in (1, 10, 100)], "expert": [(t, 0) for t in (1, 10, 100)],
        "experts_layer": [(t, 0) for t in (1, 10, 100)], "lm_head": [(n, 0) for n in (1, 10, 100)]}


def cost_s(x1: float, x2: float) -> float:
    """Every synthetic stage: 1 ms + 1 us per unit of x1 + 2 us per unit of x2."""
    return 1e-3 + 1e-6 * x1 + 2e-6 * x2


def synthetic(tmp_path: Path, passes: bool = False, **edits) -> Path:
    rows = [{"impl": "engine", "stage": stage, "x1": x1, "x2": x2, "split": "grid", "repeat": r,
             "time_s": cost_s(x1, x2) + 1e-7 * r, "host_s": cost_s(x1, x2), "gpu_s": 0.5 * cost_s(x1, x2)}
            for stage, pts in GRID.items() for x1, x2 in pts for r in range(3)]
    table = pd.DataFrame(rows)
    for column, value in edits.items():
        table.loc[0, column] = value
    tmp_path.mkdir(exist_ok=True)
    table.to_csv(tmp_path / "stages.csv", index=False)
    if passes:  # per layer: stages + 2 x 50 us; per pass: one layer + head + 300 us
        layer = lambda b: cost_s(b, 100) + cost_s(b, 0) * 2 + 2 * 50e-6
        one = lambda b: layer(b) + cost_s(b, 0) + 1e-7 + 300e-6
        pd.DataFrame([{"impl": "engine", "layers": n, "phase": "decode", "batch": b, "context": 100, "repeat": 0,
                       "time_s": one(b) + (n - 1) * layer(b)} for n in (1, 2) for b in (1, 4, 16)]
                     ).to_csv(tmp_path / "passes.csv", index=False)
        pd.DataFrame([{"event": "merge", "repeat": 0, "time_s": 4e-4}, {"event": "pause_resume", "repeat": 0,
                      "time_s": 2e-4}]).to_csv(tmp_path / "events.csv", index=False)
    return tmp_path


def test_interpolates_piecewise_linearly(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path), clock="time_s")
    assert p.router_s(10) == pytest.approx(cost_s(10, 0) + 1e-7)
    assert p.router_s(30) == pytest.approx(cost_s(30, 0) + 1e-7)  # exact for a cost linear in size
    decode = p.attention_s(AttentionLoad(num_decode_seqs=7, decode_ctx_tokens=7 * 550))
    assert decode == pytest.approx(cost_s(7, 550) + 1e-7)  # bilinear between grid points
    prefill = p.attention_s(AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=100, prefill_sq_tokens=2 * 50**2))
    assert prefill == pytest.approx(cost_s(2, 50) + 1e-7)
    loads = np.array([[10, 10, 0, 0]])  # 10 tokens x top-2 -> the layer's grouped time, split by load
    assert p.experts_s(loads).sum() == pytest.approx(cost_s(10, 0) + 1e-7)
    assert p.experts_s(loads)[0, 2] == 0


def test_a_point_is_its_median_and_embed_the_trimmed_mean_of_its_two_modes():
    repeats = [9e-6] * 4 + [17e-6] * 5 + [2e-3]  # two modes and a repeat the host held up
    rows = pd.DataFrame([{"stage": stage, "x1": 32, "x2": 0, "time_s": t} for stage in ("router", "embed")
                         for t in repeats])
    times = point_times(rows, "time_s")
    assert times[("router", 32, 0)] == pytest.approx(17e-6)  # robust to the odd slow repeat
    assert times[("embed", 32, 0)] == pytest.approx((3 * 9e-6 + 5 * 17e-6) / 8)  # lowest and highest left out


def test_clock_column_selects_the_timing(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path), clock="gpu_s")
    assert p.router_s(10) == pytest.approx(0.5 * cost_s(10, 0))
    with pytest.raises(MeasuredProfileError, match="no latency_s column"):
        MeasuredProfile(tmp_path, clock="latency_s")
    pd.read_csv(tmp_path / "stages.csv").drop(columns=["host_s"]).to_csv(tmp_path / "stages.csv", index=False)
    with pytest.raises(MeasuredProfileError, match="no host_s column"):
        MeasuredProfile(tmp_path)  # the pipelined clock needs host and GPU times


def test_warns_once_per_stage_when_extrapolating(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path), clock="time_s")
    with pytest.warns(UserWarning, match="router: 1000 is outside the measured grid"):
        beyond = p.router_s(1000)
    assert beyond == pytest.approx(cost_s(1000, 0) + 1e-7, rel=1e-3)  # linear past the top
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.router_s(2000)  # warned once per stage, not on every call
    with pytest.warns(UserWarning, match="attention_decode"):
        p.attention_s(AttentionLoad(num_decode_seqs=4, decode_ctx_tokens=4 * 5000))


def test_pipelined_layer_is_the_slower_of_host_and_gpu_paths(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path))  # host = time = 2 x gpu: host-bound everywhere
    layer = p.layer_s(4, 100)
    assert layer == pytest.approx(cost_s(4, 100) + 2 * cost_s(4, 0), rel=1e-3)
    table = pd.read_csv(tmp_path / "stages.csv")
    table["gpu_s"] = 3 * table.host_s  # now GPU-bound: the layer is the GPU path
    table.to_csv(tmp_path / "stages.csv", index=False)
    p = MeasuredProfile(tmp_path)
    assert p.layer_s(4, 100) == pytest.approx(3 * layer, rel=1e-3)
    assert p.router_s(4) == pytest.approx(3 * cost_s(4, 0))  # router and experts: their device time


def test_stage_overhead_from_a_measured_decode_layer(tmp_path):
    directory = synthetic(tmp_path)
    table = pd.read_csv(directory / "stages.csv")
    layer = [{"impl": "engine", "stage": "layer_decode", "x1": b, "x2": 512, "split": "grid", "repeat": 0,
              "time_s": cost_s(b, 512) + 2 * cost_s(b, 0) + 2 * 80e-6, "gpu_s": 1e-4} for b in (1, 4)]
    for row in layer:
        row["host_s"] = row["time_s"] + 1e-5 * row["x1"]  # host-bound: issued as fast as it runs
    pd.concat([table, pd.DataFrame(layer)]).to_csv(directory / "stages.csv", index=False)
    p = MeasuredProfile(directory)  # pipelined: the host path needs 80 us per stage to explain the layer
    assert p.stage_overhead_s == pytest.approx(80e-6, rel=1e-2)
    assert p.overheads.stage_s == 0  # carried by attention, so the layer total stays exact
    # a decode layer's host path is the whole layer's measured issue time, at any context
    assert p.layer_s(4, 512) == pytest.approx(layer[1]["host_s"], rel=1e-3)
    assert p.layer_s(4, 100) == pytest.approx(layer[1]["host_s"], rel=1e-3)
    # a prefill layer's: its stages' issue times plus the per-stage work
    prefill = AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=200, prefill_sq_tokens=2 * 100**2)
    host = cost_s(2, 100) + 2 * cost_s(200, 0)  # attention + router + experts issue times (2 x GPU times)
    charged = p.attention_s(prefill) + p.router_s(200) + float(p.device_curves["experts_layer"](200))
    assert charged == pytest.approx(host + 2 * 80e-6, rel=1e-3)


def test_overheads_come_from_the_measured_passes_and_events(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path, passes=True), clock="time_s")
    assert p.overheads.stage_s == pytest.approx(50e-6, rel=1e-2)
    assert p.overheads.iteration_s == pytest.approx(300e-6, rel=1e-2)
    assert p.overheads.merge_s == pytest.approx(4e-4)
    assert p.overheads.pause_s + p.overheads.resume_s == pytest.approx(2e-4)
    assert MeasuredProfile(synthetic(tmp_path / "bare")).overheads.stage_s == 0


@pytest.mark.parametrize("edit,message", [
    ({"time_s": -1.0}, "non-positive"), ({"stage": "warp_drive"}, "unknown stage"), ({"x1": np.nan}, "NaN"),
    ({"gpu_s": 0.0}, "non-positive"),
])
def test_malformed_profiles_are_rejected(tmp_path, edit, message):
    with pytest.raises(MeasuredProfileError, match=message):
        MeasuredProfile(synthetic(tmp_path, **edit))


def test_missing_columns_and_stages_are_named(tmp_path):
    directory = synthetic(tmp_path)
    table = pd.read_csv(directory / "stages.csv")
    table.drop(columns=["split"]).to_csv(directory / "stages.csv", index=False)
    with pytest.raises(MeasuredProfileError, match="missing column.*split"):
        MeasuredProfile(directory)
    table[table.stage != "router"].to_csv(directory / "stages.csv", index=False)
    with pytest.raises(MeasuredProfileError, match="no engine measurements for router"):
        MeasuredProfile(directory)
    with pytest.raises(MeasuredProfileError, match="no hf measurements"):
        MeasuredProfile(synthetic(tmp_path / "other"), impl="hf")


def test_missing_profile_gives_a_clear_error(tmp_path):
    spec = ProfileSpec(kind="measured", directory=str(tmp_path / "nowhere"))
    with pytest.raises(ProfileError, match="no profile at"):
        build_profile(spec, ModelSpec(), HardwareSpec())


def test_scaled_kind_wraps_a_measured_base(tmp_path):
    model = ModelSpec(num_experts=4, num_layers=2)
    base = {"directory": str(synthetic(tmp_path, passes=True)), "clock": "time_s"}
    profile = build_profile(ProfileSpec(kind="scaled", base=base, decode_step_ms=50.0), model, HardwareSpec())
    assert decode_step_s(profile, model, 32, 512) == pytest.approx(0.050)
    assert profile.name.startswith("scaled(measured/")
    doubled = build_profile(ProfileSpec(kind="scaled", base=base, factor=2.0), model, HardwareSpec())
    assert doubled.overheads.merge_s == pytest.approx(8e-4)
    with pytest.raises(ProfileError, match="factor or decode_step_ms"):
        build_profile(ProfileSpec(kind="scaled", base=base), model, HardwareSpec())


COMMITTED = sorted(p.parent for p in PROFILES_DIR.glob("*/*/stages.csv"))


@pytest.mark.parametrize("directory", COMMITTED, ids=lambda d: f"{d.parent.name}/{d.name}")
@pytest.mark.parametrize("impl", ["engine", "hf", "engine-graphs"])
def test_committed_profiles_load_and_predict_a_plausible_decode_step(directory, impl):
    profile = MeasuredProfile(directory, impl=impl)
    model = ModelSpec(num_experts=8 if "mixtral" in directory.name else 128,
                      top_k=2 if "mixtral" in directory.name else 8)
    assert {"gpu", "torch", "transformers", "cuda", "git_revision", "date"} <= set(profile.meta)
    assert 0.005 < decode_step_s(profile, model, 32, 512) < 1.0


def test_padded_groups_cost_their_longest_sequence(tmp_path):
    p = MeasuredProfile(synthetic(tmp_path), clock="time_s")
    mixed = AttentionLoad(num_prefill_seqs=4, num_prefill_tokens=130, prefill_sq_tokens=3 * 10**2 + 100**2,
                          prefill_max_tokens=100, num_decode_seqs=4, decode_ctx_tokens=1300, decode_max_ctx=1000)
    assert p.attention_s(mixed) == pytest.approx(cost_s(4, 100) + cost_s(4, 1000), rel=1e-3)  # padded
    unknown = AttentionLoad(num_decode_seqs=4, decode_ctx_tokens=400)  # no maxima: the mean context
    assert p.attention_s(unknown) == pytest.approx(cost_s(4, 100), rel=1e-3)


def test_varlen_prefill_prices_the_unpadded_curve_at_the_packed_tokens(tmp_path):
    """engine.varlen_prefill: the prefill group at the attention_prefill_varlen curve, its tokens at their
    root-mean-square length, no padding; the decode group as before. A profile without the curve is refused."""
    directory = synthetic(tmp_path)
    stages = pd.read_csv(directory / "stages.csv")
    varlen = stages[stages.stage == "attention_prefill"].assign(stage="attention_prefill_varlen",
                                                                 time_s=lambda t: 0.5 * t.time_s)
    pd.concat([stages, varlen]).to_csv(directory / "stages.csv", index=False)
    mixed = AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=100, prefill_sq_tokens=2 * 50**2,
                          prefill_max_tokens=90, num_decode_seqs=4, decode_ctx_tokens=1300, decode_max_ctx=1000)
    padded = MeasuredProfile(directory, clock="time_s").attention_s(mixed)
    unpadded = MeasuredProfile(directory, clock="time_s", varlen_prefill=True).attention_s(mixed)
    assert padded == pytest.approx(cost_s(2, 90) + cost_s(4, 1000), rel=1e-3)
    assert unpadded == pytest.approx(0.5 * cost_s(2, 50) + cost_s(4, 1000), rel=1e-3)
    with pytest.raises(MeasuredProfileError, match="attention_prefill_varlen.*calibrate.splice"):
        MeasuredProfile(synthetic(tmp_path / "bare"), clock="time_s", varlen_prefill=True)


def test_lean_attention_prices_a_stepped_prefill_group_at_the_lean_curve(tmp_path):
    """engine.lean_attention (with varlen_prefill): a stepped layer prices the prefill group at attention_prefill_lean
    (here its issue time 0.4 ms under varlen's, its device time 0.1 ms); without varlen nothing changes; a
    profile without the lean curve is refused with the stage to calibrate."""
    directory = synthetic(tmp_path)
    stages = pd.read_csv(directory / "stages.csv")
    prefill = stages[stages.stage == "attention_prefill"]
    lean = prefill.assign(stage="attention_prefill_lean", host_s=lambda t: t.host_s - 4e-4,
                          gpu_s=lambda t: t.gpu_s - 1e-4)
    pd.concat([stages, prefill.assign(stage="attention_prefill_varlen"), lean]).to_csv(directory / "stages.csv",
                                                                                        index=False)
    load = AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=100, prefill_sq_tokens=2 * 50**2,
                         prefill_max_tokens=90, num_decode_seqs=4, decode_ctx_tokens=1300, decode_max_ctx=1000)
    host, gpu = MeasuredProfile(directory, varlen_prefill=True).layer_paths(load)
    lean_host, lean_gpu = MeasuredProfile(directory, varlen_prefill=True, lean_attention=True).layer_paths(load)
    assert host - lean_host == pytest.approx(4e-4, rel=1e-6)
    assert gpu - lean_gpu == pytest.approx(1e-4, rel=1e-6)
    padded = MeasuredProfile(directory).layer_paths(load)
    assert MeasuredProfile(directory, lean_attention=True).layer_paths(load) == padded
    # a graph-replayed layer attends over the pool, not through stepped attention: priced as varlen either way
    replayed = {lean: MeasuredProfile(directory, impl="engine-graphs", pass_graphs=True, varlen_prefill=True,
                                      lean_attention=lean) for lean in (False, True)}
    assert replayed[True].replays(load) and replayed[True].attention_s(load) == replayed[False].attention_s(load)
    bare = synthetic(tmp_path / "varlen only")
    pd.concat([stages, prefill.assign(stage="attention_prefill_varlen")]).to_csv(bare / "stages.csv", index=False)
    with pytest.raises(MeasuredProfileError, match=r"no engine measurements for attention_prefill_lean "
                                                   r"\(calibrate with --stages attention_prefill_lean and splice"):
        MeasuredProfile(bare, varlen_prefill=True, lean_attention=True)


def test_serving_gaps_replace_the_bare_loop_overheads(tmp_path):
    directory = synthetic(tmp_path, passes=True)
    events = pd.read_csv(directory / "events.csv")
    served = [{"event": "server_pass", "repeat": r, "time_s": 7e-4 + 1e-6 * r} for r in range(5)]
    served += [{"event": "server_switch", "repeat": r, "time_s": 5e-4} for r in range(5)]
    pd.concat([events, pd.DataFrame(served)]).to_csv(directory / "events.csv", index=False)
    p = MeasuredProfile(directory, clock="time_s")
    assert p.overheads.iteration_s == pytest.approx(7.02e-4)
    assert (p.overheads.pause_s, p.overheads.resume_s, p.overheads.merge_s) == (pytest.approx(5e-4), 0.0, 0.0)
    # the same events kept compressed (a profile whose serving runs give tens of thousands of rows)
    pd.read_csv(directory / "events.csv").to_csv(directory / "events.csv.gz", index=False)
    (directory / "events.csv").unlink()
    assert MeasuredProfile(directory, clock="time_s").overheads == p.overheads


@pytest.mark.parametrize("tokens,longest,share,cut", [
    (40, 20, 0.5, 0.5 * 40e-6),  # 4 x 20 padded, 40 real: the projections of 40 padding tokens come out
    (80, 20, 0.5, 0.0),  # no padding
    (40, 20, 0.0, 0.0),  # share 0: the padded call as measured
])
def test_padding_projection_work_is_taken_out(tmp_path, tokens, longest, share, cut):
    """The engine pads attention to the longest prompt but projects only the packed tokens."""
    p = MeasuredProfile(synthetic(tmp_path), clock="time_s", projection_share=share)
    load = AttentionLoad(num_prefill_seqs=4, num_prefill_tokens=tokens, prefill_sq_tokens=tokens * longest,
                         prefill_max_tokens=longest)
    assert p.attention_s(load) == pytest.approx(cost_s(4, longest) + 1e-7 - cut, rel=1e-6)


def test_graph_decode_layers_cost_what_the_graph_passes_measured(tmp_path):
    """engine-graphs: a decode layer is the graph passes' per-layer slope, not the stages' summed GPU time."""
    directory = synthetic(tmp_path)
    composed = lambda b: 0.5 * (cost_s(b, 512) + 2 * cost_s(b, 0))
    gap = {1: 1e-4, 4: -5e-5, 16: -1e-4}  # measured minus composed, per layer
    pd.DataFrame([{"impl": "engine-graphs", "layers": n, "phase": "decode", "batch": b, "context": 512,
                   "repeat": 0, "time_s": 1e-3 + n * (composed(b) + gap[b])} for n in (2, 4) for b in gap]
                 ).to_csv(directory / "passes.csv", index=False)
    p = MeasuredProfile(directory, impl="engine-graphs")
    for batch, extra in gap.items():
        load = AttentionLoad(num_decode_seqs=batch, decode_ctx_tokens=batch * 512, decode_max_ctx=512)
        layer = p.attention_s(load) + p.router_s(batch) + p.experts_s(np.array([[batch, batch, 0, 0]])).sum()
        assert layer == pytest.approx(composed(batch) + extra, rel=1e-6)


def test_served_graph_layers_replace_the_calibration_passes_fix(tmp_path):
    """A serving profile whose events have `graph_layer` rows (calibrate.serving) prices a replayed decode layer at
    its stages plus their median per batch size, interpolated between sizes; a batch size with fewer than
    MIN_GRAPH_ROWS rows is left out; a profile not priced for serving keeps the calibration passes' fix."""
    directory = synthetic(tmp_path)
    composed = lambda b: 0.5 * (cost_s(b, 512) + 2 * cost_s(b, 0))
    pd.DataFrame([{"impl": "engine-graphs", "layers": n, "phase": "decode", "batch": b, "context": 512,
                   "repeat": 0, "time_s": 1e-3 + n * (composed(b) + 1e-4)} for n in (2, 4) for b in (1, 4, 16)]
                 ).to_csv(directory / "passes.csv", index=False)
    served = {1: -2e-4, 16: 3e-4}
    rows = [{"event": "graph_layer", "repeat": r, "time_s": fix + 1e-6 * (r % 3 - 1), "batch": b}
            for b, fix in served.items() for r in range(MIN_GRAPH_ROWS)]
    rows += [{"event": "graph_layer", "repeat": r, "time_s": 5e-3, "batch": 8} for r in range(MIN_GRAPH_ROWS - 1)]
    rows += [{"event": "merge", "repeat": 0, "time_s": 4e-4}]  # no batch: another event
    pd.DataFrame(rows).to_csv(directory / "events.csv", index=False)
    expected = {1: -2e-4, 4: -2e-4 + 3 / 15 * 5e-4, 16: 3e-4}  # 8's nine rows are too few to count
    for serving, fixes in ((True, expected), (False, {1: 1e-4, 4: 1e-4, 16: 1e-4})):
        p = MeasuredProfile(directory, impl="engine-graphs", serving=serving)
        for batch, fix in fixes.items():
            load = AttentionLoad(num_decode_seqs=batch, decode_ctx_tokens=batch * 512, decode_max_ctx=512)
            layer = p.attention_s(load) + p.router_s(batch) + p.experts_s(np.array([[batch, batch, 0, 0]])).sum()
            assert layer == pytest.approx(composed(batch) + fix, rel=1e-6), (serving, batch)
            assert p.replayed_stages_s(load) == pytest.approx(composed(batch), rel=1e-6)
            assert p.replayed_layer_s(load) == pytest.approx(layer, rel=1e-6)


def test_server_layer_adds_to_the_host_path_of_stepped_layers(tmp_path):
    directory = synthetic(tmp_path)  # host = 2 x gpu: every layer host-bound
    before = MeasuredProfile(directory).layer_s(4, 100)
    pd.DataFrame([{"event": "server_layer", "repeat": r, "time_s": 3e-4 + 1e-6 * r} for r in range(5)]
                 ).to_csv(directory / "events.csv", index=False)
    p = MeasuredProfile(directory)
    assert np.mean(p.server_layer) == pytest.approx(3.02e-4)  # the mean (here also the median)
    assert p.layer_s(4, 100) == pytest.approx(before + 3.02e-4)
    assert MeasuredProfile(directory, impl="engine", clock="time_s").server_layer == ()  # pipelined only
    assert MeasuredProfile(directory, serving=False).server_layer == ()  # calibrate.check: no server


@pytest.mark.parametrize("host, gpu, expected", [
    (1.0, 0.5, 1.2),  # host-bound: host + mean work
    # near a tie: of the 20 mid-bin quantiles (0.01, 0.03, ..., 0.39), 5 stay under the GPU path (1.1)
    # and 15 add (mean 0.25): (5 x 1.1 + 15 x 1.25) / 20, where the median alone gave 1.2
    (1.0, 1.1, 1.2125),
    (1.0, 2.0, 2.0),  # GPU-bound beyond every draw
])
def test_a_stepped_layer_pays_the_server_work_in_expectation(tmp_path, host, gpu, expected):
    """max(host + x, gpu) averaged over the measured server work x (events quantiles), not at its median."""
    directory = synthetic(tmp_path)
    pd.DataFrame([{"event": "server_layer", "repeat": r, "time_s": x} for r, x in enumerate([0.0, 0.1, 0.2, 0.3, 0.4])]
                 ).to_csv(directory / "events.csv", index=False)
    p = MeasuredProfile(directory)
    assert np.mean(p.server_layer) == pytest.approx(0.2)
    assert p._pipelined(host, gpu) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("charge", "expected_ms"), [(1.0, 1.0 + 1e-3 * 4 + 2e-3 * 100), (0.0, 1.0 + 1e-3 * 4 + 2e-3 * 25),
                                                   (0.5, 1.0 + 1e-3 * 4 + 2e-3 * 62.5)])
def test_padding_charge_prices_that_share_of_the_padded_attention_excess(tmp_path, charge, expected_ms):
    """4 sequences of 100 tokens in all, the longest 100: the padded call is the grid at (4, 100), the
    same sequences at their mean length the grid at (4, 25); the charge prices that share of the gap."""
    from sim.profile.measured import _attention, curves

    fitted = curves(pd.read_csv(synthetic(tmp_path) / "stages.csv"), clock="time_s")
    load = AttentionLoad(num_prefill_seqs=4, num_prefill_tokens=100, prefill_max_tokens=100)
    assert _attention(fitted, load, padded=True, padding_charge=charge) * 1e3 == pytest.approx(expected_ms, rel=1e-3)


@pytest.mark.parametrize(("charge", "expected_ms"), [(1.0, 1.0 + 1e-3 * 4 + 2e-3 * 900),
                                                   (0.0, 1.0 + 1e-3 * 4 + 2e-3 * 300),
                                                   (0.5, 1.0 + 1e-3 * 4 + 2e-3 * 600)])
def test_decode_charge_prices_that_share_of_a_decode_groups_padding(tmp_path, charge, expected_ms):
    """4 decode sequences of 1,200 context tokens in all, the longest 900: the padded call is the grid at
    (4, 900), the same sequences at their mean context the grid at (4, 300)."""
    from sim.profile.measured import _attention, curves

    fitted = curves(pd.read_csv(synthetic(tmp_path) / "stages.csv"), clock="time_s")
    load = AttentionLoad(num_decode_seqs=4, decode_ctx_tokens=1200, decode_max_ctx=900)
    assert _attention(fitted, load, padded=True, decode_charge=charge) * 1e3 == pytest.approx(expected_ms, rel=1e-3)
    unpadded = _attention(fitted, load, padded=False, decode_charge=1.0)  # a variable-length kernel: the mean
    assert unpadded * 1e3 == pytest.approx(1.0 + 1e-3 * 4 + 2e-3 * 300, rel=1e-3)


@pytest.mark.parametrize(("event", "rows", "expected"), [
    ("padding_charge", [0.7, 0.8, 1.4], 0.8),
    ("decode_padding_charge", [0.4, 0.5, 1.2], 0.5),  # a median within its rows' noise still counts
    ("decode_padding_charge", [1.3, 1.5, 2.0], 1.0),  # clipped to [0, 1]
])
def test_serving_profile_reads_each_padding_charge_from_its_events(tmp_path, event, rows, expected):
    """The median of the event's rows, clipped to [0, 1]; a non-serving profile keeps 1."""
    directory = synthetic(tmp_path, passes=True)
    events = pd.read_csv(directory / "events.csv")
    shares = pd.DataFrame({"event": event, "repeat": range(len(rows)), "time_s": rows})
    pd.concat([events, shares]).to_csv(directory / "events.csv", index=False)
    assert getattr(MeasuredProfile(directory, serving=True), event) == pytest.approx(expected)
    assert getattr(MeasuredProfile(directory, serving=False), event) == 1.0


def test_a_whole_pass_layer_costs_the_host_its_stages_and_pass_layer_not_server_layer(tmp_path):
    """pass_paths (sim.pipeline): a stepped layer's host path plus `pass_layer`, which may be negative (a
    faster serving host), and its GPU path without the experts; a graph-replayed decode layer: no host."""
    directory = synthetic(tmp_path)
    load = AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=40, prefill_max_tokens=20)
    host, gpu = MeasuredProfile(directory).layer_paths(load)
    pd.DataFrame([{"event": e, "repeat": r, "time_s": x} for e, xs in
                  (("pass_layer", (-2e-4, -1e-4, 0.0)), ("pass_host", (1e-3,)), ("server_layer", (5e-4,)),
                   ("pass_layer_busy", (2e-3,)),
                   ("pass_queue", (8.6, 9.2, 9.4))) for r, x in enumerate(xs)]).to_csv(directory / "events.csv", index=False)
    p = MeasuredProfile(directory)
    assert (p.pass_layer_s, p.pass_host_s, p.pass_queue_layers) == pytest.approx((-1e-4, 1e-3, 9))
    assert p.pass_busy_extra_s == pytest.approx(2.1e-3)  # busy over idle
    assert p.pass_paths(load) == pytest.approx((host - 1e-4, gpu - 0.5 * cost_s(40, 0)))
    assert MeasuredProfile(synthetic(tmp_path / "bare")).pass_host_s is None  # no serving runs: the iteration overhead
    graphs = MeasuredProfile(directory, impl="engine-graphs")
    decode = AttentionLoad(num_decode_seqs=4, decode_ctx_tokens=400, decode_max_ctx=100)
    assert graphs.pass_paths(decode) == pytest.approx((0.0, graphs.attention_s(decode) + graphs.router_s(4)))
    assert graphs.pass_paths(load) == pytest.approx(p.pass_paths(load))  # prefill: stepped


def test_a_lean_profile_takes_the_serving_hosts_work_that_lean_runs_measured(tmp_path):
    """Lean runs' per-layer host work (calibrate.serving's `<event>_lean`) prices a lean profile's whole-pass and
    stepped layers; a varlen profile keeps the other rows, and a lean one falls back to them where lean runs gave
    none."""
    directory = synthetic(tmp_path)
    stages = pd.read_csv(directory / "stages.csv")
    prefill = stages[stages.stage == "attention_prefill"]
    pd.concat([stages, prefill.assign(stage="attention_prefill_varlen"),
               prefill.assign(stage="attention_prefill_lean")]).to_csv(directory / "stages.csv", index=False)
    rows = (("pass_layer", (1e-3,)), ("pass_layer_lean", (5e-4,)), ("pass_layer_busy", (2e-3,)),
            ("pass_layer_busy_lean", (1.5e-3,)), ("server_layer", (4e-4,)), ("server_layer_lean", (1e-4,)))
    events = pd.DataFrame([{"event": e, "repeat": r, "time_s": x} for e, xs in rows for r, x in enumerate(xs)])
    events.to_csv(directory / "events.csv", index=False)
    varlen = MeasuredProfile(directory, varlen_prefill=True)
    lean = MeasuredProfile(directory, varlen_prefill=True, lean_attention=True)
    assert (varlen.pass_layer_s, varlen.pass_busy_extra_s) == pytest.approx((1e-3, 1e-3))
    assert (lean.pass_layer_s, lean.pass_busy_extra_s) == pytest.approx((5e-4, 1e-3))
    assert varlen.server_layer == pytest.approx((4e-4,) * 20) and lean.server_layer == pytest.approx((1e-4,) * 20)
    load = AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=40, prefill_sq_tokens=2 * 20**2)
    assert lean.pass_paths(load)[0] == pytest.approx(lean.layer_paths(load)[0] + 5e-4)
    assert MeasuredProfile(directory, lean_attention=True).pass_layer_s == pytest.approx(1e-3)  # padded: never lean
    events[~events.event.str.endswith("_lean")].to_csv(directory / "events.csv", index=False)
    assert MeasuredProfile(directory, varlen_prefill=True, lean_attention=True).pass_layer_s == pytest.approx(1e-3)


def test_host_scale_multiplies_every_host_side_cost(tmp_path):
    """A host twice as fast (host_scale 0.5): stepped layers' host paths, the server's per-layer work and the
    whole-pass events halve; GPU paths, the launch queue's depth and the derived overheads stay."""
    directory = synthetic(tmp_path)
    pd.DataFrame([{"event": e, "repeat": r, "time_s": x} for e, xs in
                  (("pass_layer", (3e-4,)), ("pass_host", (1e-3,)), ("server_layer", (5e-4, 7e-4)),
                   ("pass_layer_busy", (2e-3,)), ("pass_queue", (9.0,))) for r, x in enumerate(xs)]
                 ).to_csv(directory / "events.csv", index=False)
    base, fast = MeasuredProfile(directory), MeasuredProfile(directory, host_scale=0.5)
    load = AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=40, prefill_max_tokens=20)
    (host, gpu), (fast_host, fast_gpu) = base.layer_paths(load), fast.layer_paths(load)
    assert (fast_host, fast_gpu) == pytest.approx((0.5 * host, gpu))
    assert fast.server_layer == pytest.approx(tuple(0.5 * x for x in base.server_layer))
    assert (fast.pass_layer_s, fast.pass_host_s, fast.pass_busy_extra_s) == pytest.approx(
        (0.5 * base.pass_layer_s, 0.5 * base.pass_host_s, 0.5 * base.pass_busy_extra_s))
    assert fast.pass_queue_layers == base.pass_queue_layers == 9 and fast.overheads == base.overheads
    graphs = MeasuredProfile(directory, impl="engine-graphs", host_scale=0.5)
    assert graphs.pass_paths(load) == pytest.approx(fast.pass_paths(load))  # its stepped layers scale too
    with pytest.raises(MeasuredProfileError, match="host_scale"):
        MeasuredProfile(directory, host_scale=0.0)


def test_pass_graphs_price_a_mixed_layer_at_its_gpu_path_unpadded(tmp_path):
    """engine.pass_graphs (engine-graphs): a layer with prompts is a replay, one attention call over the KV pool at
    each sequence's own length (prompts at their root-mean-square length, decodes at their mean context) on the GPU
    clock, with no host path; beyond the runner's largest bucket it is stepped as before."""
    directory = synthetic(tmp_path)
    mixed = AttentionLoad(num_prefill_seqs=2, num_prefill_tokens=100, prefill_sq_tokens=2 * 50**2,
                          prefill_max_tokens=90, num_decode_seqs=4, decode_ctx_tokens=1300, decode_max_ctx=1000)
    stepped = MeasuredProfile(directory, impl="engine-graphs")
    graphed = MeasuredProfile(directory, impl="engine-graphs", pass_graphs=True)
    gpu = graphed.curves
    assert graphed.attention_s(mixed) == pytest.approx(gpu["attention_prefill"](2, 50) + gpu["attention_decode"](4, 325))
    assert graphed.attention_s(mixed) < stepped.attention_s(mixed)
    assert graphed.pass_paths(mixed)[0] == 0.0 < stepped.pass_paths(mixed)[0]
    large = AttentionLoad(num_prefill_seqs=10, num_prefill_tokens=5000, prefill_sq_tokens=10 * 500**2,
                          prefill_max_tokens=500)
    assert not graphed.replays(large) and graphed.attention_s(large) == stepped.attention_s(large)
    assert not MeasuredProfile(directory, pass_graphs=True).replays(mixed)  # stage by stage: no graphs at all


@pytest.mark.parametrize("impl, prefill, decode, tokens", [
    ("engine-graphs", 0, 1, 1),
    ("engine-graphs", 0, 3, 4),
    ("engine-graphs", 0, 8, 8),
    ("engine-graphs", 0, 10, 16),  # bucket 16: padding rows run the router and experts too
    ("engine-graphs", 0, 17, 24),
    ("engine-graphs", 0, 64, 64),
    ("engine-graphs", 0, 65, 65),  # past the largest bucket: stepped, unpadded
    ("engine-graphs", 1, 3, 103),  # a layer with a prompt: the pass runner keeps padding rows out of the experts
    ("engine", 0, 10, 10),  # stage by stage: no buckets
])
def test_replayed_decode_layers_run_their_experts_on_the_whole_bucket(tmp_path, impl, prefill, decode, tokens):
    profile = MeasuredProfile(synthetic(tmp_path), impl=impl)
    load = AttentionLoad(num_prefill_seqs=prefill, num_prefill_tokens=100 * prefill, prefill_sq_tokens=10_000 * prefill,
                         num_decode_seqs=decode, decode_ctx_tokens=200 * decode)
    assert profile.expert_tokens(load) == tokens


def test_a_cost_model_draws_a_replayed_decode_batch_at_its_bucket(tmp_path):
    """The simulator's pass of 10 decodes on engine-graphs routes 16 tokens per layer and prices its router at 16."""
    from policies import Batch
    from sim.plan import CostModel
    from sim.routing import ExpertRouter
    from tests.conftest import TOY_MODEL, request

    profile = MeasuredProfile(synthetic(tmp_path), top_k=TOY_MODEL.top_k, impl="engine-graphs")
    costs = CostModel(TOY_MODEL, profile, ExpertRouter(TOY_MODEL.num_layers, TOY_MODEL.num_experts, TOY_MODEL.top_k))
    requests = [request(i, 0.0, 20, 8) for i in range(10)]
    for r in requests:
        r.num_generated_tokens = 1
    batch = Batch(0, requests)
    assert costs.expert_tokens(batch) == 16
    loads, _ = costs.draw(costs.expert_tokens(batch))
    assert (loads.sum(axis=1) == 16 * TOY_MODEL.top_k).all()
    layers = costs.durations(batch, profile.experts_s(loads))[:-1].reshape(TOY_MODEL.num_layers, -1)
    assert layers[0, 1] == pytest.approx(profile.router_s(16))


def test_a_scaled_profile_keeps_its_bases_decode_buckets(tmp_path):
    """A speed factor over an engine-graphs profile still runs 10 replayed decodes' experts on bucket 16; a
    profile with no buckets (the analytic one, the tests' constant one) runs the load's own tokens."""
    from sim.profile.base import expert_tokens
    from sim.profile.select import ScaledProfile
    from tests.conftest import ConstantProfile

    load = AttentionLoad(num_decode_seqs=10, decode_ctx_tokens=2000)
    scaled = ScaledProfile(MeasuredProfile(synthetic(tmp_path), impl="engine-graphs"), 2.0)
    assert scaled.expert_tokens(load) == expert_tokens(scaled, load) == 16
    assert expert_tokens(ConstantProfile(), load) == 10
