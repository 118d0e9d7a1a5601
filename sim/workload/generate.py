"""Generating a trace from a workload config and one seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim.workload.arrivals import arrival_times, choose_priorities
from sim.workload.config import WorkloadConfig
from sim.workload.lengths import load_lengths, sample_lengths, vllm_filter


def generate_trace(cfg: WorkloadConfig, seed: int) -> pd.DataFrame:
    """Columns request_id, arrival_s, prompt_tokens, output_tokens, priority ('LS'/'BE'),
    sorted by arrival; request ids count from 0 in arrival order.

    Arrivals, lengths and priorities draw from independent streams spawned from `seed`, so
    changing the LS share does not move arrival times or lengths, and vice versa."""
    streams = np.random.SeedSequence(seed).spawn(3)
    arrival_rng, length_rng, class_rng = (np.random.default_rng(s) for s in streams)
    arrivals = arrival_times(arrival_rng, cfg.rate, cfg.burstiness, cfg.num_requests, cfg.duration_s)
    prompts, outputs = _lengths(cfg, len(arrivals), length_rng)
    return pd.DataFrame({
        "request_id": np.arange(len(arrivals), dtype=np.int64),
        "arrival_s": arrivals.astype(np.float64),
        "prompt_tokens": prompts,
        "output_tokens": outputs,
        "priority": choose_priorities(class_rng, len(arrivals), cfg.ls_fraction),
    })


def _lengths(cfg: WorkloadConfig, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output token counts of `n` requests (both >= 1, as a trace requires)."""
    table = load_lengths(cfg.lengths_path)
    if cfg.filters:
        table = vllm_filter(table)
    rows = sample_lengths(table, n, rng, cfg.sampling)
    prompts = rows["prompt_tokens"].to_numpy(dtype=np.int64)
    if cfg.output_mode == "fixed":
        outputs = np.full(n, cfg.fixed_output_tokens, dtype=np.int64)
    else:  # an empty ShareGPT reply (unfiltered) still yields the one token a prefill produces
        outputs = rows["output_tokens"].to_numpy(dtype=np.int64)
    return np.maximum(prompts, 1), np.maximum(outputs, 1)
