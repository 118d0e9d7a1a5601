"""Choosing a profile by name from the hardware config: analytic, scaled (derived presets), or
measured (files written by `calibrate/`)."""

from __future__ import annotations

from dataclasses import dataclass

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.analytic import AnalyticProfile
from sim.profile.base import Profile
from sim.profile.derive import decode_step_s
from sim.profile.scaled import ScaledProfile

KINDS = ("analytic", "scaled")


class ProfileError(ValueError):
    """A profile cannot be built or loaded (unknown kind, missing or malformed files)."""


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """`kind`: analytic | scaled. `scaled` stretches the analytic shape so that a decode pass at
    batch `reference_batch` and context `reference_context` takes `decode_step_ms`."""

    kind: str = "analytic"
    decode_step_ms: float | None = None
    reference_batch: int = 32
    reference_context: int = 512


def build_profile(spec: ProfileSpec, model: ModelSpec, hardware: HardwareSpec) -> Profile:
    if spec.kind not in KINDS:
        raise ProfileError(f"unknown profile kind {spec.kind!r}; choose one of {', '.join(KINDS)}")
    analytic = AnalyticProfile(model, hardware)
    if spec.kind == "analytic":
        return analytic
    if not spec.decode_step_ms or spec.decode_step_ms <= 0:
        raise ProfileError("a scaled profile needs decode_step_ms > 0")
    base_ms = 1000 * decode_step_s(analytic, model, spec.reference_batch, spec.reference_context)
    return ScaledProfile(analytic, spec.decode_step_ms / base_ms, label=f"derived:{hardware.name}")
