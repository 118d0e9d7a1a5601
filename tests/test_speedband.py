"""sim.speedband: the simulated engine made `speed` x faster by stretching the arrivals and shrinking the
table's clock back, and the per-cell band a speed error that small spans (`sim.validate --speed-band`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import sim.validate
from sim.speedband import band_row
from sim.validate import simulate_like
from sim.workload import WorkloadConfig, generate_trace, write_trace


def _run(folder, trace, policy="qllm"):
    folder.mkdir(parents=True, exist_ok=True)
    write_trace(trace, folder / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": policy, "rate": 4.0, "seed": 3, "num_slots": 40, "kv_slot_tokens": slot,
           "engine": "mixtral-8x7b"}
    (folder / "summary.json").write_text(json.dumps({"run": run}))
    return folder


@pytest.mark.parametrize("policy", ["fcfs", "qllm"])
def test_requests_alone_take_half_as_long_on_an_engine_twice_as_fast(tmp_path, policy):
    """Arrivals 1,000 s apart, so no request waits for another: each one's TTFT and turnaround at speed 2 are half
    its own at speed 1 (no policy or cost reads the absolute clock), and every token is still generated."""
    trace = generate_trace(WorkloadConfig(rate=4.0, num_requests=12, output_mode="fixed", fixed_output_tokens=5), 3)
    trace["arrival_s"] = 1000.0 * trace.index
    run = _run(tmp_path / "run", trace, policy)
    one, two = simulate_like(run, "h200", "mixtral-8x7b"), simulate_like(run, "h200", "mixtral-8x7b", speed=2.0)
    assert two.arrival_s.tolist() == pytest.approx(one.arrival_s.tolist())
    assert two.ttft_s.tolist() == pytest.approx((one.ttft_s / 2).tolist())
    assert two.turnaround_s.tolist() == pytest.approx((one.turnaround_s / 2).tolist())
    assert (two.generated_tokens == 5).all() and len(two) == 12


def test_a_faster_engine_cuts_a_loaded_traces_waits_by_more_than_its_speed(tmp_path):
    """Under load the queue shrinks as well as the service: TTFT at speed 1.5 is below speed 1's / 1.5."""
    trace = generate_trace(WorkloadConfig(rate=12.0, num_requests=80, output_mode="fixed", fixed_output_tokens=8), 3)
    run = _run(tmp_path / "run", trace, "fcfs")
    one, fast = simulate_like(run, "h200", "mixtral-8x7b"), simulate_like(run, "h200", "mixtral-8x7b", speed=1.5)
    assert fast.ttft_s.mean() < one.ttft_s.mean() / 1.5
    assert (fast.generated_tokens == 8).all() and len(fast) == 80


@pytest.mark.parametrize("errors, elasticity, in_band", [
    ((8.0, -20.0, -40.0), (0.60 - 1.08) / (2 * 0.01 * 0.80), 1.0),  # the real value lies between the slow and fast
    ((-30.0, -20.0, -10.0), (0.90 - 0.70) / (2 * 0.01 * 0.80), 0.0),  # all below it, the nearest 10% off
    ((-4.0, -6.0, -8.0), (0.92 - 0.96) / (2 * 0.01 * 0.94), 1.0),  # the slow edge within the 5% target
])
def test_the_band_of_a_cell(errors, elasticity, in_band):
    rows = {speed: {"LS ttft_p50_s err %": e} for speed, e in zip((0.99, 1.0, 1.01), errors)}
    out = band_row(rows, 0.01)
    assert out["LS ttft_p50_s elasticity"] == pytest.approx(elasticity)
    assert out["LS ttft_p50_s in band"] == in_band


def test_the_speed_band_from_the_command_line(tmp_path, monkeypatch, capsys):
    """A run the simulator made is inside its own band in every cell; the table holds each metric's elasticity;
    a band outside (0, 50)% or one with --against is refused with a message."""
    trace = generate_trace(WorkloadConfig(rate=4.0, num_requests=40, output_mode="fixed", fixed_output_tokens=4), 3)
    run = _run(tmp_path / "runs" / "0_qllm", trace)
    simulate_like(run, "h200", "mixtral-8x7b").assign(source="real").to_parquet(run / "requests.parquet")
    argv = ["validate", str(tmp_path / "runs"), "--hardware", "h200", "--out", str(tmp_path / "t.csv")]
    monkeypatch.setattr("sys.argv", [*argv, "--speed-band", "2"])
    sim.validate.main()
    table = pd.read_csv(tmp_path / "t.csv")
    assert table.filter(like=" in band").to_numpy().tolist() == [[1.0] * 9]
    assert (table["LS ttft_p50_s elasticity"] < 0).all()  # faster: shorter waits
    out = capsys.readouterr().out
    assert "within target at a speed within +-2%" in out and "9 of 9 cells within target" in out
    for bad, message in ((["--speed-band", "0"], "between 0 and 50"),
                         (["--speed-band", "2", "--against", str(tmp_path / "runs")], "does not apply with --against")):
        monkeypatch.setattr("sys.argv", [*argv, *bad])
        with pytest.raises(SystemExit, match=message):
            sim.validate.main()
