"""`python -m sim run` as a user runs it: outputs, determinism, and clear errors on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sim.workload import WorkloadConfig, generate_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]


def sim_run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sim", "run", f"hydra.run.dir={tmp_path}", "num_requests=60", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_run_writes_tables_and_prints_summary(tmp_path):
    done = sim_run(tmp_path, "policy=qllm", "rate=7")
    assert done.returncode == 0, done.stderr
    df = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(df) == 60 and set(df.source) == {"sim"} and set(df.policy) == {"qllm"}
    assert (df.generated_tokens == df.output_tokens).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["classes"]["ALL"]["num_requests"] == 60
    assert "TTFT p50 ms" in done.stdout and "LS" in done.stdout


def test_same_seed_same_requests_table(tmp_path):
    tables = []
    for name in ("a", "b"):
        assert sim_run(tmp_path / name, "policy=qllm", "seed=3").returncode == 0
        tables.append(pd.read_parquet(tmp_path / name / "requests.parquet"))
    pd.testing.assert_frame_equal(*tables)


def test_replays_a_trace_file(tmp_path):
    trace = generate_trace(WorkloadConfig(rate=4.0, num_requests=30), seed=1)
    write_trace(trace, tmp_path / "trace.csv")
    done = sim_run(tmp_path / "out", f"trace={tmp_path / 'trace.csv'}", "policy=fcfs")
    assert done.returncode == 0, done.stderr
    df = pd.read_parquet(tmp_path / "out" / "requests.parquet")
    assert df.arrival_s.tolist() == pytest.approx(trace.arrival_s.tolist())
    span = trace.arrival_s.max() - trace.arrival_s.min()  # the run records the trace's rate, not the default 2
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["run"]["rate"] == pytest.approx(29 / span)
    (tmp_path / "summary.json").write_text('{"run": {"rate": 4.0}}')  # a run wrote it: its nominal rate
    assert sim_run(tmp_path / "again", f"trace={tmp_path / 'trace.csv'}", "policy=fcfs").returncode == 0
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["run"]["rate"] == 4.0
    assert sim_run(tmp_path / "named", f"trace={tmp_path / 'trace.csv'}", "rate=9").returncode == 0
    assert json.loads((tmp_path / "named" / "summary.json").read_text())["run"]["rate"] == 9.0


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("policy=nope",), "policy"),
        (("rate=-1",), "rate must be > 0"),
        (("trace=/no/such/trace.csv",), "no such file"),
        (("model=mixtral-8x7b", "hardware=h100"), "does not fit"),
        (("policy.granularity=token",), "unknown granularity"),
        (("host_ahead=maybe",), "host_ahead must be true or false"),
    ],
)
def test_bad_input_gives_a_message_and_nonzero_exit(tmp_path, overrides, message):
    done = sim_run(tmp_path, *overrides)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_engine_package_is_one_line_and_exit_2(capsys):
    from sim.entry import needs_engine

    def load():
        raise ModuleNotFoundError("No module named 'torch'", name="torch")
    with pytest.raises(SystemExit) as stop:
        needs_engine(load)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == "error: this command needs torch: pip install -e '.[engine]'"

    def other():
        raise ModuleNotFoundError("No module named 'nosuch'", name="nosuch")
    with pytest.raises(ModuleNotFoundError):  # anything else is a bug, not a missing extra
        needs_engine(other)


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGUSR1"), reason="needs SIGUSR1")
def test_a_real_replay_prints_its_stacks_on_sigusr1_and_runs_on():
    """`kill -USR1` on a `python -m real run` process (a stalled replay, say) prints where every thread is and does not
    stop it."""
    pytest.importorskip("torch")
    code = "import os, signal, real.cli; os.kill(os.getpid(), signal.SIGUSR1); print('ran on')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ran on"
    assert "most recent call first" in done.stderr and "<string>" in done.stderr


def test_a_multirun_ends_with_its_runs_side_by_side(tmp_path):
    """`-m`: after the jobs' own summaries, one table of the swept keys and each run's headline numbers, printed and
    written as sweep.csv in the sweep folder; its numbers are the jobs' own summary.json's."""
    done = subprocess.run([sys.executable, "-m", "sim", "run", "-m", f"hydra.sweep.dir={tmp_path}", "num_requests=40",
                           "policy=fcfs,qllm", "rate=2,5", "progress=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "sweep.csv")
    assert list(table.columns[:2]) == ["policy", "rate"] and "num_requests" not in table.columns  # same in every job
    assert table[["policy", "rate"]].values.tolist() == [["fcfs", 2], ["fcfs", 5], ["qllm", 2], ["qllm", 5]]
    for job, row in zip(sorted(tmp_path.glob("*/summary.json")), table.itertuples(index=False)):
        summary = json.loads(job.read_text())
        assert row[table.columns.get_loc("LS TTFT mean ms")] == pytest.approx(summary["classes"]["LS"]["ttft_mean_s"]
                                                                              * 1e3)
        assert row[table.columns.get_loc("tokens/s")] == pytest.approx(summary["throughput"]["tokens_per_s"])
    assert "4 runs" in done.stdout and "| policy | rate | LS TTFT mean ms |" in done.stdout
