"""The figure notebooks execute headless on a small sweep and write their PNGs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sim.collect import consolidate

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("sweep")
    done = subprocess.run(
        [sys.executable, "-m", "sim", "run", "-m", "experiment=paper", "policy=fcfs,qllm", "rate=2,6", "seed=0,1",
         "num_requests=40", "progress=false", f"hydra.sweep.dir={base / 'runs'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    consolidate(base / "runs", base / "results")
    return base


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_executes_and_writes_its_figure(notebook, small_sweep, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    figures = small_sweep / "figures"
    monkeypatch.setenv("QLLM_RESULTS", str(small_sweep / "results"))
    monkeypatch.setenv("QLLM_FIGURES", str(figures))
    nb = jupytext.read(notebook)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert (figures / f"{notebook.stem}.png").stat().st_size > 10_000


def test_reproduce_tables_the_claims_and_rejects_a_policy_the_sweep_lacks(small_sweep):
    def reproduce(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sim.reproduce", str(small_sweep / "results"), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    table = reproduce()
    assert table.returncode == 0 and table.stdout.count("\n| ") == 9  # nine claims below the header
    missing = reproduce("--policy", "qllm_lsonly")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "no rate run with both 'fcfs' and 'qllm_lsonly' (policies there: fcfs, qllm)" in missing.stderr
