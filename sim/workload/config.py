"""The workload a run replays, as one typed, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass

OUTPUT_MODES = ("reference", "fixed")
SAMPLINGS = ("random", "file_order")


class WorkloadError(ValueError):
    """A workload setting that cannot produce a trace."""


@dataclass(frozen=True)
class WorkloadConfig:
    """`output_mode`: `reference` (ShareGPT reply lengths) or `fixed` (every request generates
    `fixed_output_tokens`, as the paper's authors ran it). `filters`: vLLM benchmark filters.
    `sampling`: `random` conversations, or `file_order` (the authors' code)."""

    rate: float = 7.0
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
        checks = [
            (self.rate > 0, f"rate must be > 0 requests/s, got {self.rate}"),
            ((self.num_requests is None) != (self.duration_s is None),
             "give exactly one of num_requests and duration_s"),
            (self.num_requests is None or self.num_requests >= 1, f"num_requests must be >= 1, got {self.num_requests}"),
            (self.duration_s is None or self.duration_s > 0, f"duration_s must be > 0, got {self.duration_s}"),
            (0.0 <= self.ls_fraction <= 1.0, f"ls_fraction must be in [0, 1], got {self.ls_fraction}"),
            (self.burstiness > 0, f"burstiness must be > 0, got {self.burstiness}"),
            (self.output_mode in OUTPUT_MODES, f"output_mode must be one of {OUTPUT_MODES}, got {self.output_mode!r}"),
            (self.fixed_output_tokens >= 1, f"fixed_output_tokens must be >= 1, got {self.fixed_output_tokens}"),
            (self.sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise WorkloadError(message)
