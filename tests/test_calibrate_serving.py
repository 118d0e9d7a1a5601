"""calibrate.serving: idle gaps between a serving run's steps become the profile's server_* events."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import calibrate.serving as serving
from calibrate.check import model_spec, profile_model
from calibrate.serving import (
    alone,
    attention_mode,
    busy_rows,
    collect,
    decode_check_report,
    decode_rows,
    gaps,
    layer_check,
    layer_residuals,
    padding_rows,
    pass_rows,
    prefill_steps,
    step_load,
    whole_passes,
    write_events,
)
from sim.profile.base import Overheads


def step(batch_id, num_seqs, kind, begin_s, end_s):
    return {"batch_id": batch_id, "num_seqs": num_seqs, "num_tokens": num_seqs, "longest": 10, "from_layer": 0,
            "to_layer": 1, "kind": kind, "issued_s": begin_s, "begin": 0, "end": 0, "begin_s": begin_s, "end_s": end_s}


STEPS = pd.DataFrame([
    step(0, 2, "advance", 0.000, 0.010),
    step(0, 2, "finish", 0.010, 0.011),
    step(1, 3, "advance", 0.0117, 0.020),  # after a pass: 0.7 ms
    step(2, 1, "advance", 0.0205, 0.030),  # another batch mid-pass (a preemption): 0.5 ms
    step(2, 4, "advance", 0.0301, 0.040),  # the same batch, more sequences (a merge): 0.1 ms
    step(2, 4, "advance", 0.0400, 0.050),  # plain next layer: no event
    step(2, 4, "finish", 0.050, 0.051),
    step(3, 1, "advance", 0.551, 0.560),  # 0.5 s later: the server slept until an arrival, not counted
])


def test_gaps_are_classified_and_sleep_is_left_out():
    rows = gaps(STEPS)
    assert rows.event.tolist() == ["server_pass", "server_switch", "server_merge"]
    assert rows.time_s.tolist() == pytest.approx([7e-4, 5e-4, 1e-4])


def test_write_events_keeps_calibration_rows_and_replaces_server_rows(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    STEPS.to_parquet(run / "steps.parquet")
    profile = tmp_path / "profile"
    profile.mkdir()
    pd.DataFrame([{"event": "merge", "repeat": 0, "time_s": 4e-4},
                  {"event": "server_pass", "repeat": 0, "time_s": 1.0}]).to_csv(profile / "events.csv", index=False)
    table = write_events(profile, collect([run]))
    assert sorted(table.event) == ["merge", "server_merge", "server_pass", "server_switch"]
    assert table[table.event == "server_pass"].time_s.tolist() == pytest.approx([7e-4])
    with pytest.raises(SystemExit, match="no steps.parquet"):
        collect([tmp_path / "nothing"])
    (profile / "events.csv").rename(profile / "events.csv.gz.old")  # a profile keeping its events compressed
    pd.read_csv(profile / "events.csv.gz.old").to_csv(profile / "events.csv.gz", index=False)
    (profile / "events.csv.gz.old").unlink()
    table = write_events(profile, collect([run]))
    written = pd.read_csv(profile / "events.csv.gz")
    assert not (profile / "events.csv").exists() and written.event.tolist() == table.event.tolist()
    assert written.time_s.tolist() == pytest.approx(table.time_s.tolist())


def test_a_switch_that_overlaps_the_paused_batch_costs_nothing():
    """A batch started on an urgent stream begins before the paused batch's queued layer ends."""
    steps = pd.DataFrame([step(0, 8, "advance", 0.000, 0.010), step(1, 1, "advance", 0.004, 0.012)])
    rows = gaps(steps)
    assert rows.event.tolist() == ["server_switch"] and rows.time_s.tolist() == [0.0]


class _FakeProfile:
    """Host path 1 ms + 1 us per token, GPU path 2 us per token: host-bound below 1,000 tokens."""

    def layer_paths(self, load):
        return 1e-3 + 1e-6 * load.num_tokens, 2e-6 * load.num_tokens


def prefill(batch_id, num_seqs, num_tokens, from_layer, per_layer_s, level=0, begin_s=0.0):
    row = step(batch_id, num_seqs, "advance", begin_s, begin_s + per_layer_s)
    return {**row, "num_tokens": num_tokens, "longest": num_tokens // num_seqs, "from_layer": from_layer,
            "to_layer": from_layer + 1, "level": level}


def test_server_layer_is_what_host_bound_prefill_layers_cost_beyond_the_profile():
    steps = pd.DataFrame([
        prefill(0, 2, 400, 0, 1.5e-3, begin_s=0.00),  # host-bound: 1.4 ms composed, 0.1 ms left over
        prefill(0, 2, 400, 1, 1.6e-3, begin_s=0.01),  # 0.2 ms left over
        prefill(0, 3, 401, 2, 9e-3, begin_s=0.02),  # merged (more sequences than at its start): load unknown
        prefill(1, 4, 3000, 0, 7e-3, begin_s=0.04),  # GPU-bound (6 ms GPU path): the host's share is hidden
        prefill(2, 1, 300, 0, 1.5e-3, level=1, begin_s=0.05),  # urgent and alone: kept (0.1 ms)
        {**step(3, 4, "advance", 0.060, 0.061), "level": 0},  # decode: left out
        prefill(4, 1, 300, 0, 9e-3, level=1, begin_s=0.0605),  # shares the GPU with the decode: left out
    ])
    rows = layer_residuals(steps, _FakeProfile())
    assert rows.event.tolist() == ["server_layer"] * 3
    assert rows.time_s.tolist() == pytest.approx([1e-4, 2e-4, 2e-4])


@pytest.mark.parametrize("spans, expected", [
    ([(0, 1), (1, 2), (2, 3)], [True, True, True]),  # back to back on one stream
    ([(0, 2), (1, 3), (4, 5)], [False, False, True]),  # an urgent batch beside a queued layer
    ([(0, 10), (2, 3), (4, 5), (11, 12)], [False, False, False, True]),  # a long layer under two short ones
    ([(4, 5), (0, 10)], [False, False]),  # any order in the log
])
def test_a_step_is_alone_when_no_other_overlaps_it_on_the_device(spans, expected):
    steps = pd.DataFrame([step(i, 1, "advance", b, e) for i, (b, e) in enumerate(spans)])
    assert alone(steps).tolist() == expected


def test_a_log_with_the_prefill_count_keeps_merged_prefill_batches_and_drops_mixed_ones():
    steps = pd.DataFrame([
        {**prefill(0, 2, 400, 0, 1.5e-3, begin_s=0.00), "num_prefill_seqs": 2},
        {**prefill(0, 3, 600, 1, 1.6e-3, begin_s=0.01), "num_prefill_seqs": 3},  # merged with a prefill: kept
        {**prefill(0, 5, 602, 2, 1.6e-3, begin_s=0.02), "num_prefill_seqs": 3},  # merged with decodes
    ])
    assert prefill_steps(steps).from_layer.tolist() == [0, 1]
    assert prefill_steps(steps.drop(columns="num_prefill_seqs")).from_layer.tolist() == [0]  # older logs


class _FlatProfile:
    """Every prefill layer: attention 1 ms, router 0.1 ms, experts 1 us per (token, expert) pair."""

    overheads = Overheads()

    def attention_s(self, load):
        return 1e-3

    def router_s(self, tokens):
        return 1e-4

    def experts_s(self, loads):
        return 1e-6 * np.asarray(loads, dtype=float)


def test_layer_check_prices_each_logged_prefill_layer():
    model = SimpleNamespace(num_experts=8, top_k=2)
    steps = pd.DataFrame([prefill(0, 2, 400, 0, 2.0e-3), {**step(3, 4, "advance", 0.01, 0.011), "level": 0}])
    table = layer_check(steps, _FlatProfile(), model)
    assert table.tokens.tolist() == [400]  # the decode step has no prefill layer
    assert table.composed_ms.tolist() == pytest.approx([1.0 + 0.1 + 0.8])  # 800 pairs
    assert table.measured_ms.tolist() == pytest.approx([2.0])


class _PaddedProfile:
    """GPU path 2 us per token plus a padded attention excess of 1 us per padding token, scaled by
    `padding_charge`; host path 1 ms (GPU-bound from 500 tokens)."""

    def layer_paths(self, load, padding_charge=1.0):
        padding = load.num_prefill_seqs * load.prefill_max_tokens - load.num_prefill_tokens
        return 1e-3, 2e-6 * load.num_tokens + padding_charge * 1e-6 * padding


@pytest.mark.parametrize(("measured_share", "expected"), [(1.0, 1.0), (0.5, 0.5), (0.0, 0.0)])
def test_padding_charge_is_the_share_of_the_padded_excess_a_layer_paid(measured_share, expected):
    """Two GPU-bound padded layers (4 x 1,000 padded, 2,000 real tokens: 2,000 padding tokens, 2 ms of
    excess) whose device time paid `measured_share` of the excess; an unpadded one and a host-bound one
    say nothing about padding and give no row."""
    def padded(from_layer, tokens, seqs, longest, paid):
        return {**prefill(0, seqs, tokens, from_layer, 2e-6 * tokens + paid, begin_s=0.01 * from_layer),
                "longest": longest}
    steps = pd.DataFrame([padded(0, 2000, 4, 1000, measured_share * 2e-3),
                          padded(1, 2000, 4, 1000, measured_share * 2e-3),
                          padded(2, 2000, 4, 500, 0.0),  # no padding
                          padded(3, 200, 2, 150, 0.0)])  # host-bound
    profile = _PaddedProfile()
    rows = padding_rows(steps, profile)
    assert rows.event.tolist() == ["padding_charge"] * 2
    assert rows.time_s.tolist() == pytest.approx([expected] * 2)


class _DecodeProfile:
    """A decode layer of 1 us per token of mean context, plus `decode_charge` x 1 us per token by which the
    longest context exceeds the mean; nothing else costs."""

    overheads = Overheads()

    def attention_s(self, load, decode_charge=None):
        charge = 1.0 if decode_charge is None else decode_charge
        mean = load.decode_ctx_tokens / load.num_decode_seqs
        return 1e-6 * mean + charge * 1e-6 * (load.decode_max_ctx - mean)

    def router_s(self, num_tokens):
        return 0.0

    def experts_s(self, loads):
        return np.zeros_like(np.asarray(loads, dtype=float))


@pytest.mark.parametrize("paid", [1.0, 0.5, 0.0])
def test_decode_padding_charge_is_the_share_of_a_decode_groups_padding_a_layer_paid(paid):
    """Two requests, prompts of 100 and 500 tokens, 11 tokens out, decoding from 0 to 1 s: at 0.5 s their
    contexts are 106 and 506 (mean 306, longest 506). A whole decode step then whose device time paid `paid`
    of the 200-token excess gives one row; steps whose batch the requests do not account for give none."""
    requests = pd.DataFrame({"first_token_s": [0.0, 0.0], "finish_s": [1.0, 1.0], "prompt_tokens": [100, 500],
                             "output_tokens": [11, 11]})
    per_layer = 1e-6 * 306 + paid * 1e-6 * 200

    def decode(begin_s, num_seqs=2, longest=506, prefills=0, layers=32):
        return {"batch_id": 0, "num_seqs": num_seqs, "num_prefill_seqs": prefills, "num_tokens": num_seqs,
                "longest": longest, "from_layer": 0, "to_layer": layers, "whole": True, "kind": "advance",
                "begin_s": begin_s, "end_s": begin_s + layers * per_layer}
    steps = pd.DataFrame([decode(0.5), decode(0.6, num_seqs=3),  # a third sequence the requests lack
                          decode(0.7, longest=900),  # a longest context they do not give
                          decode(0.8, prefills=2)])  # not a decode step
    rows = decode_rows(steps, requests, _DecodeProfile(), model_spec("mixtral-8x7b"))
    assert rows.event.tolist() == ["decode_padding_charge"]
    assert rows.time_s.tolist() == pytest.approx([paid], abs=1e-6)


class _ReplayedProfile:
    """A replayed decode layer's stages: 1 us per context token on average."""

    def replayed_stages_s(self, load):
        return 1e-6 * load.decode_ctx_tokens / load.num_decode_seqs


def test_graph_layer_rows_are_each_decode_layers_time_beyond_its_stages_with_its_batch_size(tmp_path, monkeypatch):
    """The two requests of the decode padding test, one whole 32-layer decode step at 0.5 s (mean context 306)
    that took 0.5 ms a layer: one `graph_layer` row of 0.5 - 0.306 ms at batch 2; a step whose batch the requests
    do not account for gives none. `main --only graph_layer` writes them with their batch column, keeping the
    profile's other rows."""
    requests = pd.DataFrame({"first_token_s": [0.0, 0.0], "finish_s": [1.0, 1.0], "prompt_tokens": [100, 500],
                             "output_tokens": [11, 11]})
    steps = pd.DataFrame([{"batch_id": 0, "num_seqs": n, "num_prefill_seqs": 0, "num_tokens": n, "longest": 506,
                           "from_layer": 0, "to_layer": 32, "whole": True, "kind": "advance", "begin_s": t,
                           "end_s": t + 32 * 0.5e-3} for n, t in ((2, 0.5), (3, 0.6))])
    rows = serving.graph_layer_rows(steps, requests, _ReplayedProfile())
    assert rows.event.tolist() == ["graph_layer"] and rows.batch.tolist() == [2]
    assert rows.time_s.tolist() == pytest.approx([0.5e-3 - 0.306e-3])

    run, profile = tmp_path / "run", tmp_path / "profile"
    run.mkdir()
    profile.mkdir()
    STEPS.to_parquet(run / "steps.parquet")
    pd.DataFrame([{"event": "merge", "repeat": 0, "time_s": 4e-4}]).to_csv(profile / "events.csv", index=False)
    (profile / "meta.json").write_text(json.dumps({"model": "mixtral-8x7b"}))
    monkeypatch.setattr(serving, "stepped_profile", lambda directory, varlen_prefill, lean_attention, host_scale: _FakeProfile())
    monkeypatch.setattr(serving, "decode_parts", lambda runs, directory: [rows])
    serving.main([str(run), "--profile", str(profile), "--only", "graph_layer"])
    table = pd.read_csv(profile / "events.csv")
    assert table.event.tolist() == ["merge", "graph_layer"] and table.batch.tolist()[1] == 2
    assert table.time_s.tolist() == pytest.approx([4e-4, 0.194e-3])


def test_graph_rows_are_thinned_per_batch_size_to_their_spread_and_median():
    """1,001 layers at batch 4 keep 5 rows (the lowest, quartiles, median, highest); 3 at batch 8 keep all three;
    other events keep every row."""
    rng = np.random.default_rng(0)
    many = rng.permutation(np.arange(1001)) * 1e-6
    table = pd.DataFrame([{"event": "graph_layer", "batch": 4, "time_s": t} for t in many]
                         + [{"event": "graph_layer", "batch": 8, "time_s": t} for t in (3e-4, 1e-4, 2e-4)]
                         + [{"event": "server_pass", "batch": np.nan, "time_s": 7e-4}] * 2)
    thin = serving.thin_graph_rows(table, keep=5)
    by_batch = thin[thin.event == "graph_layer"].groupby("batch").time_s
    assert by_batch.apply(list).to_dict() == {4: pytest.approx([0, 250e-6, 500e-6, 750e-6, 1000e-6]),
                                              8: pytest.approx([1e-4, 2e-4, 3e-4])}
    assert by_batch.median()[4] == pytest.approx(np.median(many))
    assert (thin.event == "server_pass").sum() == 2


def test_decode_check_prices_each_decode_layer_the_requests_account_for(tmp_path):
    """With the committed H200 profile: one run (graphs replayed) whose one decode step has its batch in the
    requests table gives one layer in the table; a run without a requests table gives none."""
    from pathlib import Path

    from sim.profile.base import AttentionLoad
    from sim.profile.derive import layer_s
    from sim.profile.measured import MeasuredProfile

    profile = Path(__file__).resolve().parents[1] / "calibrate/profiles/h200/mixtral-8x7b-bf16"
    run, bare = tmp_path / "run", tmp_path / "bare"
    for folder in (run, bare):
        folder.mkdir()
        pd.DataFrame([{"batch_id": 0, "num_seqs": 2, "num_prefill_seqs": 0, "num_tokens": 2, "longest": 506,
                       "from_layer": 0, "to_layer": 32, "whole": True, "kind": "advance", "begin_s": 0.5,
                       "end_s": 0.5 + 32e-3}]).to_parquet(folder / "steps.parquet")
        (folder / "summary.json").write_text('{"run": {"graphs": true}}')  # decode layers replayed as graphs
    pd.DataFrame({"first_token_s": [0.0, 0.0], "finish_s": [1.0, 1.0], "prompt_tokens": [100, 500],
                  "output_tokens": [11, 11]}).to_parquet(run / "requests.parquet")
    assert decode_check_report([bare], profile).empty
    table = decode_check_report([run, bare], profile)
    model = model_spec("mixtral-8x7b")
    graphs = MeasuredProfile(profile, top_k=model.top_k, impl="engine-graphs", serving=True,
                             projection_share=model.attention_params / model.expert_params)
    composed = 1e3 * layer_s(graphs, model, AttentionLoad(num_decode_seqs=2, decode_ctx_tokens=612, decode_max_ctx=506))
    assert table.layers.tolist() == [1] and table.measured_ms.tolist() == pytest.approx([1.0])
    assert table.composed_over_measured.tolist() == pytest.approx([composed])


def whole(batch_id, num_seqs, prefills, num_tokens, issued_s, begin_s, end_s, kind="advance"):
    """A step of a 4-layer model's whole pass (an iteration-level policy's: one advance, then the LM head)."""
    return {**step(batch_id, num_seqs, kind, begin_s, end_s), "num_tokens": num_tokens, "longest": num_tokens,
            "num_prefill_seqs": prefills, "to_layer": 4, "issued_s": issued_s}


def test_whole_passes_give_the_hosts_issue_time_and_the_launch_queue():
    """_FakeProfile: 100 tokens host-bound (host 1.1 ms a layer), 3,000 GPU-bound (6 ms a layer)."""
    steps = pd.DataFrame([
        whole(0, 1, 1, 100, 0.000, 0.0005, 0.008),  # issued over 8 ms, the GPU idle: 0.9 ms a layer over the profile
        whole(0, 1, 1, 100, 0.008, 0.008, 0.009, "finish"),
        whole(1, 1, 0, 1, 0.0095, 0.009, 0.030),  # a decode pass 1.5 ms of host after the LM head's issue
        whole(1, 1, 0, 1, 0.0100, 0.030, 0.031, "finish"),
        whole(2, 4, 4, 3000, 0.030, 0.040, 0.064),  # GPU-bound: 6 ms a layer on the GPU
        whole(2, 4, 4, 3000, 0.052, 0.064, 0.065, "finish"),  # issued 12 ms (2 layers) before the GPU ended
        whole(3, 1, 1, 100, 0.070, 0.076, 0.081),  # the GPU began it 6 ms into its issue: a backlog
        whole(3, 1, 1, 100, 0.081, 0.081, 0.082, "finish"),
        whole(4, 5, 4, 3000, 0.090, 0.090, 0.114),  # mixed (a decode among prefills): no rows
        whole(4, 5, 4, 3000, 0.100, 0.114, 0.115, "finish"),
    ])
    rows, busy = pass_rows(steps, _FakeProfile())
    assert rows.event.tolist() == ["pass_layer", "pass_host", "pass_queue"]
    assert rows.time_s.tolist() == pytest.approx([0.9e-3, 1.5e-3, 2.0])
    assert busy.to_dict("records") == [pytest.approx({"layers": 4, "issue_s": 0.011, "backlog_s": 0.006, "host_s": 1.1e-3})]
    assert whole_passes(steps).tolist() == [True, False] * 5
    assert layer_residuals(steps, _FakeProfile()).empty  # the server does not stop between a whole pass's layers


def test_busy_layers_are_what_the_backlog_leaves_after_the_idle_rate():
    """11 ms of issue, 6 of them before the GPU began: 5 ms at the idle rate (2 ms a layer) is 2.5 layers, so
    1.5 layers took the 6 ms, 4 ms each, 2.9 over the profile; a pass issued all at the idle rate says nothing."""
    passes = pd.DataFrame({"layers": [4, 4], "issue_s": [0.011, 0.008], "backlog_s": [0.006, 0.0001],
                           "host_s": [1.1e-3, 1.1e-3]})
    rows = busy_rows(passes, idle_s=0.9e-3)
    assert rows.event.tolist() == ["pass_layer_busy"] and rows.time_s.tolist() == pytest.approx([2.9e-3])


def test_a_prefill_steps_load_takes_its_squared_lengths_or_else_the_mean_length():
    logged = SimpleNamespace(num_seqs=2, num_tokens=300, longest=200, prefill_sq_tokens=200**2 + 100**2)
    load = step_load(logged)
    assert (load.num_prefill_seqs, load.num_prefill_tokens, load.prefill_sq_tokens, load.prefill_max_tokens) == \
        (2, 300, 50_000, 200)
    for older in (SimpleNamespace(num_seqs=2, num_tokens=300, longest=200),  # logs before session 29
                  SimpleNamespace(num_seqs=2, num_tokens=300, longest=200, prefill_sq_tokens=float("nan"))):
        assert step_load(older).prefill_sq_tokens == 2 * 150**2


class _ModeProfile:
    """A stepped engine whose layer's host path is 1 ms attending padded or varlen, 0.6 ms lean; GPU 0.1 ms."""

    def __init__(self, varlen: bool, lean: bool):
        self.host_s = 0.6e-3 if lean else 1e-3

    def layer_paths(self, load):
        return self.host_s, 1e-4


@pytest.mark.parametrize("settings, mode, event, left_s", [
    ({}, (False, False), "pass_layer", 0.5e-3),  # a run from before the settings: padded
    ({"varlen_prefill": True, "lean_attention": False}, (True, False), "pass_layer", 0.5e-3),
    ({"varlen_prefill": True, "lean_attention": True}, (True, True), "pass_layer_lean", 0.9e-3),
    ({"varlen_prefill": False, "lean_attention": True}, (False, False), "pass_layer", 0.5e-3),  # lean needs varlen
])
def test_each_run_is_read_against_the_profile_attending_as_it_did(tmp_path, monkeypatch, settings, mode, event,
                                                                  left_s):
    """A whole prefill pass issued at 1.5 ms a layer, the GPU idle: what is left over the host path of the run's
    own attention is its `pass_layer` row, named apart for a lean run (sim.profile.measured prices lean with it)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"run": settings}))
    pd.DataFrame([whole(0, 1, 1, 100, 0.000, 0.0, 0.006), whole(0, 1, 1, 100, 0.006, 0.006, 0.007, "finish")]
                 ).to_parquet(run / "steps.parquet")
    asked = []
    monkeypatch.setattr(serving, "stepped_profile",
                        lambda directory, varlen_prefill, lean_attention, host_scale:
                        asked.append((varlen_prefill, lean_attention)) or _ModeProfile(varlen_prefill, lean_attention))
    monkeypatch.setattr(serving, "decode_parts", lambda runs, directory: [])
    assert attention_mode(run) == mode
    rows = collect([run], tmp_path / "profile")
    assert asked == [mode]
    layer = rows[rows.event.str.startswith("pass_layer")]
    assert layer.event.tolist() == [event] and layer.time_s.tolist() == pytest.approx([left_s])


class _ScaledProfile:
    """A stepped engine whose layer's host path is 1 ms x its host scale; GPU 0.1 ms."""

    def __init__(self, host_scale: float):
        self.host_s = 1e-3 * host_scale

    def layer_paths(self, load):
        return self.host_s, 1e-4


def test_a_slow_hosts_rows_are_read_at_its_probe_and_put_on_the_profiles_clock(tmp_path, monkeypatch):
    """`--host-scale auto`: a run whose host probe took twice the profile's issues a whole prefill pass at 3 ms a
    layer, the GPU idle. Read plainly, 2 ms a layer is left over the profile's host path; read at its own host
    speed, 3 - 2 = 1 ms is, which is 0.5 ms on the profile's clock (the simulator's host_scale doubles it back).
    Its pass_host row (the host's 4 ms between passes) halves too. A run without a probe is refused."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"run": {"varlen_prefill": True, "host_probe_ms": 2.0}}))
    pd.DataFrame([whole(0, 1, 1, 100, 0.000, 0.0, 0.012), whole(0, 1, 1, 100, 0.012, 0.012, 0.013, "finish"),
                  {**whole(1, 1, 0, 1, 0.016, 0.016, 0.017), "num_prefill_seqs": 0}]).to_parquet(run / "steps.parquet")
    scales = []
    monkeypatch.setattr(serving, "stepped_profile", lambda directory, varlen_prefill, lean_attention, host_scale:
                        scales.append(host_scale) or _ScaledProfile(host_scale))
    monkeypatch.setattr(serving, "decode_parts", lambda runs, directory: [])
    monkeypatch.setattr("calibrate.hostspeed.reference_s", lambda directory: 1e-3)
    for scaled, layer_s, host_s in ((False, 2e-3, 4e-3), (True, 0.5e-3, 2e-3)):
        rows = collect([run], tmp_path / "profile", probe_scaled=scaled).set_index("event").time_s
        assert (rows["pass_layer"], rows["pass_host"]) == pytest.approx((layer_s, host_s)), scaled
    assert scales == [1.0, 2.0]
    (run / "summary.json").write_text(json.dumps({"run": {"varlen_prefill": True}}))
    with pytest.raises(SystemExit, match="no host probe"):
        collect([run], tmp_path / "profile", probe_scaled=True)


def test_busy_rows_of_a_scaled_run_go_back_to_the_profiles_clock():
    """The same pass as above on a host twice as slow (every time doubled, the idle rate on its clock): the row
    is the same 2.9 ms on the profile's clock."""
    passes = pd.DataFrame({"layers": [4], "issue_s": [0.022], "backlog_s": [0.012], "host_s": [2.2e-3], "scale": [2.0]})
    rows = busy_rows(passes, idle_s=0.9e-3)
    assert rows.time_s.tolist() == pytest.approx([2.9e-3])


def test_only_the_events_asked_for_are_replaced(tmp_path, monkeypatch, capsys):
    """`--only EVENT ...`: a refit of some server events (the whole passes', say) keeps the profile's others."""
    run = tmp_path / "run"
    run.mkdir()
    STEPS.to_parquet(run / "steps.parquet")
    profile = tmp_path / "profile"
    profile.mkdir()
    pd.DataFrame([{"event": "merge", "repeat": 0, "time_s": 4e-4}, {"event": "server_pass", "repeat": 0, "time_s": 1.0},
                  {"event": "server_switch", "repeat": 0, "time_s": 5.0}]).to_csv(profile / "events.csv", index=False)
    (profile / "meta.json").write_text(json.dumps({"model": "mixtral-8x7b"}))
    monkeypatch.setattr(serving, "stepped_profile", lambda directory, varlen_prefill, lean_attention, host_scale: _FakeProfile())
    monkeypatch.setattr(serving, "decode_parts", lambda runs, directory: [])
    serving.main([str(run), "--profile", str(profile), "--only", "server_pass"])
    table = pd.read_csv(profile / "events.csv").set_index("event").time_s
    assert sorted(table.index) == ["merge", "server_pass", "server_switch"]
    assert (table["server_pass"], table["server_switch"]) == pytest.approx((7e-4, 5.0))
    with pytest.raises(SystemExit):
        serving.main([str(run), "--profile", str(profile), "--only", "no_such_event"])
    assert "invalid choice" in capsys.readouterr().err


def test_a_profiles_model_is_its_meta_jsons_then_its_folders_name(tmp_path):
    """A copy of a profile under another name (to refit its events, sim.validate --profile) still knows its model;
    calibrate serving refuses a folder naming no model config with a message."""
    copy = tmp_path / "refit"
    copy.mkdir()
    (copy / "meta.json").write_text(json.dumps({"model": "qwen3-moe-30b-a3b"}))
    assert profile_model(copy) == model_spec("qwen3-moe-30b-a3b")
    named = tmp_path / "mixtral-8x7b-bf16"
    named.mkdir()
    assert profile_model(named) == model_spec("mixtral-8x7b")
    unknown = tmp_path / "refit-bf16"
    unknown.mkdir()
    pd.DataFrame(columns=["event", "repeat", "time_s"]).to_csv(unknown / "events.csv", index=False)
    with pytest.raises(FileNotFoundError):
        profile_model(unknown)
    run = tmp_path / "run"
    run.mkdir()
    STEPS.to_parquet(run / "steps.parquet")
    with pytest.raises(SystemExit, match=r"refit-bf16: its model has no config \(.*refit.yaml\)"):
        serving.main([str(run), "--profile", str(unknown)])
