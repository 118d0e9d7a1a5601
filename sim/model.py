"""Model dimensions: everything the simulator needs to know about an MoE transformer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# config.json keys of the parts the simulator does not model: shared experts (Qwen2-MoE, DeepSeek) and dense MLP
# layers between the MoE ones
_UNMODELLED = ("shared_expert_intermediate_size", "n_shared_experts", "first_k_dense_replace")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str = "mixtral-8x7b"
    num_layers: int = 32
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_heads: int = 32
    num_kv_heads: int = 8
    num_experts: int = 8
    top_k: int = 2
    vocab_size: int = 32000
    weight_bits: int = 16
    kv_bits: int = 16
    head_size: int | None = None  # when a model's heads are not hidden_size / num_heads wide (Qwen3)

    def __post_init__(self) -> None:
        if self.top_k > self.num_experts or min(self.num_layers, self.num_experts, self.top_k) < 1:
            raise ValueError(f"model {self.name}: need 1 <= top_k <= num_experts and >= 1 layer")

    @classmethod
    def from_hf_config(cls, config: str | Path | None, name: str | None = None, weight_bits: int = 16,
                       kv_bits: int = 16, num_layers: int | None = None) -> ModelSpec:
        """An MoE model's dimensions from its Hugging Face config.json (the file or its folder; `model=hf
        model.config=PATH`): Mixtral's keys, and Qwen3-MoE's and OLMoE's (the experts' width is
        `moe_intermediate_size` where a config has one). Only JSON is read: no transformers needed. `name`: the
        folder's name by default (a measured profile is looked up by it). `num_layers`: the model cut to its first
        layers (a real run's `engine.num_layers`; None: all of them)."""
        if not config:
            raise ValueError("model=hf needs model.config=PATH: a Hugging Face config.json or the folder holding it")
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"model.config: {path}: no such file")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"model.config: {path}: not JSON ({error})") from None
        experts = values.get("num_local_experts", values.get("num_experts"))
        if not experts or "num_experts_per_tok" not in values:
            raise ValueError(f"model.config: {path} is not a mixture of experts (no num_local_experts / num_experts "
                             "and num_experts_per_tok)")
        if unmodelled := [key for key in _UNMODELLED if values.get(key)] + \
                (["mlp_only_layers"] if values.get("mlp_only_layers") else []) + \
                (["decoder_sparse_step"] if values.get("decoder_sparse_step", 1) != 1 else []):
            raise ValueError(f"model.config: {path}: the simulator does not model {', '.join(unmodelled)} "
                             "(every layer one MoE block of routed experts)")
        required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size")
        width = values.get("moe_intermediate_size") or values.get("intermediate_size")
        if lacking := [key for key in required if not values.get(key)] + ([] if width else ["intermediate_size"]):
            raise ValueError(f"model.config: {path} lacks {', '.join(lacking)}")
        heads, hidden = values["num_attention_heads"], values["hidden_size"]
        head_dim = values.get("head_dim")
        return cls(name=name or path.parent.name, num_layers=num_layers or values["num_hidden_layers"],
                   hidden_size=hidden, intermediate_size=width,
                   num_heads=heads, num_kv_heads=values.get("num_key_value_heads") or heads, num_experts=experts,
                   top_k=values["num_experts_per_tok"], vocab_size=values["vocab_size"], weight_bits=weight_bits,
                   kv_bits=kv_bits, head_size=head_dim if head_dim and head_dim != hidden // heads else None)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attention_params(self) -> int:
        q_dim = self.num_heads * self.head_dim
        return 2 * self.hidden_size * q_dim + 2 * self.hidden_size * self.kv_dim

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def layer_params(self) -> int:
        return self.attention_params + self.num_experts * self.expert_params + self.hidden_size * self.num_experts

    @property
    def weight_bytes(self) -> float:
        embeddings = 2 * self.vocab_size * self.hidden_size
        return (self.num_layers * self.layer_params + embeddings) * self.weight_bits / 8

    @property
    def kv_bytes_per_token(self) -> float:
        return 2 * self.num_layers * self.kv_dim * self.kv_bits / 8
