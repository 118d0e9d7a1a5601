"""A profile stretched by a constant: for settings we can only derive, such as the paper's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.profile.base import AttentionLoad, Overheads, Profile


@dataclass(frozen=True)
class ScaledProfile:
    """`base` with every stage (and overhead) multiplied by `factor`; the shape stays the base's."""

    base: Profile
    factor: float
    label: str = "scaled"

    @property
    def name(self) -> str:
        return f"{self.label}({self.base.name} x {self.factor:.3g})"

    @property
    def overheads(self) -> Overheads:
        o = self.base.overheads
        return Overheads(*(self.factor * v for v in (o.stage_s, o.iteration_s, o.pause_s, o.resume_s, o.merge_s)))

    def attention_s(self, load: AttentionLoad) -> float:
        return self.factor * self.base.attention_s(load)

    def router_s(self, num_tokens: int) -> float:
        return self.factor * self.base.router_s(num_tokens)

    def experts_s(self, loads: np.ndarray) -> np.ndarray:
        return self.factor * self.base.experts_s(loads)

    def lm_head_s(self, num_seqs: int) -> float:
        return self.factor * self.base.lm_head_s(num_seqs)
