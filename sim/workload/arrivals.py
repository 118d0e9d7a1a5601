"""Arrival times: Poisson, or gamma-distributed gaps with a burstiness knob (vLLM's convention)."""

from __future__ import annotations

import numpy as np


def arrival_times(rng: np.random.Generator, rate: float, burstiness: float,
                  num_requests: int | None, duration_s: float | None) -> np.ndarray:
    """Arrival instants from t = 0. Gaps ~ gamma(shape=burstiness, scale=1/(rate*burstiness)):
    mean 1/rate, coefficient of variation 1/sqrt(burstiness); burstiness 1 = Poisson."""
    if num_requests is not None:
        return np.cumsum(_gaps(rng, rate, burstiness, num_requests))
    expected = int(rate * duration_s)
    times = np.cumsum(_gaps(rng, rate, burstiness, expected + 10 * int(np.sqrt(expected + 1)) + 10))
    while times[-1] < duration_s:  # rare: extend until past the horizon
        times = np.concatenate([times, times[-1] + np.cumsum(_gaps(rng, rate, burstiness, expected + 10))])
    return times[times < duration_s]


def _gaps(rng: np.random.Generator, rate: float, burstiness: float, n: int) -> np.ndarray:
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)
