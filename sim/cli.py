"""`python -m sim run key=value ...`: Hydra entry point. Converts the composed config to typed
objects, runs, writes requests.parquet + summary.json to the run folder, prints the summary."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.select import ProfileSpec
from sim.results import format_summary
from sim.run import RunResult, RunSpec, execute
from sim.workload import WorkloadConfig, replayed_workload

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

EXPECTED_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def build_spec(cfg: DictConfig, policy_name: str, overrides: Sequence[str] = ("rate=",)) -> RunSpec:
    """The only place that reads the config tree: everything below gets dataclasses. `overrides`: the command's
    (a trace replayed without `rate=` records the trace's rate)."""
    hardware = OmegaConf.to_container(cfg.hardware, resolve=True)
    profile = ProfileSpec(**hardware.pop("profile", {}))
    return RunSpec(
        policy=instantiate(cfg.policy),
        policy_name=policy_name,
        workload=replayed_workload(WorkloadConfig(**OmegaConf.to_container(cfg.workload, resolve=True)), cfg.trace,
                                   overrides),
        model=model_spec(OmegaConf.to_container(cfg.model, resolve=True)),
        hardware=HardwareSpec(**hardware),
        profile=profile,
        seed=int(cfg.seed),
        max_batch_size=int(cfg.max_batch_size),
        slo_s=float(cfg.slo_s),
        routing_skew=float(cfg.routing_skew),
        stage_stops=_flag(cfg.stage_stops, "stage_stops"),
        host_ahead=_flag(cfg.host_ahead, "host_ahead"),
        trace_path=cfg.trace,
        progress=bool(cfg.progress) and sys.stderr.isatty(),
    )


def model_spec(values: dict) -> ModelSpec:
    """`model=NAME` gives the dimensions; `model=hf` reads them from a Hugging Face config.json (`model.config`)."""
    if "config" in values:
        return ModelSpec.from_hf_config(**values)
    return ModelSpec(**values)


def _flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def save(result: RunResult, out_dir: Path) -> None:
    result.requests.to_parquet(out_dir / "requests.parquet", index=False)
    (out_dir / "summary.json").write_text(json.dumps(result.summary, indent=2))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        spec = build_spec(cfg, hydra_cfg.runtime.choices.get("policy", "custom"), hydra_cfg.overrides.task)
        result = execute(spec)
    except EXPECTED_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:  # hydra.errors.InstantiationError wraps a policy's own ValueError
        if type(error).__name__ != "InstantiationError":
            raise
        print(f"error: cannot build the policy: {error}", file=sys.stderr)
        sys.exit(2)
    save(result, out_dir)
    print(f"\n{spec.policy_name} @ {spec.workload.rate:g} req/s, seed {spec.seed}, "
          f"{result.summary['run']['profile']}  ->  {out_dir}")
    print(format_summary(result.summary))
    return result.summary["classes"]["LS"]["ttft_mean_s"]
