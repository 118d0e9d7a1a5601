"""GPU characteristics the analytic profile and the KV-capacity bound are computed from."""

from __future__ import annotations

from dataclasses import dataclass

from sim.model import ModelSpec

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class HardwareSpec:
    """`peak_tflops` and `hbm_tb_s` are achievable rates (measured where we could), not datasheet."""

    name: str = "h200"
    peak_tflops: float = 790.0
    hbm_tb_s: float = 4.1
    memory_gib: float = 141.0
    kv_memory_fraction: float = 0.9

    def kv_capacity_tokens(self, model: ModelSpec) -> int:
        """KV tokens that fit beside the weights; raises if the weights alone do not fit."""
        free = self.memory_gib * GIB - model.weight_bytes
        if free <= 0:
            raise ValueError(
                f"{model.name} ({model.weight_bytes / GIB:.1f} GiB of {model.weight_bits}-bit weights) "
                f"does not fit in {self.name}'s {self.memory_gib:g} GiB"
            )
        return int(free * self.kv_memory_fraction / model.kv_bytes_per_token)
