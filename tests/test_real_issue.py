"""real.issue: a whole prefill pass's host issue per layer, read from the step log, and its least-squares line."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from real.issue import issue_table, main, prefill_passes

LAYERS = 4


def steps_of(passes: list[tuple[int, int, float]], start_s: float = 0.0) -> pd.DataFrame:
    """Per (prompts, tokens, issue ms per layer): the pass's advance, its LM head, then a decode pass of the same
    sequences (not a prefill: left out)."""
    rows, t = [], start_s
    for batch, (prompts, tokens, issue_ms) in enumerate(passes):
        head_s = t + LAYERS * issue_ms / 1e3
        rows.append({"batch_id": batch, "kind": "advance", "from_layer": 0, "to_layer": LAYERS, "num_seqs": prompts,
                     "num_prefill_seqs": prompts, "num_tokens": tokens, "issued_s": t, "begin_s": t + 1e-3,
                     "end_s": t + 1e-3 + LAYERS * 2e-3})
        rows.append({"batch_id": batch, "kind": "finish", "from_layer": LAYERS, "to_layer": LAYERS, "num_seqs": prompts,
                     "num_prefill_seqs": prompts, "num_tokens": tokens, "issued_s": head_s, "begin_s": head_s,
                     "end_s": head_s + 1e-4})
        rows.append({"batch_id": batch, "kind": "advance", "from_layer": 0, "to_layer": LAYERS, "num_seqs": prompts,
                     "num_prefill_seqs": 0, "num_tokens": prompts, "issued_s": head_s + 1e-3,
                     "begin_s": head_s + 2e-3, "end_s": head_s + 3e-3})
        t = head_s + 0.1
    return pd.DataFrame(rows)


def line(prompts: int, tokens: int, lean: bool) -> float:
    """Issue ms per layer: 2 ms (1.5 lean) + 0.3 ms per 1,000 tokens + 0.05 ms per prompt."""
    return (1.5 if lean else 2.0) + 0.3 * tokens / 1000 + 0.05 * prompts


def write_run(folder, lean: bool, shapes: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True)
    steps_of([(p, t, line(p, t, lean)) for p, t in shapes]).to_parquet(folder / "steps.parquet")
    pd.DataFrame({"request_id": [0]}).to_parquet(folder / "requests.parquet")
    run = {"policy": "fcfs", "rate": 18, "seed": 1, "lean_attention": lean}
    (folder / "summary.json").write_text(json.dumps({"run": run}))


def test_a_prefill_pass_is_read_on_the_host_clock_and_decode_passes_are_left_out():
    passes = prefill_passes(steps_of([(2, 300, 3.0), (5, 1200, 2.5)]))
    assert passes.prompts.tolist() == [2, 5] and passes.tokens.tolist() == [300, 1200]
    assert passes.issue_ms.tolist() == pytest.approx([3.0, 2.5])
    assert passes.device_ms.tolist() == pytest.approx([2.0, 2.0])


def test_two_settings_compare_at_one_reference_pass(tmp_path):
    """The lean runs formed smaller passes than the others; their medians mix shape and setting, the line at
    the reference shape (1,000 tokens, 4 prompts) separates them: exactly 0.5 ms here."""
    write_run(tmp_path / "off", False, [(4, 800), (8, 2500), (2, 400), (6, 1500), (3, 900)])
    write_run(tmp_path / "on", True, [(1, 100), (2, 300), (4, 1000), (1, 50), (3, 600), (2, 200)])
    table = issue_table(tmp_path, by="lean_attention")
    at = "issue ms at 1000 tokens, 4 prompts"
    pooled = table[table.run == "all"].set_index("lean_attention")
    assert pooled.loc[False, at] == pytest.approx(line(4, 1000, False))
    assert pooled.loc[True, at] == pytest.approx(line(4, 1000, True))
    assert pooled.loc[False, at] - pooled.loc[True, at] == pytest.approx(0.5)
    assert pooled.passes.tolist() == [5, 6]
    assert table[table.run != "all"].shape[0] == 2


def test_too_few_passes_give_no_line_and_bad_folders_a_message(tmp_path, capsys):
    write_run(tmp_path / "few", False, [(1, 100), (2, 200)])
    assert issue_table(tmp_path).iloc[0].isna()["issue ms at 1000 tokens, 4 prompts"]
    with pytest.raises(SystemExit, match="no such folder"):
        main([str(tmp_path / "missing")])
    (tmp_path / "bare" / "run").mkdir(parents=True)
    pd.DataFrame({"request_id": [0]}).to_parquet(tmp_path / "bare" / "run" / "requests.parquet")
    (tmp_path / "bare" / "run" / "summary.json").write_text(json.dumps({"run": {"policy": "fcfs"}}))
    with pytest.raises(SystemExit, match="no run folder with a step log"):
        main([str(tmp_path / "bare")])
