"""The read-only picture a policy decides on, and the Policy protocol itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from policies.batch import Batch, Granularity
from policies.decision import Decision
from policies.queues import Queues


@dataclass(frozen=True, slots=True)
class SchedulerView:
    """Everything a policy may look at. Treat every member as read-only."""

    now_s: float
    queues: Queues
    running: Batch | None
    paused: tuple[Batch, ...]
    num_free_kv_tokens: int
    max_batch_size: int
    kv_capacity_tokens: int = 0  # the whole cache, for policies that keep a share of it

    @property
    def num_decoding(self) -> int:
        """Admitted, unfinished requests that are waiting for their next decode pass."""
        return len(self.queues.ls_decode) + len(self.queues.be_decode)


@runtime_checkable
class Policy(Protocol):
    """A scheduling policy, shared unchanged by the simulator and the real engine.

    `granularity` says where the engine must consult `schedule`: between iterations only, also
    before every layer, or also before every expert. Engines may skip a scheduling point when,
    since the last consult, no request arrived and no batch was paused or finished, and no paused
    batch can be merged there: the view is the same, so the decision would be too. A policy whose
    decision depends on the clock alone (aging, deadlines) sets `consults_every_point = True`.
    """

    granularity: Granularity

    def schedule(self, view: SchedulerView) -> Decision: ...
