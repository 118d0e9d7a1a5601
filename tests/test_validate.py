"""sim.validate replays a real run's trace through the simulator: a run that the simulator itself
produced with the same settings must come back with zero error."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sim.validate import compare, paired_pct, simulate_like
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


def test_the_paired_error_compares_each_request_with_itself():
    real = pd.DataFrame({"request_id": [0, 1, 2, 3], "priority": ["LS", "LS", "LS", "BE"],
                         "ttft_s": [0.1, 0.2, 0.4, 1.0]})
    sim = real.assign(ttft_s=[0.11, 0.22, 0.44, 0.5]).iloc[::-1]  # row order does not matter
    assert paired_pct(real, sim, "LS", "ttft_s") == pytest.approx(10.0)
    assert paired_pct(real, sim, "BE", "ttft_s") == pytest.approx(-50.0)
