"""The workload a run replays, as one typed, validated dataclass (Hydra's conf/workload/*.yaml)."""

from __future__ import annotations

import math
from dataclasses import dataclass

OUTPUT_MODES = ("reference", "fixed")
SAMPLINGS = ("random", "file_order")


class WorkloadError(ValueError):
    """A workload setting (or length table) that cannot produce a trace."""


@dataclass(frozen=True)
class WorkloadConfig:
    """How to generate a trace; `generate_trace(cfg, seed)` does it.

    rate: mean arrivals per second. num_requests / duration_s: give exactly one.
    ls_fraction: share of latency-sensitive requests, drawn per request (the paper: 0.2).
    burstiness: gamma shape of the inter-arrival gaps; 1 = Poisson, < 1 = burstier.
    output_mode: `reference` (the ShareGPT reply's length) or `fixed` (every request generates
      `fixed_output_tokens`: the authors' max_new_tokens cap, which they always reached).
    filters: vLLM's serving-benchmark length filters. sampling: `random` conversations (with
      replacement) or `file_order` (the authors' code). lengths_path: another length table.
    """

    rate: float
    num_requests: int | None = 1000
    duration_s: float | None = None
    ls_fraction: float = 0.2
    burstiness: float = 1.0
    output_mode: str = "reference"
    fixed_output_tokens: int = 32
    filters: bool = True
    sampling: str = "random"
    lengths_path: str | None = None

    def __post_init__(self) -> None:
        for ok, message in self._checks():
            if not ok:
                raise WorkloadError(f"workload: {message}")

    def _checks(self) -> list[tuple[bool, str]]:
        n, d = self.num_requests, self.duration_s
        return [
            (_is_number(self.rate) and self.rate > 0, f"rate must be > 0 requests/s, got {self.rate!r}"),
            ((n is None) != (d is None),
             f"give exactly one of num_requests and duration_s, got {n!r} and {d!r}"),
            (n is None or (_is_int(n) and n >= 1), f"num_requests must be an integer >= 1, got {n!r}"),
            (d is None or (_is_number(d) and d > 0), f"duration_s must be > 0, got {d!r}"),
            (_is_number(self.ls_fraction) and 0.0 <= self.ls_fraction <= 1.0,
             f"ls_fraction must be in [0, 1], got {self.ls_fraction!r}"),
            (_is_number(self.burstiness) and self.burstiness > 0,
             f"burstiness must be > 0, got {self.burstiness!r}"),
            (self.output_mode in OUTPUT_MODES,
             f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}"),
            (_is_int(self.fixed_output_tokens) and self.fixed_output_tokens >= 1,
             f"fixed_output_tokens must be an integer >= 1, got {self.fixed_output_tokens!r}"),
            (isinstance(self.filters, bool), f"filters must be true or false, got {self.filters!r}"),
            (self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}"),
        ]


def _is_number(value: object) -> bool:
    """A finite real number, not a bool (NaN would fail every comparison silently)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
