"""real.report: the serving table's ratios against the baseline and the reaction time in layer
times, on hand-made runs with known answers; calibrate.newshape on the CPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from calibrate import newshape
from real.report import compare, markdown, runs_table
from sim.results import REQUEST_COLUMNS, with_latencies


def write_run(root, policy: str, seed: int, ls_ttft_s: float, finish_s: float, reaction_s: float,
              layer_s: float) -> None:
    """Two LS and two BE requests of 10 tokens each, arriving at 0 and 1 s."""
    folder = root / f"{policy}_seed{seed}"
    folder.mkdir()
    rows = []
    for i, (priority, arrival) in enumerate([("LS", 0.0), ("LS", 1.0), ("BE", 0.0), ("BE", 1.0)]):
        ttft = ls_ttft_s if priority == "LS" else 0.5
        rows.append(("real", policy, 8.0, seed, i, priority, arrival, arrival + reaction_s, arrival + ttft,
                     finish_s if arrival else finish_s - 1.0, 20, 10, 10, 0))
    with_latencies(pd.DataFrame(rows, columns=REQUEST_COLUMNS)).to_parquet(folder / "requests.parquet")
    (folder / "summary.json").write_text(json.dumps({"run": {"policy": policy, "rate": 8.0, "seed": seed}}))
    steps = pd.DataFrame({"kind": ["advance", "advance", "finish"], "from_layer": [0, 2, 4], "to_layer": [2, 4, 4],
                          "begin_s": [0.0, 1.0, 2.0], "end_s": [2 * layer_s, 1.0 + 2 * layer_s, 2.1]})
    steps.to_parquet(folder / "steps.parquet")


def test_ratios_against_the_baseline_and_reaction_in_layers(tmp_path):
    write_run(tmp_path, "fcfs", 2, ls_ttft_s=1.0, finish_s=4.0, reaction_s=0.5, layer_s=0.001)
    write_run(tmp_path, "qllm", 2, ls_ttft_s=0.25, finish_s=5.0, reaction_s=0.002, layer_s=0.001)
    table = compare(runs_table(tmp_path), "fcfs").set_index("policy")
    assert table.loc["qllm", "LS TTFT reduction"] == pytest.approx(4.0)
    assert table.loc["fcfs", "tokens/s ratio"] == pytest.approx(1.0)
    assert table.loc["qllm", "tokens/s ratio"] == pytest.approx(4.0 / 5.0)  # 40 tokens in 4 s vs 5 s
    assert table.loc["qllm", "layer ms"] == pytest.approx(1.0)
    assert table.loc["qllm", "reaction p50 layers"] == pytest.approx(2.0)
    assert table.loc["fcfs", "reaction p50 ms"] == pytest.approx(500.0)
    assert markdown(table.reset_index()).count("\n") == 3  # header, rule, two rows


def test_a_missing_baseline_is_an_error(tmp_path):
    write_run(tmp_path, "qllm", 2, ls_ttft_s=0.25, finish_s=5.0, reaction_s=0.002, layer_s=0.001)
    with pytest.raises(SystemExit, match="no fcfs runs"):
        compare(runs_table(tmp_path), "fcfs")


def test_an_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no runs"):
        runs_table(tmp_path)


def test_newshape_times_first_and_second_calls(tmp_path):
    newshape.main(["--model", "tiny-mixtral", "--device", "cpu", "--shapes", "2", "--max-len", "64",
                   "--backends", "engine", "math", "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "newshape.csv")
    assert len(table) == 2 * 2 * 2 * 2  # backends x shapes x stages x calls
    assert set(table.call) == {"first", "second"} and (table.time_s > 0).all()
    firsts = table[table.call == "first"].set_index(["backend", "stage", "tokens"]).index
    assert firsts.is_unique  # every shape new to its backend
