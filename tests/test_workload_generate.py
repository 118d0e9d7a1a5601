"""Generated traces: arrival statistics, LS share, reproducibility, length modes, bad settings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.workload import WorkloadConfig, WorkloadError, generate_trace, load_lengths
from sim.workload.lengths import vllm_filter

N, RATE = 20_000, 5.0


def _gaps(trace: pd.DataFrame) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], trace.arrival_s.to_numpy()]))


def test_poisson_rate_ls_share_and_variation_within_bounds():
    trace = generate_trace(WorkloadConfig(rate=RATE, num_requests=N), seed=1)
    gaps = _gaps(trace)
    assert abs(gaps.mean() - 1 / RATE) < 5 * (1 / RATE) / np.sqrt(N)  # exponential: sd = mean
    assert abs(gaps.std() / gaps.mean() - 1.0) < 0.05  # CV of an exponential = 1
    assert abs((trace.priority == "LS").mean() - 0.2) < 5 * np.sqrt(0.2 * 0.8 / N)


def test_gamma_burstiness_quarter_doubles_variation():
    gaps = _gaps(generate_trace(WorkloadConfig(rate=RATE, num_requests=N, burstiness=0.25), seed=1))
    assert abs(gaps.mean() - 1 / RATE) < 5 * 2 * (1 / RATE) / np.sqrt(N)
    assert abs(gaps.std() / gaps.mean() - 2.0) < 0.15  # CV = 1 / sqrt(burstiness)


def test_duration_bounds_arrivals():
    trace = generate_trace(WorkloadConfig(rate=10.0, num_requests=None, duration_s=100.0), seed=3)
    assert trace.arrival_s.max() < 100.0 and abs(len(trace) - 1000) < 5 * np.sqrt(1000)


def test_trace_is_sorted_with_ids_in_arrival_order():
    trace = generate_trace(WorkloadConfig(rate=50.0, num_requests=2000, burstiness=0.1), seed=2)
    assert trace.arrival_s.is_monotonic_increasing and (trace.arrival_s >= 0).all()
    assert trace.request_id.tolist() == list(range(2000))
    assert list(trace.columns) == ["request_id", "arrival_s", "prompt_tokens", "output_tokens", "priority"]


def test_one_seed_reproduces_a_trace_exactly():
    cfg = WorkloadConfig(rate=3.0, num_requests=500)
    pd.testing.assert_frame_equal(generate_trace(cfg, 7), generate_trace(cfg, 7), check_exact=True)
    other = generate_trace(cfg, 8)
    assert not np.array_equal(other.arrival_s, generate_trace(cfg, 7).arrival_s)


def test_ls_share_moves_neither_arrivals_nor_lengths():
    a = generate_trace(WorkloadConfig(rate=3.0, num_requests=300, ls_fraction=0.2), 7)
    b = generate_trace(WorkloadConfig(rate=3.0, num_requests=300, ls_fraction=0.6), 7)
    pd.testing.assert_frame_equal(a.drop(columns="priority"), b.drop(columns="priority"))
    assert (b.priority == "LS").sum() > (a.priority == "LS").sum()
    assert set(a.priority[a.priority == "LS"].index) <= set(b.priority[b.priority == "LS"].index)


@pytest.mark.parametrize("share,expected", [(0.0, {"BE"}), (1.0, {"LS"})])
def test_ls_share_extremes(share, expected):
    trace = generate_trace(WorkloadConfig(rate=3.0, num_requests=200, ls_fraction=share), 0)
    assert set(trace.priority) == expected


def test_default_filters_leave_nothing_out_of_bounds():
    trace = generate_trace(WorkloadConfig(rate=5.0, num_requests=5000), 0)
    assert trace.prompt_tokens.between(4, 1024).all() and trace.output_tokens.ge(4).all()
    assert (trace.prompt_tokens + trace.output_tokens).le(2048).all()


def test_unfiltered_sampling_reaches_beyond_the_bounds():
    trace = generate_trace(WorkloadConfig(rate=5.0, num_requests=5000, filters=False), 0)
    assert (trace.prompt_tokens > 1024).any() and (trace.output_tokens >= 1).all()


def test_fixed_output_mode_caps_and_keeps_prompts():
    reference = generate_trace(WorkloadConfig(rate=5.0, num_requests=300), 4)
    cfg = WorkloadConfig(rate=5.0, num_requests=300, output_mode="fixed", fixed_output_tokens=32)
    fixed = generate_trace(cfg, 4)
    assert (fixed.output_tokens == 32).all() and (reference.output_tokens > 32).any()
    pd.testing.assert_series_equal(fixed.prompt_tokens, reference.prompt_tokens)


def test_paper_preset_takes_prompts_in_file_order():
    cfg = WorkloadConfig(rate=5.0, num_requests=50, output_mode="fixed", filters=False, sampling="file_order")
    table = load_lengths()
    assert generate_trace(cfg, 0).prompt_tokens.tolist() == table.prompt_tokens[:50].tolist()
    filtered = generate_trace(WorkloadConfig(rate=5.0, num_requests=50, sampling="file_order"), 9)
    assert filtered.prompt_tokens.tolist() == vllm_filter(table).prompt_tokens[:50].tolist()


def test_custom_length_table(tmp_path):
    path = tmp_path / "lengths.csv"
    table = pd.DataFrame({"conversation_id": ["a", "b"], "prompt_tokens": [10, 20], "output_tokens": [5, 0]})
    table.to_csv(path, index=False)
    trace = generate_trace(WorkloadConfig(rate=1.0, num_requests=4, filters=False, sampling="file_order",
                                          lengths_path=str(path)), 0)
    assert trace.prompt_tokens.tolist() == [10, 20, 10, 20]
    assert trace.output_tokens.tolist() == [5, 1, 5, 1]  # an empty reply still yields one token


BAD_SETTINGS = [
    ({"rate": 0}, "rate must be > 0"),
    ({"rate": -1.0}, "rate must be > 0"),
    ({"rate": float("nan")}, "rate must be > 0"),
    ({"ls_fraction": 1.5}, r"ls_fraction must be in \[0, 1\]"),
    ({"ls_fraction": -0.1}, r"ls_fraction must be in \[0, 1\]"),
    ({"num_requests": None}, "exactly one of num_requests and duration_s"),
    ({"duration_s": 10.0}, "exactly one of num_requests and duration_s"),
    ({"num_requests": 0}, "num_requests must be an integer >= 1"),
    ({"num_requests": None, "duration_s": -5.0}, "duration_s must be > 0"),
    ({"burstiness": 0}, "burstiness must be > 0"),
    ({"output_mode": "capped"}, "output_mode must be one of"),
    ({"fixed_output_tokens": 0}, "fixed_output_tokens must be an integer >= 1"),
    ({"sampling": "sorted"}, "sampling must be one of"),
    ({"filters": "yes"}, "filters must be true or false"),
]


@pytest.mark.parametrize("bad,message", BAD_SETTINGS, ids=[str(b[0]) for b in BAD_SETTINGS])
def test_bad_workload_settings_are_rejected(bad, message):
    with pytest.raises(WorkloadError, match=message):
        WorkloadConfig(**{"rate": 1.0, **bad})


def test_missing_length_table_is_a_workload_error(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        generate_trace(WorkloadConfig(rate=1.0, lengths_path=str(tmp_path / "none.csv")), 0)
