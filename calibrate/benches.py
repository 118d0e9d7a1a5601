"""What one grid point runs, per implementation: `EngineBench` calls the real engine's own stage
functions (real.stages, on its KV pool and packed layouts); `HFBench` calls Hugging Face's own
modules the way its forward does (MixtralAttention/Qwen3MoeAttention with sdpa, the router, the
experts with grouped_mm). Each method returns a zero-argument callable for the timer.

T = tokens, D = hidden, B = sequences, C = context, k = experts per token, E = experts."""

from __future__ import annotations

import torch

from policies import Granularity, Position, Stage
from real import stages
from real.engine import Engine
from real.kv import KVPool
from real.layout import build_layout
from real.sequence import Sequence


def balanced_routing(tokens: int, num_experts: int, top_k: int, device) -> torch.Tensor:
    """Token i picks experts (i*k + j) mod E: loads as even as possible, as the simulator's expected
    loads (a fixed number of active experts per token count, no draw noise): [T, k]."""
    pairs = torch.arange(tokens * top_k, device=device).reshape(tokens, top_k)
    return pairs % num_experts


class _Bench:
    def __init__(self, model, pool: KVPool, device: str):
        self.model, self.pool, self.device = model, pool, device
        config = model.config
        self.hidden_size, self.top_k = config.hidden_size, config.num_experts_per_tok
        self.num_experts = model.model.layers[0].mlp.experts.gate_up_proj.shape[0]
        self.layer = model.model.layers[0]
        _, weights, _ = stages.router(model, 0, self.hidden(1))
        self.weight_dtype = weights.dtype  # what the router hands the experts

    def hidden(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, self.hidden_size, device=self.device, dtype=self.model.dtype)

    def routing(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        experts = balanced_routing(tokens, self.num_experts, self.top_k, self.device)
        return experts, torch.full(experts.shape, 1.0 / self.top_k, device=self.device, dtype=self.weight_dtype)

    def call(self, stage: str, x1: int, x2: int):
        return getattr(self, stage)(x1, x2)

    def stages(self) -> set[str]:
        return {name for name in ("attention_decode", "attention_prefill", "attention_prefill_varlen",
                                  "attention_prefill_lean", "router", "expert", "experts_layer",
                                  "lm_head", "embed", "layer_decode", "layer_prefill") if hasattr(self, name)}


class EngineBench(_Bench):
    """The engine's stages (real.stages) on layer 0, as Engine.step calls them."""

    impl = "engine"

    def __init__(self, model, pool: KVPool, device: str):
        super().__init__(model, pool, device)
        self.engine = Engine(model, pool, grouped_experts=device == "cuda")  # picks the experts function

    def attention_decode(self, batch: int, context: int):
        seqs = [Sequence(i, [1] * context, slot=i, num_cached=context - 1) for i in range(batch)]
        layout, h = build_layout(seqs, self.device), self.hidden(batch)
        return lambda: stages.attention(self.model, 0, h, layout, self.pool)

    def attention_prefill(self, num_seqs: int, length: int, varlen: bool = False, lean: bool = False):
        seqs = [Sequence(i, [1] * length, slot=i) for i in range(num_seqs)]
        layout, h = build_layout(seqs, self.device, varlen=varlen), self.hidden(num_seqs * length)
        tables = stages.pass_rope(self.model, h, layout.positions) if lean else None
        return lambda: stages.attention(self.model, 0, h, layout, self.pool, tables)

    def attention_prefill_varlen(self, num_seqs: int, length: int):
        """The same prompts as one unpadded group (engine.varlen_prefill: flash attention's varlen kernel)."""
        return self.attention_prefill(num_seqs, length, varlen=True)

    def attention_prefill_lean(self, num_seqs: int, length: int):
        """The unpadded group with the pass's rotary tables made beforehand (engine.lean_attention: once per pass,
        not per layer): attention_prefill_varlen's arithmetic in fewer host calls and a few small kernels fewer."""
        return self.attention_prefill(num_seqs, length, varlen=True, lean=True)

    def router(self, tokens: int, _):
        h = self.hidden(tokens)
        return lambda: stages.router(self.model, 0, h)

    def expert(self, tokens: int, _):
        """One expert's FFN on `tokens` queued tokens (the engine's expert-granularity step)."""
        x, out = self.hidden(tokens), self.hidden(tokens)
        chosen = torch.zeros(tokens, self.top_k, dtype=torch.long, device=self.device)
        queued = torch.zeros_like(chosen, dtype=torch.bool)
        queued[:, 0] = True
        weights = torch.ones(tokens, self.top_k, device=self.device, dtype=self.weight_dtype)
        run = self.engine.experts_for(tokens, one_expert=True)
        return lambda: run(self.model, 0, x, weights, chosen, queued, out)

    def experts_layer(self, tokens: int, _):
        """All experts of a layer in one call (the engine's layer-granularity step: dense GEMMs at
        decode sizes, grouped GEMMs otherwise, as Engine.experts_for picks)."""
        x, out = self.hidden(tokens), self.hidden(tokens)
        chosen, weights = self.routing(tokens)
        queued = torch.ones_like(chosen, dtype=torch.bool)
        run = self.engine.experts_for(tokens)
        return lambda: run(self.model, 0, x, weights, chosen, queued, out)

    def lm_head(self, num_seqs: int, _):
        h = self.hidden(num_seqs)
        return lambda: stages.lm_head(self.model, h).argmax(-1)

    def layer_decode(self, batch: int, context: int):
        """One whole decode layer as the engine steps it (Engine.advance to the next layer boundary):
        the stages plus the engine's own per-stage work, which the stage functions alone miss."""
        return self._layer([Sequence(i, [1] * context, slot=i, num_cached=context - 1) for i in range(batch)])

    def layer_prefill(self, num_seqs: int, length: int):
        """One whole prefill layer of `num_seqs` prompts of `length` tokens, stepped as the engine runs
        layers with prefill tokens (no CUDA graphs): what a served LS prefill batch costs per layer."""
        return self._layer([Sequence(i, [1] * length, slot=i) for i in range(num_seqs)])

    def _layer(self, seqs: list[Sequence]):
        """Layer 0 of a pass of `seqs`, rerun from the same input on every call."""
        state = self.engine.start(seqs)
        h = state.hidden

        def run():
            state.hidden, state.position = h, Position(0, Stage.ATTENTION)
            self.engine.advance(state, Granularity.LAYER)
        return run

    def embed(self, num_seqs: int, _):
        """Engine.start for decode sequences: the packed layout with the new token ids (one host-to-device
        copy) and their embedding."""
        seqs = [Sequence(i, [1] * 512, slot=i, num_cached=511) for i in range(num_seqs)]
        return lambda: self.engine.start(seqs)


class FixedCache:
    """Stands in for DynamicCache at a fixed context: concatenates the new K/V to the cached ones
    (the same copy DynamicLayer.update makes) but keeps nothing, so repeats see the same context."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values  # [B, KVH, C, Dh]

    def update(self, key, value, layer_idx, *args, **kwargs):
        return torch.cat([self.keys, key], dim=-2), torch.cat([self.values, value], dim=-2)


class HFBench(_Bench):
    """Hugging Face's own layer-0 modules as its decoder layer calls them (sdpa attention, the
    router, the experts through the model's experts implementation, grouped_mm on CUDA)."""

    impl = "hf"

    def _attention(self, h: torch.Tensor, positions: torch.Tensor, cache):
        cos_sin = self.model.model.rotary_emb(h, positions)  # once per forward in HF: timed in `embed`
        def run():
            attn, _ = self.layer.self_attn(hidden_states=self.layer.input_layernorm(h), position_embeddings=cos_sin,
                                           attention_mask=None, past_key_values=cache)
            return h + attn
        return run

    def attention_decode(self, batch: int, context: int):
        attn = self.layer.self_attn
        kv_heads = self.model.config.num_key_value_heads
        shape = (batch, kv_heads, context - 1, attn.head_dim)
        cache = FixedCache(torch.randn(shape, device=self.device, dtype=self.model.dtype),
                           torch.randn(shape, device=self.device, dtype=self.model.dtype))
        positions = torch.full((batch, 1), context - 1, device=self.device)
        return self._attention(self.hidden(batch, 1), positions, cache)

    def attention_prefill(self, num_seqs: int, length: int):
        positions = torch.arange(length, device=self.device)[None].expand(num_seqs, length)
        return self._attention(self.hidden(num_seqs, length), positions, None)  # HF prefill: use_cache=False

    def router(self, tokens: int, _):
        h = self.hidden(1, tokens)
        return lambda: self.layer.mlp.gate(self.layer.post_attention_layernorm(h).view(-1, self.hidden_size))

    def experts_layer(self, tokens: int, _):
        h, x = self.hidden(1, tokens), self.hidden(tokens)
        experts, weights = self.routing(tokens)
        return lambda: h + self.layer.mlp.experts(x, experts, weights).reshape(h.shape)

    def lm_head(self, num_seqs: int, _):
        h = self.hidden(num_seqs, 1)
        return lambda: self.model.lm_head(self.model.model.norm(h)).argmax(-1)

    def layer_decode(self, batch: int, context: int):
        """HF's whole decoder layer (its __call__, hooks and kwargs included), as its forward calls it."""
        kv_heads, head_dim = self.model.config.num_key_value_heads, self.layer.self_attn.head_dim
        shape = (batch, kv_heads, context - 1, head_dim)
        cache = FixedCache(torch.randn(shape, device=self.device, dtype=self.model.dtype),
                           torch.randn(shape, device=self.device, dtype=self.model.dtype))
        positions = torch.full((batch, 1), context - 1, device=self.device)
        h = self.hidden(batch, 1)
        cos_sin = self.model.model.rotary_emb(h, positions)
        return lambda: self.layer(h, position_embeddings=cos_sin, attention_mask=None, position_ids=positions,
                                  past_key_values=cache, use_cache=True)

    def embed(self, num_seqs: int, _):
        ids = torch.randint(0, self.model.config.vocab_size, (num_seqs, 1), device=self.device)
        positions = torch.full((num_seqs, 1), 511, device=self.device)
        def run():
            h = self.model.model.embed_tokens(ids)
            return h, self.model.model.rotary_emb(h, positions)
        return run


BENCHES = {"engine": EngineBench, "hf": HFBench}
