"""`python -m calibrate run key=value ...` (Hydra overrides of calibrate/conf/calibrate.yaml) and
`python -m calibrate check DIR`. On machines without Hydra call `python -m calibrate.measure`."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from sim.entry import needs_engine

ROOT = Path(__file__).resolve().parents[1]
USAGE = """usage: python -m calibrate run [key=value ...]    (keys: calibrate/conf/calibrate.yaml)
       python -m calibrate check DIR [--impl engine hf]
       python -m calibrate serving RUN_DIR... --profile DIR   (server costs from real.run step logs)

examples:
  python -m calibrate run model=tiny-mixtral small=true          # CPU smoke test
  python -m calibrate run model=mixtral-8x7b hardware=h200 full=true
"""


@dataclass(frozen=True)
class CalibrateConfig:
    model: str = "mixtral-8x7b"
    hardware: str | None = None
    device: str | None = None
    impls: list[str] = field(default_factory=lambda: ["engine", "hf"])
    repeats: int = 10
    inner: int = 4
    pass_repeats: int = 10
    small: bool = False
    full: bool = False
    grid: bool = True
    out: str | None = None


def compose(overrides: list[str]) -> CalibrateConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "calibrate" / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="calibrate", overrides=overrides)
    return CalibrateConfig(**OmegaConf.to_container(cfg, resolve=True))


def argv_for(config: CalibrateConfig) -> list[str]:
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = torch.cuda.get_device_name().lower() if device == "cuda" else "cpu"
    hardware = config.hardware or next((n for n in ("h100", "h200", "a100") if n in gpu), gpu.replace(" ", "-"))
    dtype = "bf16" if device == "cuda" else "fp32"
    out = config.out or str(ROOT / "calibrate" / "profiles" / hardware / f"{config.model}-{dtype}")
    argv = ["--model", config.model, "--device", device, "--impls", *config.impls, "--repeats", str(config.repeats),
            "--inner", str(config.inner), "--pass-repeats", str(config.pass_repeats), "--out", out]
    return argv + ["--small"] * config.small + ["--full"] * config.full + ["--no-grid"] * (not config.grid)


def entry() -> None:
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "run":
        def load():
            from calibrate.measure import main

            return main
        main = needs_engine(load)  # before argv_for, which asks torch for the GPU
        main(argv_for(compose(args)))
    elif command == "check":
        from calibrate.check import main

        main(args)
    elif command == "serving":
        from calibrate.serving import main

        main(args)
    else:
        print(USAGE, file=sys.stderr)
        sys.exit(0 if command in ("-h", "--help") else 2)


if __name__ == "__main__":
    entry()
