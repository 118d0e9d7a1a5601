"""The sweep watchdog (real.sweepwatch) on the CPU: a sweep that keeps its time runs in one process; jobs over
their limit are diagnosed, killed, and the rest of the sweep still runs, one process each."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from real.sweepwatch import main  # noqa: E402

FIXED = ["num_requests=6", "workload.output_mode=fixed", "workload.fixed_output_tokens=2"]  # sweepwatch adds timeout 0


@pytest.mark.slow
def test_a_sweep_in_time_runs_in_one_process(tmp_path, capsys):
    main(["--out", str(tmp_path), "--sweep", "rate=8,28", "--fixed", *FIXED, "--limit", "120", "--build", "120"])
    assert len(list(tmp_path.glob("*/summary.json"))) == 2 and len(list(tmp_path.glob("proc_*.log"))) == 1
    assert not list(tmp_path.glob("stall_*.txt")) and "2 of 2 jobs run" in capsys.readouterr().out


@pytest.mark.slow
def test_jobs_over_their_limit_are_diagnosed_and_the_rest_still_run(tmp_path, capsys):
    main(["--out", str(tmp_path), "--sweep", "rate=8,28", "--fixed", *FIXED, "--limit", "0.01", "--build", "0",
          "--gdb-timeout", "5"])
    out = capsys.readouterr().out
    assert "stalled after" in out and "2 of 2 jobs run" in out
    assert sorted(p.name for p in tmp_path.glob("stall_*.txt")) == ["stall_0.txt", "stall_1.txt"]
    assert len(list(tmp_path.glob("proc_*.log"))) == 2  # the second job in a process of its own
    assert "cuda-gdb" in (tmp_path / "stall_0.txt").read_text()
