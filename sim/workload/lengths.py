"""The ShareGPT length table and the ways a workload samples prompt and output lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_LENGTHS = Path(__file__).resolve().parents[1] / "data" / "sharegpt_lengths.csv"

# vLLM serving-benchmark filters
MIN_TOKENS, MAX_PROMPT, MAX_TOTAL = 4, 1024, 2048


def load_lengths(path: Path | str | None = None) -> pd.DataFrame:
    path = Path(path) if path is not None else DEFAULT_LENGTHS
    if not path.exists():
        raise FileNotFoundError(f"length table {path} not found (rebuild: python -m sim.workload.build_lengths)")
    table = pd.read_csv(path)
    missing = {"prompt_tokens", "output_tokens"} - set(table.columns)
    if missing:
        raise ValueError(f"length table {path} lacks columns {sorted(missing)}")
    return table


def vllm_filter(table: pd.DataFrame) -> pd.DataFrame:
    """Drop prompt or output < 4 tokens, prompt > 1024, prompt + output > 2048."""
    p, o = table["prompt_tokens"], table["output_tokens"]
    keep = (p >= MIN_TOKENS) & (o >= MIN_TOKENS) & (p <= MAX_PROMPT) & (p + o <= MAX_TOTAL)
    return table[keep].reset_index(drop=True)


def sample_lengths(table: pd.DataFrame, n: int, rng: np.random.Generator, file_order: bool) -> pd.DataFrame:
    """`n` rows: in file order (wrapping around), or drawn at random with replacement."""
    if table.empty:
        raise ValueError("no conversations left to sample from (filters too strict?)")
    index = np.arange(n) % len(table) if file_order else rng.integers(0, len(table), size=n)
    return table.iloc[index].reset_index(drop=True)


def describe(table: pd.DataFrame) -> pd.DataFrame:
    """count, mean, p50, p99 of each length column."""
    cols = ["prompt_tokens", "output_tokens"]
    return pd.DataFrame({
        "count": table[cols].count(), "mean": table[cols].mean(),
        "p50": table[cols].quantile(0.5), "p99": table[cols].quantile(0.99),
    }).T
