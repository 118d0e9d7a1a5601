"""sim.tracecmp: other policies on a real run's own trace, in the simulator."""

from __future__ import annotations

import json

import pytest

from sim.tracecmp import Variant, compare, main
from sim.validate import simulate_like
from sim.workload import WorkloadConfig, generate_trace, write_trace


@pytest.mark.parametrize("text, expected", [
    ("fcfs", Variant("fcfs", "fcfs", ())),
    ("qllm policy.be_prefill_room=true", Variant("qllm", "qllm", ("policy.be_prefill_room=true",))),
    ("room=qllm policy.be_prefill_room=true max_batch_size=8",
     Variant("room", "qllm", ("policy.be_prefill_room=true", "max_batch_size=8"))),
])
def test_a_variant_is_a_label_a_policy_and_overrides(text, expected):
    assert Variant.parse(text) == expected


def fake_run(path, policy="fcfs"):
    trace = generate_trace(WorkloadConfig(rate=20.0, num_requests=60, output_mode="fixed", fixed_output_tokens=8), 1)
    path.mkdir(parents=True)
    write_trace(trace, path / "trace.csv")
    slot = int((trace.prompt_tokens + trace.output_tokens).max())
    run = {"policy": policy, "rate": 20.0, "seed": 1, "num_slots": 40, "kv_slot_tokens": slot,
           "engine": "mixtral-8x7b"}
    (path / "summary.json").write_text(json.dumps({"run": run}))
    return path


def test_each_variant_runs_on_the_same_trace_and_the_first_is_the_baseline(tmp_path):
    run = fake_run(tmp_path / "a")
    variants = [Variant.parse("fcfs"), Variant.parse("qllm"), Variant.parse("room=qllm policy.be_prefill_room=true")]
    table = compare([run], variants, "h200", "mixtral-8x7b")
    assert table.variant.tolist() == ["fcfs", "qllm", "room"]
    assert table["tokens/s ratio"].iloc[0] == 1.0
    qllm = simulate_like(run, "h200", "mixtral-8x7b", "qllm")
    assert qllm.policy.iloc[0] == "qllm" and (qllm.generated_tokens == 8).all()  # every request served in full
    assert table["LS TTFT mean s"].iloc[1] == pytest.approx(qllm[qllm.priority == "LS"].ttft_s.mean())


def test_the_cli_prints_means_and_rejects_an_empty_folder(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "a")
    main([str(tmp_path / "runs"), "--variant", "fcfs", "--variant", "qllm", "--hardware", "h200"])
    out = capsys.readouterr().out
    assert "1 traces x 2 variants" in out and "| 20 | qllm |" in out
    for bad in ("nosuch", "fcfs policy.be_prefill_room=true", "qllm policy.no_such_key=1"):
        with pytest.raises(SystemExit, match="^error: "):
            main([str(tmp_path / "runs"), "--variant", bad, "--hardware", "h200"])
    with pytest.raises(SystemExit, match="no real runs"):
        main([str(tmp_path), "--runs-of", "qllm", "--variant", "fcfs", "--hardware", "h200"])
