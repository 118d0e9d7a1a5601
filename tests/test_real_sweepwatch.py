"""The sweep watchdog (real.sweepwatch) on the CPU: a sweep that keeps its time runs in one process; jobs over
their limit are diagnosed, killed, and the rest of the sweep still runs, one process each."""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from real.stallwatch import STALL_MESSAGE  # noqa: E402
from real.sweepwatch import Sweep, main  # noqa: E402

FIXED = ["num_requests=6", "workload.output_mode=fixed", "workload.fixed_output_tokens=2"]


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


class Reporting(Sweep):
    """Jobs that print the replay watch's stall message, then wait (as a held stalled process does)."""

    def command(self, first: int, multirun: bool) -> list[str]:
        return [sys.executable, "-c", f"import time; print('{STALL_MESSAGE} for 20 s', flush=True); time.sleep(60)"]


def test_a_job_whose_watch_reports_a_stall_is_diagnosed_at_once(tmp_path, capsys):
    sweep = Reporting(tmp_path, ["rate=8,28"], [], limit_s=300, build_s=0, gdb_timeout_s=5)
    began = time.monotonic()
    assert sweep.run_jobs(0, multirun=True) == 1  # the next job: the one after the stalled one
    assert time.monotonic() - began < 60  # diagnosed long before its limit
    assert "stalled after" in capsys.readouterr().out and (tmp_path / "stall_0.txt").exists()


def test_each_job_gets_the_trail_and_a_watch_that_holds_for_cuda_gdb_unless_fixed_says_otherwise(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(Sweep, "run_jobs", lambda self, first, multirun: seen.append(self.fixed) or len(self.combos))
    main(["--out", str(tmp_path), "--sweep", "rate=8", "--watch", "15", "--gdb-timeout", "100"])
    main(["--out", str(tmp_path), "--sweep", "rate=8", "--fixed", "engine.stall_timeout_s=0"])
    assert seen[0] == ["engine.device_trail=true", "engine.stall_timeout_s=15", "engine.stall_hold_s=130"]
    assert seen[1] == ["engine.stall_timeout_s=0", "engine.device_trail=true", "engine.stall_hold_s=180"]
