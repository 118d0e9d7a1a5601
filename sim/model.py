"""Model dimensions: everything the simulator needs to know about an MoE transformer."""

from __future__ import annotations

from dataclasses import dataclass


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
