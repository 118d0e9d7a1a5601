"""A fully resolved simulation run, and executing it: trace -> simulate -> tables."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from policies import Policy
from sim.hardware import HardwareSpec
from sim.model import ModelSpec
from sim.plan import CostModel
from sim.profile.select import ProfileSpec, build_profile
from sim.results import requests_table, summarize
from sim.routing import ExpertRouter
from sim.simulate import simulate
from sim.workload import WorkloadConfig, generate_trace, read_trace, to_requests


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, as typed objects (built from Hydra config at the entry point)."""

    policy: Policy
    policy_name: str
    workload: WorkloadConfig
    model: ModelSpec
    hardware: HardwareSpec
    profile: ProfileSpec
    seed: int = 0
    max_batch_size: int = 32
    slo_s: float = 3.0
    routing_skew: float = 0.0
    stage_stops: bool = False  # an arrival also ends a layer between its stages (the real engine.stage_stops)
    host_ahead: bool = False  # iteration-level passes issued a pass ahead of the GPU (sim.pipeline; the real engine)
    trace_path: str | None = None
    progress: bool = False


@dataclass(frozen=True)
class RunResult:
    requests: pd.DataFrame
    summary: dict


def load_trace(spec: RunSpec) -> pd.DataFrame:
    if spec.trace_path is not None:
        return read_trace(Path(spec.trace_path))
    return generate_trace(spec.workload, spec.seed)


def execute(spec: RunSpec) -> RunResult:
    trace = load_trace(spec)
    requests = to_requests(trace)
    profile = build_profile(spec.profile, spec.model, spec.hardware)
    router = ExpertRouter(spec.model.num_layers, spec.model.num_experts, spec.model.top_k,
                          skew=spec.routing_skew, seed=spec.seed)
    costs = CostModel(spec.model, profile, router)
    with tqdm(total=len(requests), disable=not spec.progress, unit="req", leave=False) as bar:
        outcome = simulate(requests, spec.policy, costs, spec.hardware.kv_capacity_tokens(spec.model),
                           spec.max_batch_size, on_finish=lambda _: bar.update(),
                           stage_stops=spec.stage_stops, host_ahead=spec.host_ahead)
    table = requests_table(outcome.requests, "sim", spec.policy_name, spec.workload.rate, spec.seed)
    summary = summarize(table, spec.slo_s, outcome.busy_s)
    summary["run"] = {"policy": spec.policy_name, "rate": spec.workload.rate, "seed": spec.seed,
                      "profile": profile.name, "num_consults": outcome.num_consults}
    return RunResult(table, summary)
