"""real.report: the serving table's ratios against the baseline and the reaction time in layer
times, on hand-made runs with known answers; calibrate.newshape on the CPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from calibrate import newshape
from real.report import compare, main, markdown, reaction_parts, reaction_table, runs_table
from sim.results import REQUEST_COLUMNS, with_latencies


def write_run(root, policy: str, seed: int, ls_ttft_s: float, finish_s: float, reaction_s: float,
              layer_s: float, **settings) -> None:
    """Two LS and two BE requests of 10 tokens each, arriving at 0 and 1 s (`settings`: the run's switches)."""
    folder = root / f"{policy}_seed{seed}{''.join(f'_{k}{v}' for k, v in settings.items())}"
    folder.mkdir()
    rows = []
    for i, (priority, arrival) in enumerate([("LS", 0.0), ("LS", 1.0), ("BE", 0.0), ("BE", 1.0)]):
        ttft = ls_ttft_s if priority == "LS" else 0.5
        rows.append(("real", policy, 8.0, seed, i, priority, arrival, arrival + reaction_s, arrival + ttft,
                     finish_s if arrival else finish_s - 1.0, 20, 10, 10, 0))
    with_latencies(pd.DataFrame(rows, columns=REQUEST_COLUMNS)).to_parquet(folder / "requests.parquet")
    (folder / "summary.json").write_text(json.dumps({"run": {"policy": policy, "rate": 8.0, "seed": seed,
                                                              **settings}}))
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


def test_an_ab_in_one_folder_is_compared_per_setting(tmp_path):
    """--by: each run against the baseline's run of the same setting; without it, two baselines of one rate and
    seed are an error that names the way out, not a traceback."""
    for graphs, fcfs_s, qllm_s in ((False, 4.0, 5.0), (True, 5.0, 4.0)):
        write_run(tmp_path, "fcfs", 2, 1.0, fcfs_s, 0.5, 0.001, pass_graphs=graphs)
        write_run(tmp_path, "qllm", 2, 0.25, qllm_s, 0.002, 0.001, pass_graphs=graphs)
    table = compare(runs_table(tmp_path, by="pass_graphs"), "fcfs", "pass_graphs")
    ratios = table.set_index(["policy", "pass_graphs"])["tokens/s ratio"]
    assert ratios[("qllm", "False")] == pytest.approx(4.0 / 5.0) and ratios[("qllm", "True")] == pytest.approx(1.25)
    with pytest.raises(SystemExit, match="--by SETTING"):
        main([str(tmp_path)])


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


def test_reaction_split_into_notice_host_and_device(tmp_path):
    """Two LS requests: one noticed at once, decided in 0.8 ms and running 0.1 ms later on an urgent stream;
    one noticed 3 ms late (the host was issuing), on the main stream. A BE layer-0 advance issued before the
    second arrival is not taken for its batch."""
    folder = tmp_path / "qllm_catchup_seed2"
    folder.mkdir()
    rows = [("real", "qllm_catchup", 8.0, 2, 0, "LS", 1.000, 1.0009, 1.05, 1.5, 20, 10, 10, 0),
            ("real", "qllm_catchup", 8.0, 2, 1, "LS", 2.000, 2.0040, 2.05, 2.5, 20, 10, 10, 0),
            ("real", "qllm_catchup", 8.0, 2, 2, "BE", 0.500, 0.5000, 0.60, 1.9, 20, 10, 10, 0)]
    with_latencies(pd.DataFrame(rows, columns=REQUEST_COLUMNS)).to_parquet(folder / "requests.parquet")
    (folder / "summary.json").write_text(json.dumps({"run": {"policy": "qllm_catchup", "rate": 8.0, "seed": 2}}))
    steps = pd.DataFrame({"batch_id": [7, 8, 7, 9], "kind": ["advance"] * 4, "from_layer": [0, 0, 5, 0],
                          "to_layer": [1, 1, 7, 1],
                          "level": [0, 1, 0, 0], "decided_s": [0.4999, 1.0000, float("nan"), 2.0030],
                          "issued_s": [0.5, 1.0008, 1.9, 2.0038], "begin_s": [0.5, 1.0009, 1.9, 2.0040],
                          "end_s": [0.501, 1.002, 2.01, 2.005]})
    steps.to_parquet(folder / "steps.parquet")
    parts = reaction_parts(pd.read_parquet(folder / "requests.parquet"), steps).set_index("request_id")
    assert parts.loc[0, ["reaction", "notice", "host", "device"]].tolist() == pytest.approx([0.9, 0.0, 0.8, 0.1])
    assert parts.loc[1, ["reaction", "notice", "host", "device"]].tolist() == pytest.approx([4.0, 3.0, 0.8, 0.2])
    assert parts.level.tolist() == [1, 0]
    # layers: 1, 1.1, 55 and 1 ms (median 1.05); the first arrival finds the device idle (the median layer),
    # the second a 55 ms layer (layers 5-6 of a 110 ms advance)
    assert parts["in-flight layers"].tolist() == pytest.approx([0.9 / 1.05, 4.0 / 55])
    assert parts.found.tolist() == ["idle", "BE"]  # batch 7 is the BE request's
    table = reaction_table(tmp_path).set_index("run")
    assert table.loc["all", "LS"] == 2 and table.loc["all", "over 2 ms"] == 1
    assert table.loc["all", "urgent share"] == pytest.approx(0.5)
    assert table.loc["all", "within one in-flight layer"] == pytest.approx(1.0)
    assert table.loc["all, found BE", "LS"] == table.loc["all, found idle", "LS"] == 1
    assert table.loc["all, found BE, not held", "LS"] == 1  # noticed 3 ms late, no consult between: not held back
    assert parts.held.tolist() == [False, False]
    held = steps.assign(decided_s=[0.4999, 1.0000, 2.0010, 2.0030])  # a consult at 2.001 did not start request 1
    assert reaction_parts(pd.read_parquet(folder / "requests.parquet"), held).held.tolist() == [False, True]
    main([str(tmp_path), "--reaction", "--out", str(tmp_path / "reaction.csv")])  # the table, as a CSV too
    assert pd.read_csv(tmp_path / "reaction.csv").set_index("run").loc["all", "LS"] == 2
    by = reaction_table(tmp_path, by="rehearse_us")  # a setting the run did not log: pooled as None
    assert set(by.policy) == {"qllm_catchup rehearse_us=None"} and len(by) == len(table)
    assert "notice: pipe p50 ms" not in table  # no run came through the front end's process
    # served through real.frontend: request 1 reached the pipe 0.5 ms after its admission, the engine's poll found
    # it 2 ms later (the host was issuing), and the consult began 0.5 ms after that
    pd.DataFrame({"request_id": [1, 2], "arrival_s": [2.000, 0.5], "sent_s": [2.0005, 0.5], "seen_s": [2.0025, 0.5],
                  "received_s": [2.0026, 0.5]}).to_parquet(folder / "frontend.parquet")
    legs = reaction_parts(pd.read_parquet(folder / "requests.parquet"), steps,
                          pd.read_parquet(folder / "frontend.parquet")).set_index("request_id")
    assert legs.loc[1, ["child", "pipe", "loop"]].tolist() == pytest.approx([0.5, 2.0, 0.5])
    assert legs.loc[0, ["child", "pipe", "loop"]].isna().all()  # not in the front end's table
    served = reaction_table(tmp_path).set_index("run")
    assert served.loc["all, found BE", "notice: pipe p50 ms"] == pytest.approx(2.0)


def test_arrivals_during_an_lm_head_or_a_batch_start_are_pooled_apart(tmp_path):
    """LS request 0 arrives at 1.000 s while a pass's LM head (issued at 0.990) runs until 1.004: the host
    waits in its token sync. LS request 1 arrives at 2.000 s with the host idle. LS request 2 arrives at 3.000 s
    while the host starts BE batch 6 (consulted at 2.9995, its first advance issued at 3.0008), after batch 5's
    LM head: the start, the host's work at the arrival, names it."""
    folder = tmp_path / "qllm_catchup_seed2"
    folder.mkdir()
    rows = [("real", "qllm_catchup", 8.0, 2, 0, "LS", 1.000, 1.0052, 1.05, 1.5, 20, 10, 10, 0),
            ("real", "qllm_catchup", 8.0, 2, 1, "LS", 2.000, 2.0009, 2.05, 2.5, 20, 10, 10, 0),
            ("real", "qllm_catchup", 8.0, 2, 2, "LS", 3.000, 3.0020, 3.05, 3.5, 20, 10, 10, 0)]
    with_latencies(pd.DataFrame(rows, columns=REQUEST_COLUMNS)).to_parquet(folder / "requests.parquet")
    (folder / "summary.json").write_text(json.dumps({"run": {"policy": "qllm_catchup", "rate": 8.0, "seed": 2}}))
    steps = pd.DataFrame({"batch_id": [3, 3, 4, 5, 5, 6, 7],
                          "kind": ["advance", "finish", "advance", "advance", "finish", "advance", "advance"],
                          "from_layer": [0, 4, 0, 0, 4, 0, 0], "to_layer": [4, 4, 1, 4, 4, 1, 1],
                          "level": [0, 0, 0, 0, 0, 0, 1],
                          "decided_s": [0.95, float("nan"), 1.0045, 2.0, float("nan"), 2.9995, 3.0010],
                          "issued_s": [0.95, 0.990, 1.0050, 2.0008, 2.9990, 3.0008, 3.0016],
                          "begin_s": [0.95, 0.999, 1.0052, 2.0009, 2.9991, 3.0009, 3.0020],
                          "end_s": [0.999, 1.004, 1.006, 2.002, 3.0005, 3.004, 3.0030]})
    steps.to_parquet(folder / "steps.parquet")
    parts = reaction_parts(pd.read_parquet(folder / "requests.parquet"), steps).set_index("request_id")
    assert parts["host in"].tolist() == ["LM head", "other", "start"]
    assert parts.loc[0, "notice"] == pytest.approx(4.5)  # the LM head's sync, then the consult
    assert parts.loc[2, ["notice", "host"]].tolist() == pytest.approx([1.0, 0.6])  # the start's rest, then its own
    table = reaction_table(tmp_path).set_index("run")
    assert table.loc["all, host in LM head", "LS"] == 1
    assert table.loc["all, host in LM head", "reaction p50 ms"] == pytest.approx(5.2)
    assert table.loc["all, host in start", "LS"] == 1
    assert table.loc["all, host in start", "reaction p50 ms"] == pytest.approx(2.0)


def test_reaction_table_without_step_logs_names_the_saved_reaction_table(tmp_path):
    """Committed results may drop their step logs for size: the error says so and points at the table kept."""
    write_run(tmp_path, "qllm", 1, 0.1, 3.0, 0.001, 0.001)  # its step log lacks decided_s and level
    with pytest.raises(SystemExit, match="no step logs") as error:
        reaction_table(tmp_path)
    assert "reaction table saved" not in str(error.value)
    (tmp_path / "reaction.csv").write_text("policy\n")
    with pytest.raises(SystemExit, match=r"leave them out for size; the reaction table saved with them: .*reaction\.csv"):
        reaction_table(tmp_path)
