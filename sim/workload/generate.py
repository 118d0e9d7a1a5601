"""Generating a trace from a workload config and one seed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sim.workload.arrivals import arrival_times
from sim.workload.config import WorkloadConfig
from sim.workload.lengths import load_lengths, sample_lengths, vllm_filter


def generate_trace(cfg: WorkloadConfig, seed: int) -> pd.DataFrame:
    """Columns request_id, arrival_s, prompt_tokens, output_tokens, priority ('LS'/'BE').

    Arrivals, lengths and priorities use independent streams spawned from `seed`, so changing
    the LS share does not move arrival times, and vice versa."""
    arrival_rng, length_rng, class_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    arrivals = arrival_times(arrival_rng, cfg.rate, cfg.burstiness, cfg.num_requests, cfg.duration_s)
    table = load_lengths(cfg.lengths_path)
    if cfg.filters:
        table = vllm_filter(table)
    lengths = sample_lengths(table, len(arrivals), length_rng, file_order=cfg.sampling == "file_order")
    outputs = lengths["output_tokens"].to_numpy()
    if cfg.output_mode == "fixed":
        outputs = np.full(len(arrivals), cfg.fixed_output_tokens)
    is_ls = class_rng.random(len(arrivals)) < cfg.ls_fraction
    return pd.DataFrame({
        "request_id": np.arange(len(arrivals), dtype=np.int64),
        "arrival_s": arrivals,
        "prompt_tokens": lengths["prompt_tokens"].to_numpy(dtype=np.int64),
        "output_tokens": np.maximum(outputs, 1).astype(np.int64),
        "priority": np.where(is_ls, "LS", "BE"),
    })
