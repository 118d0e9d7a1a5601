"""The start trace (real.starttrace): one row per batch start of a replay, its segments adding up, nothing kept
when off, and the table's command."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from real import run as real_run  # noqa: E402
from real import starttrace  # noqa: E402
from tests.test_real_run import spec  # noqa: E402


def traced(tmp_path, on: bool) -> tuple[pd.DataFrame, dict]:
    base = spec(100.0)
    run = dataclasses.replace(base, engine=dataclasses.replace(base.engine, trace_starts=on))
    return real_run.serve(run, tmp_path)


def test_a_replay_writes_one_row_per_batch_start_whose_segments_add_up(tmp_path):
    _, summary = traced(tmp_path, True)
    starts = pd.read_parquet(tmp_path / "starts.parquet")
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    first_advances = steps[(steps.kind == "advance") & (steps.from_layer == 0)].drop_duplicates("batch_id")
    assert summary["run"]["trace_starts"] and len(starts) == len(first_advances)
    assert set(starts.batch_id) == set(first_advances.batch_id)
    reaction = starts[[f"{s} us" for s in starttrace.REACTION_SEGMENTS]].sum(axis=1)
    assert ((reaction - starts["to mark us"]).abs() < 1e-3).all()
    assert (starts[[f"{s} us" for s in starttrace.SEGMENTS]] >= 0).all().all()
    assert (starts[["ids us", "layout us", "copy us", "embed us"]] > 0).all().all()  # every start passes them


def test_nothing_is_recorded_when_off(tmp_path):
    _, summary = traced(tmp_path, False)
    assert not summary["run"]["trace_starts"] and not (tmp_path / "starts.parquet").exists()
    starttrace.stamp("ids")  # outside a recording: a no-op
    starttrace.end(batch_id=0)


def test_a_consult_that_starts_nothing_leaves_no_row():
    with starttrace.recording() as recorder:
        starttrace.begin()
        starttrace.stamp("policy")
        starttrace.end(batch_id=1)
        starttrace.stamp("layout")  # a rehearsal's, between consults
        starttrace.end(batch_id=1)
        starttrace.begin()
        for point in ("policy", "sequences", "lane", "ids", "layout", "copy", "embed", "mark", "policy"):
            starttrace.stamp(point)
        starttrace.end(batch_id=2, level=1)
    assert [row["batch_id"] for row in recorder.rows] == [2]
    assert recorder.rows[0]["consulted us"] > 0  # the policy's second question, after the mark
    with pytest.raises(RuntimeError, match="already recording"), starttrace.recording(), starttrace.recording():
        pass


def test_the_command_prints_the_table_and_refuses_a_folder_without_traces(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    traced(tmp_path / "run", True)
    starttrace.main([str(tmp_path), "--out", str(tmp_path / "table.csv")])
    assert "to mark p50" in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "table.csv").starts.sum() == len(pd.read_parquet(tmp_path / "run" / "starts.parquet"))
    with pytest.raises(SystemExit, match="no starts.parquet"):
        starttrace.main([str(tmp_path / "run" / "nothing")])
