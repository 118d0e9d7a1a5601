"""One batch's iteration as a flat list of stage durations, and flat index <-> Position."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policies import Batch, Granularity, Position, Stage
from sim.model import ModelSpec
from sim.pipeline import LaunchQueue, PassPaths
from sim.profile import AttentionLoad, Profile
from sim.profile.base import expert_tokens
from sim.routing import ExpertRouter


@dataclass(frozen=True, slots=True)
class Layout:
    """Stage k of an iteration: layer k // S, stage k % S with S = 2 + E (attention, router,
    experts 0..E-1); index L*S is the LM head."""

    num_layers: int
    num_experts: int

    @property
    def stages_per_layer(self) -> int:
        return 2 + self.num_experts

    @property
    def end(self) -> int:
        """Index just past the LM head: the iteration is complete."""
        return self.num_layers * self.stages_per_layer + 1

    def position(self, k: int) -> Position:
        layer, s = divmod(k, self.stages_per_layer)
        if layer >= self.num_layers or s == 0:
            return Position(layer, Stage.ATTENTION)
        return Position(layer, Stage.ROUTER) if s == 1 else Position(layer, Stage.EXPERTS, s - 2)

    def index(self, pos: Position) -> int:
        s = {Stage.ATTENTION: 0, Stage.ROUTER: 1, Stage.EXPERTS: 2 + pos.expert}[pos.stage]
        return pos.layer * self.stages_per_layer + s

    def stage_points(self) -> np.ndarray:
        """Flat indices of every layer's router and first expert stage: where a layer run stage by stage
        (router, then all experts in one call) can stop between its stages."""
        starts = np.arange(self.num_layers) * self.stages_per_layer
        return np.sort(np.concatenate([starts + 1, starts + 2]))

    def points(self, granularity: Granularity) -> np.ndarray:
        """Flat indices (mid-iteration, sorted) where a policy of this granularity is consulted."""
        S, L = self.stages_per_layer, self.num_layers
        if granularity == Granularity.ITERATION:
            return np.empty(0, dtype=int)
        layers = np.arange(1, L) * S
        if granularity == Granularity.LAYER:
            return layers
        experts = (np.arange(L)[:, None] * S + 2 + np.arange(self.num_experts)[None, :]).ravel()
        return np.sort(np.concatenate([layers, experts]))


def attention_load(batch: Batch) -> AttentionLoad:
    prefill = [r.num_prompt_tokens for r in batch.requests if r.is_prefill]
    decode = [r.num_context_tokens for r in batch.requests if not r.is_prefill]
    return AttentionLoad(
        num_prefill_seqs=len(prefill),
        num_prefill_tokens=sum(prefill),
        prefill_sq_tokens=sum(n * n for n in prefill),
        num_decode_seqs=len(decode),
        decode_ctx_tokens=sum(decode),
        prefill_max_tokens=max(prefill, default=0),
        decode_max_ctx=max(decode, default=0),
    )


POOL_SIZE = 64
POOLED_MAX_TOKENS = 256  # decode-sized passes recur; prefill token counts rarely do


@dataclass
class CostModel:
    """Turns a batch and its expert loads into stage durations using a profile.

    Routing draws and expert costs are made `POOL_SIZE` passes at a time per token count: one
    numpy call instead of many (decode passes repeat the same few token counts)."""

    model: ModelSpec
    profile: Profile
    router: ExpertRouter
    _pools: dict[int, list] = field(default_factory=dict, repr=False)

    def expert_tokens(self, batch: Batch) -> int:
        """Tokens the batch's router and experts run for (sim.profile.base.expert_tokens)."""
        return expert_tokens(self.profile, attention_load(batch))

    def draw(self, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Expert loads [L, E] for a new pass of `num_tokens` tokens, and their expert times."""
        pool = self._pools.get(num_tokens)
        if not pool:
            size = POOL_SIZE if num_tokens <= POOLED_MAX_TOKENS else 1
            loads = self.router.loads_many(num_tokens, size)
            pool = self._pools[num_tokens] = list(zip(loads, self.profile.experts_s(loads)))[::-1]
        return pool.pop()

    @property
    def layout(self) -> Layout:
        return Layout(self.model.num_layers, self.model.num_experts)

    def durations(self, batch: Batch, expert_s: np.ndarray) -> np.ndarray:
        """[L*S + 1] seconds per stage; `expert_s` [L, E] are the experts' times for their loads."""
        p = self.profile
        stage = p.overheads.stage_s
        table = np.empty((self.model.num_layers, 2 + self.model.num_experts))
        table[:, 0] = p.attention_s(attention_load(batch)) + stage
        table[:, 1] = p.router_s(self.expert_tokens(batch)) + stage
        table[:, 2:] = expert_s
        head = p.lm_head_s(batch.num_requests) + p.overheads.iteration_s
        return np.append(table.ravel(), head)

    def launch_queue(self) -> LaunchQueue:
        """The host's launch queue for whole passes (sim.pipeline), as the profile measured it (unbounded and
        no backlog cost without those measurements)."""
        return LaunchQueue(getattr(self.profile, "pass_queue_layers", 0), getattr(self.profile, "pass_busy_extra_s", 0.0))

    def pass_paths(self, batch: Batch, durations: np.ndarray) -> PassPaths:
        """A whole pass on two clocks (sim.pipeline), for the pass whose stage `durations` were drawn. A
        profile without `pass_paths` (no host clock) has a free host: each layer costs its stages, and the
        lead is the iteration overhead."""
        layers = durations[:-1].reshape(self.model.num_layers, -1)
        iteration_s = self.profile.overheads.iteration_s
        head = float(durations[-1]) - iteration_s
        paths = getattr(self.profile, "pass_paths", None)
        if paths is None:
            return PassPaths(np.zeros(len(layers)), layers.sum(axis=1), head, iteration_s)
        host, gpu = paths(attention_load(batch))  # gpu: without the experts, whose draws are the pass's own
        lead = getattr(self.profile, "pass_host_s", None)
        return PassPaths(np.full(len(layers), host), gpu + layers[:, 2:].sum(axis=1), head,
                         iteration_s if lead is None else lead)
