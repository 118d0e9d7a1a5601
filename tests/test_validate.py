"""sim.validate replays a real run's trace through the simulator: a run that the simulator itself
produced with the same settings must come back with zero error."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

import sim.validate
from calibrate.hostspeed import reference_s
from policies import QLLM
from sim.profile.select import PROFILES_DIR
from sim.simulate import simulate
from sim.validate import compare, paired_pct, saved_policy, simulate_like
from sim.workload import WorkloadConfig, generate_trace, write_trace


def test_a_run_the_simulator_made_validates_exactly(tmp_path):
    trace = generate_trace(WorkloadConfig(rate=3.0, num_requests=60, output_mode="fixed", fixed_output_tokens=8), 2)
    write_trace(trace, tmp_path / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "qllm", "rate": 3.0, "seed": 2, "num_slots": 40, "kv_slot_tokens": slot}
    (tmp_path / "summary.json").write_text(json.dumps({"run": run}))
    made = simulate_like(tmp_path, "h200", "mixtral-8x7b")
    made["source"] = "real"
    row = compare(made, simulate_like(tmp_path, "h200", "mixtral-8x7b"))
    errors = {k: v for k, v in row.items() if k.endswith("err %")}
    assert len(errors) == 9 and all(v == pytest.approx(0.0) for v in errors.values())
    assert row["LS ttft paired %"] == pytest.approx(0.0) and row["BE ttft paired %"] == pytest.approx(0.0)
    assert (made.generated_tokens == 8).all()


def test_a_run_on_a_cut_model_is_simulated_at_its_depth(tmp_path):
    """A run of `engine.num_layers=16` (Mixtral's layers on a GPU too small for 32) is replayed with 16 layers of
    the same per-layer profile: alone, each request takes about half as long; a run at full depth is unchanged."""
    trace = generate_trace(WorkloadConfig(rate=0.5, num_requests=20, output_mode="fixed", fixed_output_tokens=8), 4)
    write_trace(trace, tmp_path / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "fcfs", "rate": 0.5, "seed": 4, "num_slots": 40, "kv_slot_tokens": slot}
    for layers in (None, 32, 16):
        (tmp_path / "summary.json").write_text(json.dumps({"run": {**run, "num_layers": layers}}))
        table = simulate_like(tmp_path, "h200", "mixtral-8x7b")
        assert (table.generated_tokens == 8).all()
        if layers is None:
            full = table
        elif layers == 32:
            assert table.turnaround_s.tolist() == pytest.approx(full.turnaround_s.tolist())
        else:
            ratio = (table.turnaround_s / full.turnaround_s).median()
            assert 0.4 < ratio < 0.6


def test_a_faster_host_shortens_the_simulated_host_bound_work(tmp_path, monkeypatch):
    """`--host-scale` (hardware.profile.host_scale): with the measured H200 profile, fcfs's stepped prefill
    passes are host-bound, so a host twice as fast finishes its requests sooner; a scale <= 0 is an error."""
    trace = generate_trace(WorkloadConfig(rate=4.0, num_requests=30, output_mode="fixed", fixed_output_tokens=4), 3)
    write_trace(trace, tmp_path / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "fcfs", "rate": 4.0, "seed": 3, "num_slots": 40, "kv_slot_tokens": slot, "defer_tokens": True}
    (tmp_path / "summary.json").write_text(json.dumps({"run": run}))
    base = simulate_like(tmp_path, "h200-measured", "mixtral-8x7b")
    fast = simulate_like(tmp_path, "h200-measured", "mixtral-8x7b", extra=("++hardware.profile.host_scale=0.5",))
    assert fast.ttft_s.sum() < base.ttft_s.sum() and (fast.generated_tokens == 4).all()
    monkeypatch.setattr("sys.argv", ["validate", str(tmp_path), "--host-scale", "-1"])
    with pytest.raises(SystemExit, match="host-scale must be > 0"):
        sim.validate.main()
    with pytest.raises(SystemExit, match="no host probe"):  # auto needs the run's probe
        simulate_like(tmp_path, "h200-measured", "mixtral-8x7b", host_scale="auto")
    # auto: the run's probe over the profile's time of the same point; a probe half the profile's is scale 0.5
    reference_ms = 1e3 * reference_s(PROFILES_DIR / "h200" / "mixtral-8x7b-bf16")
    (tmp_path / "summary.json").write_text(json.dumps({"run": {**run, "host_probe_ms": 0.5 * reference_ms}}))
    auto = simulate_like(tmp_path, "h200-measured", "mixtral-8x7b", host_scale="auto")
    assert auto.ttft_s.tolist() == pytest.approx(fast.ttft_s.tolist())


def test_a_run_with_unpadded_prompts_is_priced_so_or_refused_with_a_message(tmp_path, monkeypatch, capsys):
    """A run's `varlen_prefill` picks the profile's unpadded prefill curve (the H100 Qwen3 and H200 Mixtral profiles
    have it: their prefills cost less than padded ones); the H200 Qwen3 profile lacks it, and sim.validate says how
    to add it."""
    trace = generate_trace(WorkloadConfig(rate=6.0, num_requests=30, output_mode="fixed", fixed_output_tokens=4), 3)
    write_trace(trace, tmp_path / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "fcfs", "rate": 6.0, "seed": 3, "num_slots": 40, "kv_slot_tokens": slot, "defer_tokens": True}
    for hardware, model in (("h100-measured", "qwen3-moe-30b-a3b"), ("h200-measured", "mixtral-8x7b")):
        times = {}
        for varlen in (False, True):
            (tmp_path / "summary.json").write_text(json.dumps({"run": {**run, "varlen_prefill": varlen}}))
            times[varlen] = simulate_like(tmp_path, hardware, model).ttft_s.sum()
        assert times[True] < times[False], hardware
    pd.DataFrame({"request_id": [0]}).to_parquet(tmp_path / "requests.parquet")
    monkeypatch.setattr("sys.argv", ["validate", str(tmp_path), "--hardware", "h200-measured",
                                     "--model", "qwen3-moe-30b-a3b"])
    with pytest.raises(SystemExit, match="no engine measurements for attention_prefill_varlen.*calibrate.splice"):
        sim.validate.main()


def test_a_lean_run_is_priced_at_the_lean_curve_or_refused_with_a_message(tmp_path, monkeypatch):
    """A run's `lean_attention` (with varlen_prefill) prices its stepped prefill attention at the profile's
    attention_prefill_lean curve (the H100 Qwen3 profile has it: fcfs's prefills issue faster, so the first request,
    which finds the engine idle, and most others get their first tokens sooner; a few land in another batch); the
    H200 Mixtral profile lacks it, and sim.validate says which stage to calibrate."""
    trace = generate_trace(WorkloadConfig(rate=6.0, num_requests=30, output_mode="fixed", fixed_output_tokens=4), 3)
    write_trace(trace, tmp_path / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "fcfs", "rate": 6.0, "seed": 3, "num_slots": 40, "kv_slot_tokens": slot, "defer_tokens": True,
           "varlen_prefill": True}
    times = {}
    for lean in (False, True):
        (tmp_path / "summary.json").write_text(json.dumps({"run": {**run, "lean_attention": lean}}))
        times[lean] = simulate_like(tmp_path, "h100-measured", "qwen3-moe-30b-a3b").ttft_s.to_numpy()
    assert times[True][0] < times[False][0]
    assert (times[True] < times[False]).sum() > len(trace) / 2
    pd.DataFrame({"request_id": [0]}).to_parquet(tmp_path / "requests.parquet")
    monkeypatch.setattr("sys.argv", ["validate", str(tmp_path), "--hardware", "h200-measured", "--model", "mixtral-8x7b"])
    with pytest.raises(SystemExit, match="no engine measurements for attention_prefill_lean .calibrate with --stages "
                                         "attention_prefill_lean"):
        sim.validate.main()


SAVED = """policy:
  _target_: policies.QLLM
  max_batch_size: ${max_batch_size}
  granularity: layer
  fill_ls_prefill: true
max_batch_size: 16
"""


def test_a_run_is_simulated_with_the_policy_it_saved_not_its_groups_defaults_now(tmp_path, monkeypatch):
    """A run from before qllm's group turned `be_prefill_room` on, under a group name since removed."""
    trace = generate_trace(WorkloadConfig(rate=3.0, num_requests=40, output_mode="fixed", fixed_output_tokens=8), 3)
    write_trace(trace, tmp_path / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "qllm_gone", "rate": 3.0, "seed": 3, "num_slots": 40, "kv_slot_tokens": slot}
    (tmp_path / "summary.json").write_text(json.dumps({"run": run}))
    assert saved_policy(tmp_path) is None  # no saved config: the group by name
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(SAVED)
    assert saved_policy(tmp_path) == QLLM(max_batch_size=16, be_prefill_room=False)
    used = []

    def spy(requests, policy, *args, **kwargs):
        used.append(policy)
        return simulate(requests, policy, *args, **kwargs)
    monkeypatch.setattr(sim.validate, "simulate", spy)
    table = simulate_like(tmp_path, "h200", "mixtral-8x7b")
    assert set(table.policy) == {"qllm_gone"} and len(table) == 40 and (table.generated_tokens == 8).all()
    simulate_like(tmp_path, "h200", "mixtral-8x7b", policy="qllm")  # another policy asked for: the group now
    assert used[0] == QLLM(max_batch_size=16) and used[1].be_prefill_room and used[1].max_batch_size == 32


def test_the_paired_error_compares_each_request_with_itself():
    real = pd.DataFrame({"request_id": [0, 1, 2, 3], "priority": ["LS", "LS", "LS", "BE"],
                         "ttft_s": [0.1, 0.2, 0.4, 1.0]})
    sim = real.assign(ttft_s=[0.11, 0.22, 0.44, 0.5]).iloc[::-1]  # row order does not matter
    assert paired_pct(real, sim, "LS", "ttft_s") == pytest.approx(10.0)
    assert paired_pct(real, sim, "BE", "ttft_s") == pytest.approx(-50.0)


def test_runs_scored_against_other_runs_of_the_same_traces(tmp_path, monkeypatch, capsys):
    """--against: the engine against itself. A copy of a run scores zero error, every cell within target."""
    trace = generate_trace(WorkloadConfig(rate=3.0, num_requests=40, output_mode="fixed", fixed_output_tokens=4), 5)
    run = {"policy": "fcfs", "rate": 3.0, "seed": 5, "num_slots": 40,
           "kv_slot_tokens": int((trace.prompt_tokens + trace.output_tokens).max())}
    for root in ("a", "b"):
        folder = tmp_path / root / "0_fcfs"
        folder.mkdir(parents=True)
        write_trace(trace, folder / "trace.csv")
        (folder / "summary.json").write_text(json.dumps({"run": run}))
    made = simulate_like(tmp_path / "a" / "0_fcfs", "h200", "mixtral-8x7b")
    for root in ("a", "b"):
        made.to_parquet(tmp_path / root / "0_fcfs" / "requests.parquet", index=False)
    monkeypatch.setattr("sys.argv", ["validate", str(tmp_path / "a"), "--against", str(tmp_path / "b"),
                                     "--out", str(tmp_path / "t.csv")])
    sim.validate.main()
    table = pd.read_csv(tmp_path / "t.csv")
    assert sim.validate.within_target(table) == (9, 9) and table.seed.tolist() == [5]
    assert "1 runs against" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["validate", str(tmp_path / "a"), "--against", str(tmp_path / "nothing")])
    with pytest.raises(SystemExit, match="no such folder"):
        sim.validate.main()


@pytest.mark.parametrize("errors, inside", [
    ({"LS ttft_p50_s err %": 4.9, "LS ttft_p99_s err %": -9.9, "tokens/s err %": 2.9}, 3),
    ({"LS ttft_p50_s err %": -5.1, "LS ttft_p99_s err %": 10.1, "tokens/s err %": -3.1}, 0),
])
def test_cells_within_target_use_each_metrics_limit(errors, inside):
    assert sim.validate.within_target(pd.DataFrame([errors])) == (inside, 3)


def test_runs_of_one_trace_in_the_folder_are_scored_against_each_other(tmp_path, monkeypatch, capsys):
    """Several runs of one policy, rate and seed: each is scored against the others (the engine's own spread),
    printed per metric beside the simulator's score; a run of another trace pairs with nothing."""
    trace = generate_trace(WorkloadConfig(rate=3.0, num_requests=40, output_mode="fixed", fixed_output_tokens=4), 5)
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    folders = {}
    for name, seed in (("0_fcfs", 5), ("1_fcfs", 5), ("2_fcfs", 6)):
        folder = folders[name] = tmp_path / name
        folder.mkdir()
        write_trace(trace, folder / "trace.csv")
        run = {"policy": "fcfs", "rate": 3.0, "seed": seed, "num_slots": 40, "kv_slot_tokens": slot}
        (folder / "summary.json").write_text(json.dumps({"run": run}))
    made = simulate_like(folders["0_fcfs"], "h200", "mixtral-8x7b").assign(source="real")
    made.to_parquet(folders["0_fcfs"] / "requests.parquet", index=False)
    made.to_parquet(folders["2_fcfs"] / "requests.parquet", index=False)
    late = made.finish_s + 0.5 * made.turnaround_s  # turnaround x1.5; TTFT and tokens unchanged
    made.assign(finish_s=late, turnaround_s=late - made.arrival_s).to_parquet(folders["1_fcfs"] / "requests.parquet")
    pairs = sim.validate.same_trace_pairs(sorted(folders.values()))
    assert pairs == [(folders["0_fcfs"], folders["1_fcfs"]), (folders["1_fcfs"], folders["0_fcfs"])]
    monkeypatch.setattr("sys.argv", ["validate", str(tmp_path), "--hardware", "h200", "--model", "mixtral-8x7b"])
    sim.validate.main()
    out = capsys.readouterr().out
    assert "the engine against itself: 2 ordered pairs of runs of one trace" in out
    # per metric: the simulator's cells (3 runs), then the engine's against itself (2 pairs); the late run's
    # turnaround misses both ways (+50% against run 0, -33% the other way), its TTFT matches
    rows = {" ".join(words[:2]): words[2:] for words in map(str.split, out.splitlines())
            if words[:1] in (["LS"], ["BE"]) and "of" in words}
    assert len(rows) == 8
    for metric, cells in rows.items():
        expected = ["2", "of", "3", "0", "of", "2"] if "turnaround" in metric else ["3", "of", "3", "2", "of", "2"]
        assert cells == expected, metric


def test_another_profile_folder_prices_the_runs_and_lean_runs_take_their_own_serving_events(tmp_path, monkeypatch):
    """`--profile DIR` (a copy of the H100 Qwen3 profile whose serving events were refitted): a `pass_layer_lean` row
    of 2 ms makes a lean run's host-bound fcfs prefill passes slower, and leaves a varlen run's as they were; a
    folder that is not a measured profile is refused with a message."""
    copy = tmp_path / "profile"
    shutil.copytree(PROFILES_DIR / "h100" / "qwen3-moe-30b-a3b-bf16", copy)
    events = pd.read_csv(copy / "events.csv.gz")
    pd.concat([events, pd.DataFrame([{"event": "pass_layer_lean", "repeat": 0, "time_s": 2e-3}])]
              ).to_csv(copy / "events.csv.gz", index=False)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trace = generate_trace(WorkloadConfig(rate=6.0, num_requests=30, output_mode="fixed", fixed_output_tokens=4), 3)
    write_trace(trace, run_dir / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "fcfs", "rate": 6.0, "seed": 3, "num_slots": 40, "kv_slot_tokens": slot, "defer_tokens": True,
           "varlen_prefill": True}
    for lean in (False, True):
        (run_dir / "summary.json").write_text(json.dumps({"run": {**run, "lean_attention": lean}}))
        own = simulate_like(run_dir, "h100-measured", "qwen3-moe-30b-a3b").ttft_s.to_numpy()
        refitted = simulate_like(run_dir, "h100-measured", "qwen3-moe-30b-a3b", profile_dir=copy).ttft_s.to_numpy()
        if lean:
            assert refitted[0] > own[0] and refitted.sum() > own.sum()
        else:
            assert refitted.tolist() == pytest.approx(own.tolist())
    pd.DataFrame({"request_id": [0]}).to_parquet(run_dir / "requests.parquet")
    monkeypatch.setattr("sys.argv", ["validate", str(run_dir), "--hardware", "h100-measured", "--model",
                                     "qwen3-moe-30b-a3b", "--profile", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"error: no profile at .*stages.csv"):
        sim.validate.main()


def test_the_model_comes_from_what_the_runs_served(tmp_path):
    """Without `--model`, sim.validate and sim.tracecmp simulate the model the runs' summary.json names: a simulator
    model by name, or the checkpoint folder it was loaded from (its config.json: `model=hf`). Runs of several
    models, of one the simulator has no dimensions for, or that do not say, need `--model`."""
    from sim.validate import model_overrides, served_model

    def runs(*engines):
        out = []
        for i, engine in enumerate(engines):
            folder = tmp_path / f"run{len(list(tmp_path.iterdir()))}_{i}"
            folder.mkdir()
            (folder / "summary.json").write_text(json.dumps({"run": {} if engine is None else {"engine": engine}}))
            out.append(folder)
        return out

    assert served_model(runs("qwen3-moe-30b-a3b", "qwen3-moe-30b-a3b")) == "qwen3-moe-30b-a3b"
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "mixtral", "hidden_size": 4096,
                                                        "intermediate_size": 14336, "num_hidden_layers": 32,
                                                        "num_attention_heads": 32, "num_key_value_heads": 8,
                                                        "num_local_experts": 8, "num_experts_per_tok": 2,
                                                        "vocab_size": 32000}))
    assert served_model(runs(str(checkpoint))) == "mixtral-8x7b"  # its dimensions: the preset's measured profiles
    (other := tmp_path / "other").mkdir()
    (other / "config.json").write_text((checkpoint / "config.json").read_text().replace('"num_local_experts": 8',
                                                                                       '"num_local_experts": 16'))
    assert served_model(runs(str(other))) == str(other)  # no preset of these dimensions: the config itself
    assert model_overrides(str(checkpoint)) == ["model=hf", f"model.config={checkpoint}"]
    assert model_overrides("mixtral-8x7b") == ["model=mixtral-8x7b"]
    for engines, message in [(("mixtral-8x7b", "qwen3-moe-30b-a3b"), "served 2 models"),
                             (("tiny-mixtral",), "no dimensions for"), ((None,), "does not say")]:
        with pytest.raises(SystemExit, match=message):
            served_model(runs(*engines))

    trace = generate_trace(WorkloadConfig(rate=3.0, num_requests=30, output_mode="fixed", fixed_output_tokens=4), 2)
    (run_dir := tmp_path / "served").mkdir()
    write_trace(trace, run_dir / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": "qllm", "rate": 3.0, "seed": 2, "num_slots": 40, "kv_slot_tokens": slot,
           "engine": str(checkpoint), "num_layers": 16}  # cut, as engine.num_layers cuts a checkpoint
    (run_dir / "summary.json").write_text(json.dumps({"run": run}))
    served = simulate_like(run_dir, "h200", served_model([run_dir]))
    pd.testing.assert_frame_equal(served, simulate_like(run_dir, "h200", "mixtral-8x7b"))  # the same dimensions
    run["num_layers"] = 32
    (run_dir / "summary.json").write_text(json.dumps({"run": run}))
    assert simulate_like(run_dir, "h200", served_model([run_dir])).ttft_s.sum() > served.ttft_s.sum()  # deeper
