"""Choosing a profile from the hardware config: analytic (roofline), derated (analytic with a
slower weight stream), measured (files written by `calibrate/`), or scaled (any of those stretched
to a target decode-step time: settings we can only derive, such as the paper's)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.profile.analytic import AnalyticProfile
from sim.profile.base import AttentionLoad, Overheads, Profile, expert_tokens
from sim.profile.derive import decode_step_s

KINDS = ("analytic", "derated", "measured", "scaled")
PROFILES_DIR = Path(__file__).resolve().parents[2] / "calibrate" / "profiles"
DTYPES = {16: "bf16", 8: "int8", 4: "int4"}


class ProfileError(ValueError):
    """A profile cannot be built or loaded (unknown kind, missing or malformed files)."""


@dataclass(frozen=True, slots=True)
class ProfileSpec:
    """`kind`: analytic | derated | measured | scaled.

    derated: lowers the analytic profile's weight-streaming bandwidth until a decode pass at batch
    `reference_batch`, context `reference_context` takes `decode_step_ms` (prefill keeps the FLOP rate).
    measured: `calibrate/profiles/<directory>` (default `<hardware>/<model>-<dtype>`); `impl` engine
    (real/'s stages, run stage by stage), engine-graphs (decode layers as CUDA graphs) or hf (Hugging
    Face's modules); `clock` pipelined (host and GPU paths of a layer overlap) or one timing column; `merge_ms` /
    `pause_resume_ms` override the measured event costs; `host_scale` multiplies its host-side costs (a serving
    host faster or slower than the profile's); `varlen_prefill` prices prefill attention as the engine's unpadded
    group (engine.varlen_prefill; the profile needs its attention_prefill_varlen curve), with `lean_attention` at
    the engine's lean attention curve (engine.lean_attention: attention_prefill_lean); `pass_graphs` (with
    engine-graphs) prices prefill and mixed layers as graph replays (engine.pass_graphs): their GPU path alone.
    scaled: the profile `base` describes (a dict of these fields; default: measured) with every
    stage multiplied by `factor`, or by the factor that makes the reference decode pass take
    `decode_step_ms`."""

    kind: str = "analytic"
    directory: str | None = None
    impl: str = "engine"
    clock: str = "pipelined"
    merge_ms: float | None = None
    pause_resume_ms: float | None = None
    decode_step_ms: float | None = None
    reference_batch: int = 32
    reference_context: int = 512
    base: dict | None = None
    factor: float | None = None
    host_scale: float = 1.0
    varlen_prefill: bool = False
    lean_attention: bool = False
    pass_graphs: bool = False


def build_profile(spec: ProfileSpec, model: ModelSpec, hardware: HardwareSpec) -> Profile:
    if spec.kind not in KINDS:
        raise ProfileError(f"unknown profile kind {spec.kind!r}; choose one of {', '.join(KINDS)}")
    if spec.kind == "analytic":
        return AnalyticProfile(model, hardware)
    if spec.kind == "measured":
        return measured(spec, model, hardware)
    if spec.kind == "scaled":
        return scaled(spec, model, hardware)
    if not spec.decode_step_ms or spec.decode_step_ms <= 0:
        raise ProfileError("a derated profile needs decode_step_ms > 0")
    return derate(AnalyticProfile(model, hardware), spec.decode_step_ms / 1000, spec.reference_batch,
                  spec.reference_context)


def measured_directory(spec: ProfileSpec, model: ModelSpec, hardware: HardwareSpec) -> Path:
    if spec.directory:
        return PROFILES_DIR / spec.directory  # an absolute directory stays as it is
    dtype = DTYPES.get(model.weight_bits, f"w{model.weight_bits}")
    return PROFILES_DIR / hardware.name / f"{model.name}-{dtype}"


def measured(spec: ProfileSpec, model: ModelSpec, hardware: HardwareSpec) -> Profile:
    from sim.profile.measured import MeasuredProfile, MeasuredProfileError

    directory = measured_directory(spec, model, hardware)
    if not spec.host_scale > 0:
        raise ProfileError(f"hardware.profile.host_scale must be > 0, got {spec.host_scale}")
    try:
        profile = MeasuredProfile(directory, top_k=model.top_k, impl=spec.impl, clock=spec.clock,
                                  projection_share=model.attention_params / model.expert_params,
                                  host_scale=spec.host_scale, varlen_prefill=spec.varlen_prefill,
                                  lean_attention=spec.lean_attention,
                                  pass_graphs=spec.pass_graphs)
    except MeasuredProfileError as error:
        raise ProfileError(str(error)) from None
    overrides = {}
    if spec.merge_ms is not None:
        overrides["merge_s"] = spec.merge_ms / 1000
    if spec.pause_resume_ms is not None:
        overrides["pause_s"], overrides["resume_s"] = spec.pause_resume_ms / 2000, spec.pause_resume_ms / 2000
    profile.overheads = replace(profile.overheads, **overrides)
    return profile


def scaled(spec: ProfileSpec, model: ModelSpec, hardware: HardwareSpec) -> Profile:
    base_spec = ProfileSpec(**{"kind": "measured", **(spec.base or {})})
    if base_spec.kind == "scaled":
        raise ProfileError("a scaled profile's base cannot itself be scaled")
    base = build_profile(base_spec, model, hardware)
    if spec.factor is not None:
        factor = spec.factor
    elif spec.decode_step_ms and spec.decode_step_ms > 0:
        factor = spec.decode_step_ms / 1000 / decode_step_s(base, model, spec.reference_batch, spec.reference_context)
    else:
        raise ProfileError("a scaled profile needs factor or decode_step_ms > 0")
    if factor <= 0:
        raise ProfileError(f"scale factor must be > 0, got {factor:g}")
    return ScaledProfile(base, factor)


@dataclass(frozen=True)
class ScaledProfile:
    """`base` with every stage and overhead multiplied by `factor`: the base's shape, another speed."""

    base: Profile
    factor: float

    @property
    def name(self) -> str:
        return f"scaled({self.base.name} x {self.factor:.3g})"

    @property
    def overheads(self) -> Overheads:
        o = self.base.overheads
        return Overheads(*(self.factor * v for v in (o.stage_s, o.iteration_s, o.pause_s, o.resume_s, o.merge_s)))

    def attention_s(self, load: AttentionLoad) -> float:
        return self.factor * self.base.attention_s(load)

    def router_s(self, num_tokens: int) -> float:
        return self.factor * self.base.router_s(num_tokens)

    def expert_tokens(self, load: AttentionLoad) -> int:
        return expert_tokens(self.base, load)  # a speed factor pads no differently

    def experts_s(self, loads: np.ndarray) -> np.ndarray:
        return self.factor * self.base.experts_s(loads)

    def lm_head_s(self, num_seqs: int) -> float:
        return self.factor * self.base.lm_head_s(num_seqs)


def derate(profile: AnalyticProfile, target_s: float, batch: int, context: int) -> AnalyticProfile:
    """Bisect the bandwidth (log scale) so one decode pass takes `target_s`."""
    model, hardware = profile.model, profile.hardware
    step = lambda bw: decode_step_s(replace(profile, hardware=replace(hardware, hbm_tb_s=bw)), model, batch, context)
    if step(hardware.hbm_tb_s) > target_s:
        raise ProfileError(f"{target_s * 1000:g} ms per decode pass is faster than the roofline allows")
    low, high = 1e-6, hardware.hbm_tb_s
    for _ in range(60):
        mid = (low * high) ** 0.5
        low, high = (mid, high) if step(mid) > target_s else (low, mid)
    derated = replace(hardware, name=f"{hardware.name}-derated", hbm_tb_s=high)
    return replace(profile, hardware=derated)
