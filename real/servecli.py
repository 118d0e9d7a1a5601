"""`python -m real serve key=value ...`: the real engine behind an OpenAI-compatible HTTP endpoint (Hydra)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from real.cli import CONF_DIR  # first: it sets the CUDA allocator's settings before torch loads
from real.live import LiveServer, LiveSpec, close_on_signals, results
from real.model import checkpoint_tokenizer
from real.run import EngineSettings
from sim.results import format_summary


def build_spec(cfg: DictConfig, policy_name: str) -> LiveSpec:
    engine = EngineSettings(**OmegaConf.to_container(cfg.engine, resolve=True))
    if engine.max_len is None:
        raise ValueError("engine.max_len must be set for serving (the KV slot length)")
    return LiveSpec(policy=instantiate(cfg.policy), policy_name=policy_name, engine=engine, max_len=int(engine.max_len),
                    max_batch_size=int(cfg.max_batch_size), slo_s=float(cfg.slo_s), host=str(cfg.host),
                    port=int(cfg.port), default_priority=str(cfg.default_priority),
                    default_max_tokens=int(cfg.default_max_tokens),
                    tokenizer=cfg.tokenizer or checkpoint_tokenizer(engine.model),
                    switch_interval_us=float(cfg.switch_interval_us), frontend=str(cfg.frontend))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="real_serve")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        spec = build_spec(cfg, hydra_cfg.runtime.choices.get("policy", "custom"))
        print(f"building {spec.engine.model} on {spec.engine.device} ...", flush=True)
        live = LiveServer.build(spec)
        close_on_signals(live.arrivals)
        outcome = live.run(on_ready=lambda url: print(
            f"serving {spec.policy_name} at {url}/v1/completions (Ctrl-C to stop)", flush=True))
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # the port is taken, say
        print(f"error: cannot serve on {cfg.host}:{cfg.port}: {error.strerror or error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("aborted: unfinished requests were answered with an error", file=sys.stderr)
        sys.exit(130)
    table, summary = results(outcome, spec, out_dir, live.placement.loop)
    table.to_parquet(out_dir / "requests.parquet", index=False)
    if live.frontend is not None:
        live.frontend.arrivals.transit_table().to_parquet(out_dir / "frontend.parquet", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{spec.policy_name}: {len(table)} requests served over HTTP ({spec.engine.model}, "
          f"{spec.engine.device})  ->  {out_dir}")
    if len(table):
        print(format_summary(summary))
