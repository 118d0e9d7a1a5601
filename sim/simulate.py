"""One simulation run: a trace, a policy and a cost model in; finished requests out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import simpy

from policies import Policy, Request, SchedulerState
from sim.engine import SimEngine
from sim.plan import CostModel


class SimulationError(RuntimeError):
    """The run ended with requests unserved (a policy that idles while work waits)."""


@dataclass(frozen=True, slots=True)
class SimOutcome:
    requests: list[Request]
    busy_s: float
    makespan_s: float
    num_consults: int


def simulate(
    requests: list[Request],
    policy: Policy,
    costs: CostModel,
    kv_capacity_tokens: int,
    max_batch_size: int = 32,
    on_finish: Callable[[Request], None] = lambda r: None,
    stage_stops: bool = False,
    host_ahead: bool = False,
) -> SimOutcome:
    env = simpy.Environment()
    state = SchedulerState(kv_capacity_tokens=kv_capacity_tokens, max_batch_size=max_batch_size)
    engine = SimEngine(env, state, policy, costs, on_finish=on_finish, stage_stops=stage_stops,
                       host_ahead=host_ahead)
    ordered = sorted(requests, key=lambda r: (r.arrival_s, r.request_id))
    engine.start(ordered)
    env.run()
    unfinished = [r.request_id for r in requests if not r.is_finished]
    if unfinished:
        raise SimulationError(f"{len(unfinished)} requests never finished (first ids: {unfinished[:5]})")
    return SimOutcome(requests, engine.busy_s, env.now, engine.num_consults)
