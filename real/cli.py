"""`python -m real run key=value ...`: replay a trace on the real engine (Hydra, same groups as sim)."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

# Before torch touches CUDA: with the KV pool filling the GPU, fixed-size segments made the allocator
# free and re-map memory (synchronising) whenever a prefill needed a new size.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from real.run import EngineSettings, ServeSpec, serve
from sim.results import format_summary
from sim.workload import WorkloadConfig, replayed_workload

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# A replay that stops making progress (session 22: two H100 runs stalled, silently, until a timeout killed them)
# tells where it is: `kill -USR1 PID` (or `timeout -s USR1 -k 10 T ...`) prints every thread's stack and lets it run on.
if hasattr(signal, "SIGUSR1"):
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def build_spec(cfg: DictConfig, policy_name: str, overrides: Sequence[str] = ("rate=",)) -> ServeSpec:
    """`overrides`: the command's (a trace replayed without `rate=` records the trace's rate)."""
    return ServeSpec(
        policy=instantiate(cfg.policy),
        policy_name=policy_name,
        workload=replayed_workload(WorkloadConfig(**OmegaConf.to_container(cfg.workload, resolve=True)), cfg.trace,
                                   overrides),
        engine=EngineSettings(**OmegaConf.to_container(cfg.engine, resolve=True)),
        seed=int(cfg.seed),
        max_batch_size=int(cfg.max_batch_size),
        slo_s=float(cfg.slo_s),
        trace_path=cfg.trace,
        progress=bool(cfg.get("progress", False)) and sys.stderr.isatty(),
    )


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="real")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        spec = build_spec(cfg, hydra_cfg.runtime.choices.get("policy", "custom"), hydra_cfg.overrides.task)
        table, summary = serve(spec, out_dir)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    table.to_parquet(out_dir / "requests.parquet", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{spec.policy_name} @ {spec.workload.rate:g} req/s on the real engine ({spec.engine.model}, "
          f"{spec.engine.device})  ->  {out_dir}")
    print(format_summary(summary))
