"""Whole-pass times derived from a profile, for checks and for scaling presets."""

from __future__ import annotations

import numpy as np

from sim.model import ModelSpec
from sim.profile.base import AttentionLoad, Profile


def expected_loads(model: ModelSpec, num_tokens: int) -> np.ndarray:
    """Per-expert token counts under uniform routing, rounded as evenly as possible: [E]."""
    total = num_tokens * model.top_k
    base, extra = divmod(total, model.num_experts)
    return np.array([base + (e < extra) for e in range(model.num_experts)])


def decode_step_s(profile: Profile, model: ModelSpec, batch_size: int, context: int) -> float:
    """One decode pass of `batch_size` sequences at `context` tokens, uniform routing."""
    load = AttentionLoad(num_decode_seqs=batch_size, decode_ctx_tokens=batch_size * context)
    return _pass_s(profile, model, load)


def prefill_s(profile: Profile, model: ModelSpec, batch_size: int, prompt_tokens: int) -> float:
    load = AttentionLoad(num_prefill_seqs=batch_size, num_prefill_tokens=batch_size * prompt_tokens,
                         prefill_sq_tokens=batch_size * prompt_tokens**2)
    return _pass_s(profile, model, load)


def layer_s(profile: Profile, model: ModelSpec, load: AttentionLoad) -> float:
    """One decoder layer of `load`, uniform routing, with its per-stage overheads."""
    return (profile.attention_s(load) + profile.router_s(load.num_tokens) + 2 * profile.overheads.stage_s
            + float(profile.experts_s(expected_loads(model, load.num_tokens)).sum()))


def _pass_s(profile: Profile, model: ModelSpec, load: AttentionLoad) -> float:
    return (model.num_layers * layer_s(profile, model, load) + profile.lm_head_s(load.num_seqs)
            + profile.overheads.iteration_s)
