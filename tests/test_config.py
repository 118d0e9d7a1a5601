"""Every Hydra config composes and instantiates into the typed objects a run needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from policies import Policy
from sim.cli import CONF_DIR
from sim.compose import compose_spec
from sim.model import ModelSpec
from sim.profile.derive import decode_step_s
from sim.profile.select import build_profile

# the published config.json values (the keys the simulator reads, and some it ignores) of two MoE families
HF_CONFIGS = {
    "mixtral-8x7b": {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
                     "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 32000,
                     "rope_theta": 1e6, "sliding_window": None, "torch_dtype": "bfloat16"},
    "qwen3-moe-30b-a3b": {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
                          "intermediate_size": 6144, "moe_intermediate_size": 768, "num_hidden_layers": 48,
                          "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128,
                          "num_experts_per_tok": 8, "vocab_size": 151936, "decoder_sparse_step": 1,
                          "mlp_only_layers": [], "norm_topk_prob": True},
}

GROUPS = {g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
          for g in ("policy", "workload", "model", "hardware", "experiment")}


@pytest.mark.parametrize("group,name", [(g, n) for g, names in GROUPS.items() for n in names])
def test_config_composes_and_instantiates(group, name, tmp_path):
    overrides = [f"{group}={name}"]
    if name == "hf":  # dimensions from a Hugging Face config.json
        (tmp_path / "config.json").write_text(json.dumps(HF_CONFIGS["mixtral-8x7b"]))
        overrides.append(f"model.config={tmp_path}")
    if group == "model":  # bf16 Mixtral only fits on the 141 GB card
        overrides.append("hardware=h200")
    if group == "hardware":  # 4-bit Mixtral fits every card; measured profiles exist for bf16 Qwen3-30B-A3B on both GPUs
        overrides.append("model=qwen3-moe-30b-a3b" if name.endswith("-measured") else "model=mixtral-8x7b-4bit")
    spec = compose_spec(overrides)
    assert isinstance(spec.policy, Policy)
    assert spec.workload.rate == 7.0
    profile = build_profile(spec.profile, spec.model, spec.hardware)
    assert 0 < decode_step_s(profile, spec.model, 32, 512) < 1.0
    assert spec.hardware.kv_capacity_tokens(spec.model) > 10_000


def test_top_level_overrides_reach_the_workload():
    spec = compose_spec(["rate=3.5", "seed=9", "num_requests=17", "max_batch_size=8", "policy=fcfs"])
    assert (spec.workload.rate, spec.seed, spec.workload.num_requests) == (3.5, 9, 17)
    assert spec.policy.max_batch_size == 8 and spec.policy_name == "fcfs"


def test_paper_experiment_selects_its_presets():
    spec = compose_spec(["experiment=paper"])
    assert spec.model.weight_bits == 4 and spec.profile.kind != "analytic"
    assert spec.workload.output_mode == "fixed"


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_a_hugging_face_config_gives_the_presets_dimensions(name, tmp_path):
    """`model=hf model.config=PATH` reads Mixtral's and Qwen3-MoE's config.json (the file or its folder) into the
    dimensions the shipped presets give by hand."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(HF_CONFIGS[name]))
    expected = compose_spec([f"model={name}"]).model
    assert ModelSpec.from_hf_config(folder) == expected  # the folder's name is the model's
    spec = compose_spec(["model=hf", f"model.config={folder / 'config.json'}", "model.name=mine", "hardware=h200"])
    assert spec.model == ModelSpec(**{**{f: getattr(expected, f) for f in expected.__slots__}, "name": "mine"})


@pytest.mark.parametrize("change, message", [
    (None, "needs model.config=PATH"),
    ({"num_local_experts": None}, "not a mixture of experts"),
    ({"n_shared_experts": 2}, "does not model n_shared_experts"),
    ({"mlp_only_layers": [0, 1]}, "does not model mlp_only_layers"),
    ({"decoder_sparse_step": 2}, "does not model decoder_sparse_step"),
    ({"hidden_size": None, "intermediate_size": None}, "lacks hidden_size, intermediate_size"),
])
def test_a_hugging_face_config_the_simulator_cannot_model_is_refused(change, message, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**HF_CONFIGS["mixtral-8x7b"], **(change or {})}))
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_hf_config(None if change is None else tmp_path)


def test_a_missing_or_broken_hugging_face_config_says_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        ModelSpec.from_hf_config(tmp_path / "absent.json")
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        ModelSpec.from_hf_config(tmp_path)
