"""What the simulator asks of a timing profile: the cost of each stage the engine runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True, slots=True)
class AttentionLoad:
    """The work one attention layer does for a batch (prefill and decode sequences may mix)."""

    num_prefill_seqs: int = 0
    num_prefill_tokens: int = 0
    prefill_sq_tokens: int = 0  # sum of prompt_len**2: causal attention work grows with it
    num_decode_seqs: int = 0
    decode_ctx_tokens: int = 0  # sum of decode context lengths: KV bytes read grow with it
    prefill_max_tokens: int = 0  # longest prompt (0: unknown): engines that pad a prefill group to it
    decode_max_ctx: int = 0  # longest decode context (0: unknown): the keys a padded decode group reads

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_seqs

    @property
    def num_seqs(self) -> int:
        return self.num_prefill_seqs + self.num_decode_seqs


@dataclass(frozen=True, slots=True)
class Overheads:
    """Engine costs that are not GPU kernels of the model: host work per stage and per decision."""

    stage_s: float = 0.0
    iteration_s: float = 0.0
    pause_s: float = 0.0
    resume_s: float = 0.0
    merge_s: float = 0.0


class Profile(Protocol):
    """Stage costs in seconds for one decoder layer (all layers cost the same) plus the LM head."""

    name: str
    overheads: Overheads

    def attention_s(self, load: AttentionLoad) -> float: ...

    def router_s(self, num_tokens: int) -> float: ...

    def experts_s(self, loads: np.ndarray) -> np.ndarray:
        """Time of each expert FFN for the token counts in `loads` (any shape; 0 tokens -> 0 s)."""
        ...

    def lm_head_s(self, num_seqs: int) -> float:
        """Embedding, final norm, LM head on the last token of each sequence, and sampling."""
        ...


def expert_tokens(profile: Profile, load: AttentionLoad) -> int:
    """Tokens a layer of this load runs its router and experts for: the profile's `expert_tokens` where it has
    one (an engine that pads a replayed decode layer to its graph bucket runs the padding too), else its own."""
    tokens = getattr(profile, "expert_tokens", None)
    return load.num_tokens if tokens is None else tokens(load)
