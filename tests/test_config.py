"""Every Hydra config composes and instantiates into the typed objects a run needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import Policy
from sim.cli import CONF_DIR
from sim.compose import compose_spec
from sim.profile.derive import decode_step_s
from sim.profile.select import build_profile

GROUPS = {g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml"))
          for g in ("policy", "workload", "model", "hardware", "experiment")}


@pytest.mark.parametrize("group,name", [(g, n) for g, names in GROUPS.items() for n in names])
def test_config_composes_and_instantiates(group, name):
    overrides = [f"{group}={name}"]
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
