"""Building or loading the HF MoE models the engine drives (no hub access: configs are local)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, MixtralConfig, OlmoeConfig, PreTrainedModel, Qwen3MoeConfig

MIXTRAL_8X7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000,
                    max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5)
TINY_MIXTRAL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=128,
                    max_position_embeddings=512)
TINY_QWEN3_MOE = dict(hidden_size=64, intermediate_size=96, moe_intermediate_size=48, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8,
                      num_experts_per_tok=2, vocab_size=128, max_position_embeddings=512, norm_topk_prob=True,
                      decoder_sparse_step=1, mlp_only_layers=[])

QWEN3_MOE_30B_A3B = dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_hidden_layers=48,
                         num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                         num_experts_per_tok=8, vocab_size=151936, max_position_embeddings=32768,
                         norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[])

TINY_OLMOE = dict(hidden_size=64, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, num_experts=8, num_experts_per_tok=2, vocab_size=128,
                  max_position_embeddings=512)  # q/k norms over all heads (Qwen3's are per head)

PRESETS = {"mixtral-8x7b": (MixtralConfig, MIXTRAL_8X7B), "qwen3-moe-30b-a3b": (Qwen3MoeConfig, QWEN3_MOE_30B_A3B),
           "tiny-mixtral": (MixtralConfig, TINY_MIXTRAL), "tiny-qwen3-moe": (Qwen3MoeConfig, TINY_QWEN3_MOE),
           "tiny-olmoe": (OlmoeConfig, TINY_OLMOE)}


def preset_config(name: str, **overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    cls, values = PRESETS[name]
    return cls(**{**values, **overrides})


def build_model(config, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """Random weights, created directly on `device` (a 93 GB Mixtral never touches host memory)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A checkpoint from a local directory (never the hub)."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a local checkpoint directory")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                 local_files_only=True)
    return model.to(device).eval()
