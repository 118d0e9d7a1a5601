"""Shared test fixtures: a toy model and a constant-cost profile whose timelines are hand-computable."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from policies import Priority, Request
from sim.model import ModelSpec
from sim.plan import CostModel
from sim.profile import AttentionLoad, Overheads
from sim.routing import ExpertRouter


@dataclass(frozen=True)
class ConstantProfile:
    """Every stage costs a fixed time whatever the batch: timelines can be computed by hand."""

    attention: float = 1.0e-3
    router: float = 0.1e-3
    expert: float = 0.5e-3
    lm_head: float = 2.0e-3
    overheads: Overheads = field(default_factory=Overheads)
    name: str = "constant"

    def attention_s(self, load: AttentionLoad) -> float:
        return self.attention

    def router_s(self, num_tokens: int) -> float:
        return self.router

    def experts_s(self, loads: np.ndarray) -> np.ndarray:
        return np.where(loads > 0, self.expert, 0.0)

    def lm_head_s(self, num_seqs: int) -> float:
        return self.lm_head


TOY_MODEL = ModelSpec(name="toy", num_layers=4, hidden_size=64, intermediate_size=128, num_heads=4,
                      num_kv_heads=2, num_experts=2, top_k=2, vocab_size=100)


def toy_costs(profile: ConstantProfile | None = None, model: ModelSpec = TOY_MODEL, seed: int = 0) -> CostModel:
    router = ExpertRouter(model.num_layers, model.num_experts, model.top_k, seed=seed)
    return CostModel(model, profile or ConstantProfile(), router)


def request(rid: int, arrival_s: float, prompt: int, output: int, priority: str = "BE") -> Request:
    return Request(rid, arrival_s, prompt, output, Priority.parse(priority))


@pytest.fixture
def costs() -> CostModel:
    return toy_costs()
