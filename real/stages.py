"""The stages of one decoder layer, each callable on its own (calibration times these very
functions): attention over per-sequence KV, the router, experts from their queues, the LM head.
None of them synchronises with the device except `experts_eager` (HF's loop, kept as the exact
reference), so a layer built from the others can be captured in a CUDA graph.

Shapes: T = packed tokens of a batch, D = hidden, H = query heads, KVH = key/value heads, G = H / KVH,
Dh = head dim, B = sequences, Q = padded queries, K = keys, E = experts, k = experts per token (top-k),
P = queued (token, expert) pairs, I = expert intermediate size, V = vocabulary.
"""

from __future__ import annotations

from contextlib import nullcontext
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from real.kv import KVPool
from real.layout import Layout, PackedGroup
from real.spans import PoolSpans


def embed(model, token_ids: torch.Tensor) -> torch.Tensor:
    return model.model.embed_tokens(token_ids)


def rope(model, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, 1, Dh] for packed tokens at `positions` [T] (the model's own rotary module)."""
    cos, sin = model.model.rotary_emb(x, positions[None])  # [1, T, Dh]
    return cos[0, :, None], sin[0, :, None]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's apply_rotary_pos_emb on one tensor (same operations, same rounding)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def pass_rope(model, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotary tables of a pass, made once for all its layers (the positions do not change between them):
    cos, and sin with its first half negated, so that `_rotate_lean` needs no rotate-half copy."""
    cos, sin = rope(model, hidden, positions)
    half = sin.shape[-1] // 2
    return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rotate_lean(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """`_rotate` in four calls: rotate_half(x) * sin is roll(x, half) * signed_sin element for element (a negation
    is exact, so the products are the same floats), and the sum the same."""
    return x * cos + torch.roll(x, x.shape[-1] // 2, dims=-1) * signed_sin


def _head_norm(norm, y: torch.Tensor) -> torch.Tensor:
    """Qwen3 normalises q/k per head, OLMoE over all heads: the norm's size says which."""
    return norm(y.view(*y.shape[:-1], -1, norm.weight.shape[0])).view_as(y)


def qkv(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lean: bool = False):
    """Projections (+ q/k norms where the family has them) and rotary: x [T, D] ->
    q [T, H, Dh], k [T, KVH, Dh], v [T, KVH, Dh]. `lean`: `sin` is `pass_rope`'s signed one, and q and k are
    rotated together (`_rotate_lean` on their heads side by side), the same floats in fewer calls."""
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    if hasattr(attn, "q_norm"):
        q, k = _head_norm(attn.q_norm, q), _head_norm(attn.k_norm, k)
    shape = (x.shape[0], -1, attn.head_dim)
    if lean:
        q, k = q.view(shape), k.view(shape)
        return *_rotate_lean(torch.cat((q, k), dim=1), cos, sin).split((q.shape[1], k.shape[1]), dim=1), v.view(shape)
    return _rotate(q.view(shape), cos, sin), _rotate(k.view(shape), cos, sin), v.view(shape)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal GQA attention of queries q [B, Q, H, Dh] at `positions` [B, Q] over keys k, v [B, K, KVH, Dh].

    The G query heads sharing a KV head are folded into the query axis, so K/V are never repeated
    (one read of the cache, any SDPA kernel). A query sees the keys at positions <= its own."""
    B, Q, H, Dh = q.shape
    K, KVH = k.shape[1], k.shape[2]
    G = H // KVH
    q = q.view(B, Q, KVH, G, Dh).permute(0, 2, 3, 1, 4).reshape(B, KVH, G * Q, Dh)
    mask = torch.arange(K, device=q.device) <= positions[:, :, None]  # [B, Q, K]
    mask = mask[:, None, None].expand(B, 1, G, Q, K).reshape(B, 1, G * Q, K)
    with _backends(q):
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale)
    return out.view(B, KVH, G, Q, Dh).permute(0, 3, 1, 2, 4).reshape(B, Q, H, Dh)


# SDPA kernels on CUDA: torch's default on Hopper (cuDNN) builds an execution plan per new shape, about
# 50 ms on an H200 (`python -m calibrate.newshape`), and a server's prefill batches almost always have a
# new padded shape; memory-efficient attention has no per-shape plan, is as fast once warm, and can be
# captured in CUDA graphs (the decode layers use it too, so warm-up and capture see the same kernels).
CUDA_SDPA = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


def _backends(q: torch.Tensor):
    return sdpa_kernel(CUDA_SDPA) if q.is_cuda else nullcontext()


def attention(model, layer_idx: int, hidden: torch.Tensor, layout: Layout, pool: KVPool,
              rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Pre-norm self-attention with its residual: hidden [T, D] -> [T, D]. Writes the new K/V into
    each sequence's slot, then attends group by group over the slots (a gather by slot index).
    `rope_tables`: the pass's `pass_rope` (the engine's `lean_attention`): the rotary tables are not remade in
    every layer and q, k are rotated in fewer calls (a stepped layer's host path is its cost below ~2k tokens)."""
    attn = model.model.layers[layer_idx].self_attn
    q, k, v = _project_and_store(model, layer_idx, hidden, layout.positions, layout.slots, pool, rope_tables)
    k_pool, v_pool = pool.k[layer_idx], pool.v[layer_idx]  # [S, L, KVH, Dh]
    whole = layout.groups[0] if len(layout.groups) == 1 and isinstance(layout.groups[0], PackedGroup) else None
    if whole is not None and whole.span == (0, layout.num_tokens):  # fresh prompts only (an LS start, mostly)
        out = attend_packed(q, _as_stored(k, k_pool), _as_stored(v, v_pool), whole, attn.scaling)
        return hidden + attn.o_proj(out.flatten(1))
    out = torch.empty_like(q)  # [T, H, Dh]
    for g in layout.groups:
        if isinstance(g, PackedGroup):
            rows = g.index
            out[rows] = attend_packed(q[rows], _as_stored(k[rows], k_pool), _as_stored(v[rows], v_pool), g,
                                      attn.scaling)
            continue
        keys, values = k_pool[g.slots, : g.num_keys], v_pool[g.slots, : g.num_keys]  # [B, K, KVH, Dh]
        o = attend(q[g.rows], keys.to(q.dtype), values.to(q.dtype), g.positions, attn.scaling)  # [B, Q, H, Dh]
        out[g.valid_rows] = o.flatten(0, 1)[g.valid_flat]
    return hidden + attn.o_proj(out.flatten(1))


def _project_and_store(model, layer_idx: int, hidden: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                       pool: KVPool, rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Input norm, q/k/v with rotary, and the new keys and values written to their slots: q [T, H, Dh],
    k, v [T, KVH, Dh] (as computed, before rounding to the pool's dtype)."""
    layer = model.model.layers[layer_idx]
    x = layer.input_layernorm(hidden)  # [T, D]
    if rope_tables is None:
        q, k, v = qkv(layer.self_attn, x, *rope(model, x, positions))
    else:
        q, k, v = qkv(layer.self_attn, x, *rope_tables, lean=True)
    k_pool, v_pool = pool.k[layer_idx], pool.v[layer_idx]  # [S, L, KVH, Dh]
    k_pool[slots, positions] = _stored(k, k_pool)
    v_pool[slots, positions] = _stored(v, v_pool)
    return q, k, v


def attention_pooled(model, layer_idx: int, hidden: torch.Tensor, spans: PoolSpans, pool: KVPool) -> torch.Tensor:
    """`attention` for any mix of prompts and decodes in one call and static shapes (real.passgraphs captures it):
    each sequence's queries attend its keys in the pool, read in place (`attend_pool`)."""
    attn = model.model.layers[layer_idx].self_attn
    q, _, _ = _project_and_store(model, layer_idx, hidden, spans.positions, spans.slots, pool)
    out = attend_pool(q, pool.k[layer_idx], pool.v[layer_idx], spans, attn.scaling)
    return hidden + attn.o_proj(out.flatten(1))


def attend_pool(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, spans: PoolSpans,
                scale: float) -> torch.Tensor:
    """Causal attention of each sequence's queries q [T, H, Dh] over the first `used[b]` keys of its slot in the
    pool k, v [S, L, KVH, Dh] -> [T, H, Dh]; rows of no sequence (zero length, padding) come out 0. On a GPU in
    16-bit floats, flash attention's variable-length kernel over the pool as one [S * L] key axis: sequence b's
    keys start at `key_starts[b]` (its slot's first row) and `used[b]` of them are read (`seqused_k`). The
    causal mask aligns queries to the last keys, which is where a sequence's new tokens are. Elsewhere `attend`
    on each sequence alone (reads the lengths on the host)."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        keys, values = k_pool.flatten(0, 1), v_pool.flatten(0, 1)  # [S * L, KVH, Dh], views
        return torch.ops.aten._flash_attention_forward(q, keys, values, spans.cu_queries, spans.key_starts,
                                                       spans.max_queries, k_pool.shape[1], 0.0, True, False,
                                                       scale=scale, seqused_k=spans.used)[0]
    out = torch.zeros_like(q)
    length = k_pool.shape[1]
    bounds, starts, used = spans.cu_queries.tolist(), spans.key_starts.tolist(), spans.used.tolist()
    for b, num_keys in enumerate(used):
        lo, hi = bounds[b], bounds[b + 1]
        if hi == lo or num_keys == 0:
            continue
        slot = starts[b] // length
        keys, values = k_pool[slot, None, :num_keys].to(q.dtype), v_pool[slot, None, :num_keys].to(q.dtype)
        positions = torch.arange(num_keys - (hi - lo), num_keys, device=q.device)[None]
        out[lo:hi] = attend(q[None, lo:hi], keys, values, positions, scale)[0]
    return out


def _stored(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """`x` in the pool's dtype (no call where it already is)."""
    return x if x.dtype == pool.dtype else x.to(pool.dtype)


def _as_stored(x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """New keys or values as the padded path reads them back from the pool (rounded to its dtype)."""
    return x if pool.dtype == x.dtype else x.to(pool.dtype).to(x.dtype)


def attend_packed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: PackedGroup, scale: float) -> torch.Tensor:
    """Causal attention of each fresh prompt over its own keys, unpadded: q [N, H, Dh], k, v [N, KVH, Dh] ->
    [N, H, Dh]. On a GPU in 16-bit floats, flash attention's variable-length kernel (grouped KV heads as they
    are, one launch for the group); elsewhere (the CPU, fp32 tests) `attend` on each prompt alone."""
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = group.cu_lengths
        return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, group.longest, group.longest, 0.0, True,
                                                       False, scale=scale)[0]
    bounds = group.cu_lengths.tolist()
    return torch.cat([attend(q[None, lo:hi], k[None, lo:hi], v[None, lo:hi],
                             torch.arange(hi - lo, device=q.device)[None], scale)[0] for lo, hi in pairwise(bounds)])


def router(model, layer_idx: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Post-attention norm and top-k routing: (x [T, D], weights [T, k], experts [T, k])."""
    layer = model.model.layers[layer_idx]
    x = layer.post_attention_layernorm(hidden)
    _, weights, experts = layer.mlp.gate(x)
    return x, weights, experts


def experts_eager(model, layer_idx: int, x, weights, experts, queued, out) -> None:
    """Run every expert on its queue (pairs where `queued` [T, k]); accumulate into out [T, D].

    Same operations and order as HF's eager experts, so results match it bit for bit (but it
    synchronises with the device to find the non-empty queues)."""
    module = model.model.layers[layer_idx].mlp.experts
    chosen = torch.where(queued, experts, -1)  # [T, k]
    for e in torch.unique(chosen[chosen >= 0]).tolist():
        k_pos, tokens = torch.where((chosen == e).T)  # HF order: by top-k slot, then token
        gate, up = F.linear(x[tokens], module.gate_up_proj[e]).chunk(2, dim=-1)
        h = F.linear(module.act_fn(gate) * up, module.down_proj[e])  # [n, D]
        h = h * weights[tokens, k_pos, None]
        out.index_add_(0, tokens, h.to(out.dtype))


def experts_grouped(model, layer_idx: int, x, weights, experts, queued, out) -> None:
    """The queues as expert-sorted segments of (token, expert) pairs and two grouped GEMMs over them:
    weights of experts with empty queues are never read; no host sync, graph-capturable."""
    module = model.model.layers[layer_idx].mlp.experts
    num_experts, top_k = module.gate_up_proj.shape[0], experts.shape[1]
    ids = torch.where(queued, experts, num_experts).flatten()  # [T*k], E = not queued
    ids_sorted, perm = torch.sort(ids)
    ends = torch.arange(1, num_experts + 1, device=ids.device)
    offs = torch.searchsorted(ids_sorted, ends, out_int32=True)  # [E] end of each expert's segment
    tokens = perm // top_k  # [P]
    h = _grouped_mm(x[tokens], module.gate_up_proj.transpose(-2, -1), offs)  # [P, 2I]
    gate, up = h.chunk(2, dim=-1)
    h = _grouped_mm(module.act_fn(gate) * up, module.down_proj.transpose(-2, -1), offs)  # [P, D]
    h = h * weights.flatten()[perm, None]
    h = torch.where((ids_sorted < num_experts)[:, None], h, 0)  # rows past offs[-1] are not computed
    out.index_add_(0, tokens, h.to(out.dtype))


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x [P, in] @ w[e] [in, out] for the rows of each segment e. torch's grouped GEMM runs bf16 on CUDA
    (any dtype on CPU); for other CUDA dtypes (fp32 tests) a per-segment loop, which syncs."""
    if x.is_cuda and x.dtype != torch.bfloat16:
        bounds = [0] + offs.tolist()
        out = x.new_zeros(x.shape[0], w.shape[-1])
        for e, (lo, hi) in enumerate(pairwise(bounds)):
            out[lo:hi] = x[lo:hi] @ w[e]
        return out
    grouped_mm = getattr(F, "grouped_mm", None) or torch._grouped_mm
    return grouped_mm(x, w, offs=offs)


def experts_dense(model, layer_idx: int, x, weights, experts, queued, out) -> None:
    """Every expert on every token, each output weighted by its routing weight where the pair is
    queued (0 elsewhere): static shapes and plain batched GEMMs. At decode sizes all experts are hit
    anyway, and reading the weights, not the extra arithmetic, is the cost."""
    module = model.model.layers[layer_idx].mlp.experts
    num_experts = module.gate_up_proj.shape[0]
    w = torch.zeros(x.shape[0], num_experts, dtype=weights.dtype, device=x.device)  # [T, E]
    w.scatter_add_(1, experts, torch.where(queued, weights, 0))
    h = torch.matmul(x, module.gate_up_proj.transpose(-2, -1))  # [E, T, 2I]
    gate, up = h.chunk(2, dim=-1)
    h = torch.matmul(module.act_fn(gate) * up, module.down_proj.transpose(-2, -1))  # [E, T, D]
    out += (h * w.T[:, :, None]).sum(0).to(out.dtype)


def layer(model, layer_idx: int, hidden: torch.Tensor, layout: Layout, pool: KVPool, run_experts) -> torch.Tensor:
    """A whole decoder layer (attention, router, all experts): hidden [T, D] -> [T, D]."""
    return _moe(model, layer_idx, attention(model, layer_idx, hidden, layout, pool), run_experts)


def layer_pooled(model, layer_idx: int, hidden: torch.Tensor, spans: PoolSpans, pool: KVPool, run_experts,
                 queued: torch.Tensor) -> torch.Tensor:
    """`layer` with `attention_pooled`, and only the rows where `queued` [T, k] through the experts (padding rows
    are not): static shapes for any batch of up to T tokens."""
    return _moe(model, layer_idx, attention_pooled(model, layer_idx, hidden, spans, pool), run_experts, queued)


def _moe(model, layer_idx: int, hidden: torch.Tensor, run_experts, queued: torch.Tensor | None = None) -> torch.Tensor:
    """Router and experts with their residual; `queued` [T, k]: the (token, expert) pairs to run (None: all)."""
    x, weights, experts = router(model, layer_idx, hidden)
    out = torch.zeros_like(hidden)
    queued = torch.ones_like(experts, dtype=torch.bool) if queued is None else queued
    run_experts(model, layer_idx, x, weights, experts, queued, out)
    return hidden + out


def lm_head(model, hidden_last: torch.Tensor) -> torch.Tensor:
    """Final norm and LM head on each sequence's last token: [B, D] -> logits [B, V] (float32)."""
    return model.lm_head(model.model.norm(hidden_last)).float()
