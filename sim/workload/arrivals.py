"""Arrival times and priority classes: the random parts of a trace besides lengths."""

from __future__ import annotations

import numpy as np


def arrival_times(rng: np.random.Generator, rate: float, burstiness: float,
                  num_requests: int | None, duration_s: float | None) -> np.ndarray:
    """Arrival instants (s) from t = 0, non-decreasing: `num_requests` of them, or all before
    `duration_s`. Gaps ~ gamma(shape=burstiness, scale=1/(rate*burstiness)), vLLM's convention:
    mean 1/rate, coefficient of variation 1/sqrt(burstiness); burstiness 1 = Poisson."""
    if num_requests is not None:
        return np.cumsum(_gaps(rng, rate, burstiness, num_requests))
    return _until(rng, rate, burstiness, duration_s)


def _until(rng: np.random.Generator, rate: float, burstiness: float, duration_s: float) -> np.ndarray:
    """Draw gaps in blocks of ~1.2x the expected count until the horizon is passed."""
    block = int(1.2 * rate * duration_s) + 16
    chunks, last = [], 0.0
    while last < duration_s:
        chunks.append(last + np.cumsum(_gaps(rng, rate, burstiness, block)))
        last = chunks[-1][-1]
    times = np.concatenate(chunks)
    return times[times < duration_s]


def _gaps(rng: np.random.Generator, rate: float, burstiness: float, n: int) -> np.ndarray:
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)


def choose_priorities(rng: np.random.Generator, n: int, ls_fraction: float) -> np.ndarray:
    """'LS' with probability `ls_fraction`, else 'BE', independently per request (the paper: 20% LS)."""
    return np.where(rng.random(n) < ls_fraction, "LS", "BE")
