"""Compose a run from the Hydra configs without the command line (benchmarks, notebooks, tests)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from sim.cli import CONF_DIR, build_spec
from sim.run import RunSpec


def compose_config(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def compose_spec(overrides: list[str]) -> RunSpec:
    """A RunSpec as `python -m sim run <overrides>` would build it (policy named by its config)."""
    cfg = compose_config(overrides)
    policy = next((o.split("=", 1)[1] for o in overrides if o.startswith("policy=")), "qllm")
    return build_spec(cfg, policy, overrides)
