"""Choosing a profile by name from the hardware config: analytic, scaled (derived presets), or
measured (files written by `calibrate/`)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.analytic import AnalyticProfile
from sim.profile.base import Overheads, Profile
from sim.profile.derive import decode_step_s

KINDS = ("analytic", "derated", "measured")
PROFILES_DIR = Path(__file__).resolve().parents[2] / "calibrate" / "profiles"


class ProfileError(ValueError):
    """A profile cannot be built or loaded (unknown kind, missing or malformed files)."""


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """`kind`: analytic | derated. `derated` lowers the effective weight-streaming bandwidth of the
    analytic profile until a decode pass at batch `reference_batch` and context
    `reference_context` takes `decode_step_ms`: slow stacks (HF eager + 4-bit dequantisation) lose
    time in memory-bound stages, while compute-bound prefill keeps the GPU's FLOP rate."""

    kind: str = "analytic"
    directory: str | None = None  # measured: calibrate/profiles/<gpu>/<model>-<dtype> (default from names)
    merge_ms: float = 0.0  # measured engine costs (real.bench), charged per merge / pause+resume
    pause_resume_ms: float = 0.0
    decode_step_ms: float | None = None
    reference_batch: int = 32
    reference_context: int = 512


def build_profile(spec: ProfileSpec, model: ModelSpec, hardware: HardwareSpec) -> Profile:
    if spec.kind not in KINDS:
        raise ProfileError(f"unknown profile kind {spec.kind!r}; choose one of {', '.join(KINDS)}")
    analytic = AnalyticProfile(model, hardware)
    if spec.kind == "analytic":
        return analytic
    if spec.kind == "measured":
        return _measured(spec, model, hardware)
    if not spec.decode_step_ms or spec.decode_step_ms <= 0:
        raise ProfileError("a derated profile needs decode_step_ms > 0")
    return derate(analytic, spec.decode_step_ms / 1000, spec.reference_batch, spec.reference_context)


def _measured(spec: ProfileSpec, model: ModelSpec, hardware: HardwareSpec) -> Profile:
    from sim.profile.measured import MeasuredProfile, MeasuredProfileError

    dtype = {16: "bf16", 8: "int8", 4: "int4"}.get(model.weight_bits, f"w{model.weight_bits}")
    directory = Path(spec.directory) if spec.directory else PROFILES_DIR / hardware.name / f"{model.name}-{dtype}"
    overheads = Overheads(pause_s=spec.pause_resume_ms / 1000, merge_s=spec.merge_ms / 1000)
    try:
        return MeasuredProfile(directory, top_k=model.top_k, overheads=overheads)
    except MeasuredProfileError as error:
        raise ProfileError(str(error)) from None


def derate(profile: AnalyticProfile, target_s: float, batch: int, context: int) -> AnalyticProfile:
    """Bisect the bandwidth (log scale) so one decode pass takes `target_s`."""
    model, hardware = profile.model, profile.hardware
    step = lambda bw: decode_step_s(replace(profile, hardware=replace(hardware, hbm_tb_s=bw)), model, batch, context)  # noqa: E731
    if step(hardware.hbm_tb_s) > target_s:
        raise ProfileError(f"{target_s * 1000:g} ms per decode pass is faster than the roofline allows")
    low, high = 1e-6, hardware.hbm_tb_s
    for _ in range(60):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if step(mid) > target_s else (low, mid)
    derated = replace(hardware, name=f"{hardware.name}-derated", hbm_tb_s=high)
    return replace(profile, hardware=derated)
