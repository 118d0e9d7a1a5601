"""A roofline profile computed from model dimensions and GPU rates: no measurement behind it.

Each stage costs max(FLOPs / peak, bytes / bandwidth) plus a fixed launch cost per kernel. It is a
lower bound for a real engine, labelled `analytic` wherever it is used; measured profiles from
`calibrate/` replace it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.base import AttentionLoad, Overheads


@dataclass(frozen=True)
class AnalyticProfile:
    model: ModelSpec
    hardware: HardwareSpec
    kernel_launch_s: float = 5e-6
    overheads: Overheads = field(default_factory=lambda: Overheads(stage_s=10e-6, iteration_s=1e-3))

    @property
    def name(self) -> str:
        return f"analytic/{self.hardware.name}/{self.model.name}-w{self.model.weight_bits}"

    def _roofline_s(self, flops: float | np.ndarray, num_bytes: float | np.ndarray, kernels: int):
        compute = flops / (self.hardware.peak_tflops * 1e12)
        memory = num_bytes / (self.hardware.hbm_tb_s * 1e12)
        return np.maximum(compute, memory) + kernels * self.kernel_launch_s

    def attention_s(self, load: AttentionLoad) -> float:
        m = self.model
        weight_bytes = m.attention_params * m.weight_bits / 8
        kv_bytes = (load.num_tokens + load.decode_ctx_tokens) * 2 * m.kv_dim * m.kv_bits / 8
        pairs = load.prefill_sq_tokens / 2 + load.decode_ctx_tokens  # causal (query, key) pairs
        flops = 2 * load.num_tokens * m.attention_params + 4 * m.num_heads * m.head_dim * pairs
        return float(self._roofline_s(flops, weight_bytes + kv_bytes, kernels=6))

    def router_s(self, num_tokens: int) -> float:
        m = self.model
        flops = 2 * num_tokens * m.hidden_size * m.num_experts
        return float(self._roofline_s(flops, m.hidden_size * m.num_experts * m.weight_bits / 8, kernels=3))

    def experts_s(self, loads: np.ndarray) -> np.ndarray:
        m = self.model
        flops = 2 * m.expert_params * loads
        times = self._roofline_s(flops, m.expert_params * m.weight_bits / 8, kernels=3)
        return np.where(loads > 0, times, 0.0)

    def lm_head_s(self, num_seqs: int) -> float:
        m = self.model
        params = m.vocab_size * m.hidden_size
        return float(self._roofline_s(2 * num_seqs * params, params * m.weight_bits / 8, kernels=4))
