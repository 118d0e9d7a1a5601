"""Building or loading the HF MoE models the engine drives (no hub access: configs are local)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    MixtralConfig,
    OlmoeConfig,
    PreTrainedModel,
    Qwen3MoeConfig,
)
from transformers.utils import logging as hf_logging

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


# the model types whose modules the engine drives (real.stages: a router `mlp.gate`, fused `mlp.experts`)
MODEL_TYPES = {config.model_type for config, _ in PRESETS.values()}


def preset_config(name: str, **overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    cls, values = PRESETS[name]
    return cls(**{**values, **overrides})


def is_checkpoint(model: str) -> bool:
    """`model` names a local checkpoint directory, not a preset."""
    return model not in PRESETS


def checkpoint_tokenizer(model: str) -> str | None:
    """A checkpoint folder's own SentencePiece tokenizer (`tokenizer.model`, as Mixtral's checkpoints ship it), for
    text prompts; None for a preset or a folder without one."""
    path = Path(model) / "tokenizer.model"
    return str(path) if is_checkpoint(model) and path.is_file() else None


def model_config(model: str, **overrides):
    """The config of a preset, or of a local checkpoint directory (a folder with config.json), with `overrides`
    given as to the config's constructor: `num_hidden_layers` cuts a checkpoint to its first layers as it cuts a
    preset. A directory of another model type is refused here, before its weights load."""
    if not is_checkpoint(model):
        return preset_config(model, **overrides)
    path = Path(model)
    if not (path / "config.json").is_file():
        raise ValueError(f"model {model!r} is neither a preset ({', '.join(PRESETS)}) nor a local checkpoint "
                         "directory (a folder with config.json)")
    try:
        values = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path / 'config.json'}: not JSON ({error})") from None
    kind = values.pop("model_type", None)
    if kind not in MODEL_TYPES:
        raise ValueError(f"{path}: model type {kind!r}; the engine drives {', '.join(sorted(MODEL_TYPES))}")
    if "num_hidden_layers" in overrides:
        if overrides["num_hidden_layers"] > values.get("num_hidden_layers", 0):
            raise ValueError(f"{path} has {values.get('num_hidden_layers')} layers, not "
                             f"{overrides['num_hidden_layers']}")
        values.pop("layer_types", None)  # one per layer: remade for the new depth
    return AutoConfig.for_model(kind, **{**values, **overrides})


def build_model(config, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """Random weights, created directly on `device` (a 93 GB Mixtral never touches host memory)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
               config=None) -> PreTrainedModel:
    """A checkpoint from a local directory (never the hub); with `config` (`model_config`'s), as that config says:
    cut to fewer layers, the later layers' weights are left unread."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json: not a local checkpoint directory")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would list every weight of the layers a cut leaves unread
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype,
                                                           attn_implementation="sdpa", local_files_only=True,
                                                           output_loading_info=True)
    except OSError as error:  # no weight files, say: the CLIs report a FileNotFoundError as an error, not a trace
        raise FileNotFoundError(f"{path}: {error}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if missing := sorted(info["missing_keys"]):  # transformers would leave them random, and warn only
        raise ValueError(f"{path}: the checkpoint lacks {len(missing)} of the model's weights ({missing[0]}, ...)")
    return model.to(device).eval()


def build_or_load(model: str, config, device: str = "cpu", dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A preset with random weights, or a local checkpoint's weights (`model`, `config` from `model_config`)."""
    if is_checkpoint(model):
        return load_model(model, device, dtype, config)
    return build_model(config, device, dtype)
