"""The stages of one decoder layer, each callable on its own (calibration times these very
functions): attention over per-sequence KV, the router, experts from their queues, the LM head.

Shapes: T = packed tokens of a batch, D = hidden, B = sequences, Q = padded queries, K = keys,
E = experts, k = experts per token (top-k), V = vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from real.kv import KVPool
from real.layout import AttentionGroup, Layout


class PoolView:
    """Stands in for an HF Cache during one attention call: stores the new K/V rows of the group's
    sequences in their slots and hands back each sequence's whole K/V (a view by slot index)."""

    def __init__(self, pool: KVPool, group: AttentionGroup):
        self.pool, self.group = pool, group

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        g = self.group  # key, value: [B, KVH, Q, Dh]
        k_pool, v_pool = self.pool.k[layer_idx], self.pool.v[layer_idx]  # [S, L, KVH, Dh]
        k_pool[g.write_slot, g.write_pos] = _real_queries(key.transpose(1, 2), g).to(k_pool.dtype)  # [N, KVH, Dh]
        v_pool[g.write_slot, g.write_pos] = _real_queries(value.transpose(1, 2), g).to(v_pool.dtype)
        keys = k_pool[g.slots, : g.num_keys].transpose(1, 2)  # [B, KVH, K, Dh]
        values = v_pool[g.slots, : g.num_keys].transpose(1, 2)
        return keys, values


def attention(model, layer_idx: int, hidden: torch.Tensor, layout: Layout, pool: KVPool) -> torch.Tensor:
    """Pre-norm self-attention with its residual: hidden [T, D] -> [T, D]."""
    layer = model.model.layers[layer_idx]
    x = layer.input_layernorm(hidden)  # [T, D]
    out = torch.empty_like(hidden)
    for group in layout.groups:
        x_pad = x[group.rows]  # [B, Q, D]
        cos_sin = model.model.rotary_emb(x_pad, group.positions)
        attn, _ = layer.self_attn(hidden_states=x_pad, position_embeddings=cos_sin, attention_mask=group.mask,
                                  past_key_values=PoolView(pool, group))
        out[group.valid_rows] = _real_queries(attn, group)  # [N, D]
    return hidden + out


def _real_queries(padded: torch.Tensor, group: AttentionGroup) -> torch.Tensor:
    """[B, Q, ...] -> [N, ...]: the real (unpadded) query rows, by integer index (no device sync)."""
    return padded.reshape(-1, *padded.shape[2:])[group.valid_flat]


def router(model, layer_idx: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-attention norm and top-k routing: (x [T, D], weights [T, k], experts [T, k])."""
    layer = model.model.layers[layer_idx]
    x = layer.post_attention_layernorm(hidden)
    _, weights, experts = layer.mlp.gate(x)
    return x, weights, experts


def experts_eager(model, layer_idx: int, x, weights, experts, queued, out) -> None:
    """Run every expert on its queue (pairs where `queued` [T, k]); accumulate into out [T, D].

    Same operations and order as HF's eager experts, so results match it bit for bit."""
    module = model.model.layers[layer_idx].mlp.experts
    chosen = torch.where(queued, experts, -1)  # [T, k]
    for e in torch.unique(chosen[chosen >= 0]).tolist():
        k_pos, tokens = torch.where((chosen == e).T)  # HF order: by top-k slot, then token
        gate, up = F.linear(x[tokens], module.gate_up_proj[e]).chunk(2, dim=-1)
        h = F.linear(module.act_fn(gate) * up, module.down_proj[e])  # [n, D]
        h = h * weights[tokens, k_pos, None]
        out.index_add_(0, tokens, h.to(out.dtype))


def experts_grouped(model, layer_idx: int, x, weights, experts, queued, out) -> None:
    """Same result via two grouped GEMMs over expert-sorted pairs: no host sync, graph-capturable."""
    module = model.model.layers[layer_idx].mlp.experts
    num_experts, top_k = module.gate_up_proj.shape[0], experts.shape[1]
    ids = torch.where(queued, experts, num_experts).reshape(-1)  # [T*k], sentinel E = not queued
    ids_sorted, perm = torch.sort(ids)
    tokens = perm // top_k
    ids_hist = ids_sorted.int() if ids_sorted.is_cuda else ids_sorted.float()  # histc dtype support differs
    counts = torch.histc(ids_hist, bins=num_experts, min=0, max=num_experts - 1)
    offs = torch.cumsum(counts, dim=0, dtype=torch.int32)  # [E]
    h = torch._grouped_mm(x[tokens], module.gate_up_proj.transpose(-2, -1), offs=offs)  # [P, 2I]
    gate, up = h.chunk(2, dim=-1)
    h = torch._grouped_mm(module.act_fn(gate) * up, module.down_proj.transpose(-2, -1), offs=offs)  # [P, D]
    h = h * weights.reshape(-1)[perm, None]
    h = torch.where((ids_sorted < num_experts)[:, None], h, 0)  # rows past offs[-1] are garbage
    out.index_add_(0, tokens, h.to(out.dtype))


def lm_head(model, hidden_last: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head on each sequence's last token: [B, D] -> logits [B, V] (float32)."""
    return model.lm_head(model.model.norm(hidden_last)).float()


def embed(model, token_ids: torch.Tensor) -> torch.Tensor:
    return model.model.embed_tokens(token_ids)
