"""calibrate.splice: one implementation's rows of a profile replaced by another run's, the rest kept."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from calibrate.splice import main, splice, splice_passes

META = {"model": "mixtral-8x7b", "dtype": "bfloat16", "gpu": "NVIDIA H200"}


def write(folder, stages, passes, meta, steps=None):
    folder.mkdir()
    pd.DataFrame(stages, columns=["impl", "stage", "time_s"]).to_csv(folder / "stages.csv", index=False)
    pd.DataFrame(passes, columns=["impl", "batch", "time_s"]).to_csv(folder / "passes.csv", index=False)
    (folder / "meta.json").write_text(json.dumps(meta))
    if steps is not None:
        pd.DataFrame(steps, columns=["impl", "step", "time_s"]).to_csv(folder / "hf_steps.csv", index=False)


def test_splice_replaces_one_impl_and_keeps_the_rest(tmp_path):
    profile, run = tmp_path / "profile", tmp_path / "run"
    write(profile, [("engine", "router", 1.0), ("hf", "router", 2.0), ("hf", "embed", 3.0)],
          [("engine", 1, 0.1), ("engine-graphs", 1, 0.2), ("hf-grouped_mm", 1, 0.3), ("hf-eager", 1, 0.4)],
          {**META, "other_sources": {"events.csv server_*": "calibrate serving"}}, [("hf-grouped_mm", 0, 9.0)])
    write(run, [("hf", "router", 5.0)], [("hf-grouped_mm", 1, 0.5), ("hf-grouped_mm", 8, 0.6)],
          {**META, "date": "2026-12-06", "git_revision": "abc"}, [("hf-grouped_mm", 0, 7.0)])
    counts = splice(run, profile, "hf")
    assert counts == {"stages": 1, "passes": 2, "hf_steps": 1}
    stages, passes = pd.read_csv(profile / "stages.csv"), pd.read_csv(profile / "passes.csv")
    assert sorted(map(tuple, stages[["impl", "stage", "time_s"]].values.tolist())) == [
        ("engine", "router", 1.0), ("hf", "router", 5.0)]
    assert sorted(passes.impl) == ["engine", "engine-graphs", "hf-grouped_mm", "hf-grouped_mm"]
    assert set(passes[passes.impl == "hf-grouped_mm"].time_s) == {0.5, 0.6}
    assert pd.read_csv(profile / "hf_steps.csv").time_s.tolist() == [7.0]
    sources = json.loads((profile / "meta.json").read_text())["other_sources"]
    assert "events.csv server_*" in sources and any("2026-12-06" in v and "abc" in v for v in sources.values())


@pytest.mark.parametrize("change, message", [({"gpu": "NVIDIA H100"}, "gpu"), ({"dtype": "float32"}, "dtype")])
def test_splice_refuses_a_run_of_another_setup(tmp_path, change, message):
    profile, run = tmp_path / "profile", tmp_path / "run"
    write(profile, [("hf", "router", 2.0)], [("hf-eager", 1, 0.4)], META)
    write(run, [("hf", "router", 5.0)], [("hf-eager", 1, 0.5)], {**META, **change})
    with pytest.raises(ValueError, match=message):
        splice(run, profile, "hf")
    assert pd.read_csv(profile / "stages.csv").time_s.tolist() == [2.0]  # untouched


def test_splice_refuses_a_run_without_the_rows(tmp_path):
    profile, run = tmp_path / "profile", tmp_path / "run"
    write(profile, [("hf", "router", 2.0)], [("hf-eager", 1, 0.4)], META)
    write(run, [("engine", "router", 5.0)], [("engine", 1, 0.5)], META)
    with pytest.raises(ValueError, match="no hf rows"):
        splice(run, profile, "hf")


def test_splice_of_one_stage_adds_it_and_keeps_every_other_row(tmp_path):
    """`--stage`: a stage the engine gained (attention_prefill_varlen), timed alone on another lease; the
    profile's other stages of that implementation, its passes and the other implementation stay."""
    profile, run = tmp_path / "profile", tmp_path / "run"
    write(profile, [("engine", "router", 1.0), ("engine", "attention_prefill", 2.0), ("hf", "router", 3.0)],
          [("engine", 1, 0.1)], META)
    write(run, [("engine", "attention_prefill", 9.0), ("engine", "attention_prefill_varlen", 4.0),
                ("engine", "attention_prefill_varlen", 4.5)], [], {**META, "date": "2026-12-06"})
    assert splice(run, profile, "engine", "attention_prefill_varlen") == {"stages": 2}
    stages = pd.read_csv(profile / "stages.csv")
    assert sorted(map(tuple, stages[["impl", "stage", "time_s"]].values.tolist())) == [
        ("engine", "attention_prefill", 2.0), ("engine", "attention_prefill_varlen", 4.0),
        ("engine", "attention_prefill_varlen", 4.5), ("engine", "router", 1.0), ("hf", "router", 3.0)]
    assert pd.read_csv(profile / "passes.csv").time_s.tolist() == [0.1]
    assert any("stage=attention_prefill_varlen" in k for k in json.loads((profile / "meta.json").read_text())
               ["other_sources"])
    with pytest.raises(ValueError, match="no engine rows of stage embed"):
        splice(run, profile, "engine", "embed")


def test_a_spliced_stage_goes_on_the_profiles_host_clock_by_a_reference_stage(tmp_path):
    """The run's host was 1.25x the profile's on the stage both measured: its new stage's host times / 1.25."""
    columns = ["impl", "stage", "x1", "x2", "host_s", "gpu_s"]
    profile, run = tmp_path / "profile", tmp_path / "run"
    for folder, rows in ((profile, [("engine", "attention_prefill", 1, 32, 1.0, 0.2),
                                    ("engine", "attention_prefill", 2, 32, 2.0, 0.3)]),
                         (run, [("engine", "attention_prefill", 1, 32, 1.25, 0.2),
                                ("engine", "attention_prefill", 2, 32, 2.5, 0.3),
                                ("engine", "attention_prefill_varlen", 1, 32, 0.5, 0.1)])):
        folder.mkdir()
        pd.DataFrame(rows, columns=columns).to_csv(folder / "stages.csv", index=False)
        (folder / "meta.json").write_text(json.dumps(META))
    splice(run, profile, "engine", "attention_prefill_varlen", host_reference="attention_prefill")
    stages = pd.read_csv(profile / "stages.csv")
    varlen = stages[stages.stage == "attention_prefill_varlen"]
    assert varlen.host_s.tolist() == pytest.approx([0.4]) and varlen.gpu_s.tolist() == [0.1]
    assert stages[stages.stage == "attention_prefill"].host_s.tolist() == [1.0, 2.0]
    assert any("x 0.800" in v for v in json.loads((profile / "meta.json").read_text())["other_sources"].values())


def test_splice_of_one_pass_impl_replaces_those_passes_only(tmp_path):
    """`--passes engine-graphs`: graph passes at more batch sizes from another lease; the engine's stepped passes,
    HF's passes and every stage row stay."""
    profile, run = tmp_path / "profile", tmp_path / "run"
    write(profile, [("engine", "router", 1.0)],
          [("engine", 1, 0.1), ("engine-graphs", 1, 0.2), ("engine-graphs", 32, 0.3), ("hf-eager", 1, 0.4)], META)
    write(run, [("engine", "router", 9.0)],
          [("engine", 1, 0.9), ("engine-graphs", 1, 0.21), ("engine-graphs", 16, 0.25), ("engine-graphs", 32, 0.31)],
          {**META, "date": "2026-12-07"})
    assert splice_passes(run, profile, "engine-graphs") == {"passes": 3}
    passes = pd.read_csv(profile / "passes.csv")
    assert sorted(map(tuple, passes[["impl", "batch", "time_s"]].values.tolist())) == [
        ("engine", 1, 0.1), ("engine-graphs", 1, 0.21), ("engine-graphs", 16, 0.25), ("engine-graphs", 32, 0.31),
        ("hf-eager", 1, 0.4)]
    assert pd.read_csv(profile / "stages.csv").time_s.tolist() == [1.0]
    sources = json.loads((profile / "meta.json").read_text())["other_sources"]
    assert "batches 1, 16, 32" in sources["passes.csv impl=engine-graphs"]
    with pytest.raises(ValueError, match="no hf-grouped_mm passes"):
        splice_passes(run, profile, "hf-grouped_mm")


def test_splice_cli_refuses_passes_with_a_stage(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), str(tmp_path), "--passes", "engine-graphs", "--stage", "router"])
    assert exit_.value.code == 2 and "one at a time" in capsys.readouterr().err
