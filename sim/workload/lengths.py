"""The ShareGPT length table and how a workload draws prompt and output lengths from it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from sim.workload.config import WorkloadError

LENGTH_COLUMNS = ("conversation_id", "prompt_tokens", "output_tokens")
TOKEN_COLUMNS = ["prompt_tokens", "output_tokens"]

# vLLM serving-benchmark filters (benchmarks/benchmark_dataset.py, ShareGPTDataset)
MIN_TOKENS, MAX_PROMPT_TOKENS, MAX_TOTAL_TOKENS = 4, 1024, 2048


def default_lengths_path() -> Path:
    """The committed table, sim/data/sharegpt_lengths.csv (shipped as package data)."""
    return Path(str(resources.files("sim").joinpath("data", "sharegpt_lengths.csv")))


def load_lengths(path: Path | str | None = None) -> pd.DataFrame:
    """The length table, in file order. Raises WorkloadError if missing or malformed."""
    path = Path(path) if path is not None else default_lengths_path()
    if not path.is_file():
        raise WorkloadError(f"length table {path} not found (rebuild: python -m sim.workload.build_lengths)")
    try:
        table = pd.read_csv(path)
    except (ValueError, OSError) as error:
        raise WorkloadError(f"length table {path}: cannot parse ({error})") from None
    missing = [c for c in TOKEN_COLUMNS if c not in table.columns]
    if missing:
        raise WorkloadError(f"length table {path} lacks column(s) {', '.join(missing)}")
    counts = table[TOKEN_COLUMNS]
    if not all(pd.api.types.is_integer_dtype(t) for t in counts.dtypes) or (counts < 0).any().any():
        raise WorkloadError(f"length table {path}: token counts must be non-negative integers")
    return table


def vllm_filter(table: pd.DataFrame) -> pd.DataFrame:
    """Drop prompt or output < 4 tokens, prompt > 1024, prompt + output > 2048 (file order kept)."""
    p, o = table["prompt_tokens"], table["output_tokens"]
    keep = (p >= MIN_TOKENS) & (o >= MIN_TOKENS) & (p <= MAX_PROMPT_TOKENS) & (p + o <= MAX_TOTAL_TOKENS)
    return table[keep].reset_index(drop=True)


def sample_lengths(table: pd.DataFrame, n: int, rng: np.random.Generator, sampling: str) -> pd.DataFrame:
    """`n` rows: `random` draws with replacement; `file_order` takes rows 0, 1, ... (wrapping
    around past the end), as the paper authors' code took prompts."""
    if table.empty:
        raise WorkloadError("no conversations left to sample from (filters too strict?)")
    if sampling == "file_order":
        index = np.arange(n) % len(table)
    else:
        index = rng.integers(0, len(table), size=n)
    return table.iloc[index].reset_index(drop=True)


def describe(table: pd.DataFrame) -> pd.DataFrame:
    """count, mean, p50, p99 of each token column: what the rebuild prints."""
    counts = table[TOKEN_COLUMNS]
    return pd.DataFrame({"count": counts.count(), "mean": counts.mean(),
                         "p50": counts.quantile(0.5), "p99": counts.quantile(0.99)}).T
