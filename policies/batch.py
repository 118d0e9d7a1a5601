"""Batches and where they stand inside an iteration (layer, stage, expert)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from policies.request import Request


class Stage(IntEnum):
    """Stages of one decoder layer, in execution order."""

    ATTENTION = 0
    ROUTER = 1
    EXPERTS = 2


class Granularity(IntEnum):
    """Where an engine must consult a policy. Finer levels include the coarser points."""

    ITERATION = 0
    LAYER = 1
    EXPERT = 2

    @classmethod
    def parse(cls, value: Granularity | str | int) -> Granularity:
        """Accept an enum member, its name in any case ('layer'), or its value, as configs spell it."""
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                raise ValueError(f"unknown granularity {value!r}; choose iteration, layer or expert") from None
        return cls(value)


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """The next stage a batch will run. `layer == num_layers` means only the LM head is left."""

    layer: int = 0
    stage: Stage = Stage.ATTENTION
    expert: int = 0

    def is_scheduling_point(self, granularity: Granularity) -> bool:
        if self.layer == 0 and self.stage == Stage.ATTENTION:
            return True
        if granularity >= Granularity.LAYER and self.stage == Stage.ATTENTION:
            return True
        return granularity >= Granularity.EXPERT and self.stage == Stage.EXPERTS

    def can_absorb(self, paused: Position) -> bool:
        """Can a batch here merge with a batch paused at `paused`?

        Same layer and stage; inside the MoE stage the running batch may be at an earlier expert,
        because the paused tokens wait in the per-expert queues of the experts they still need.
        """
        if self.layer != paused.layer or self.stage != paused.stage:
            return False
        return self.expert <= paused.expert if self.stage == Stage.EXPERTS else True


@dataclass(slots=True, eq=False)
class Batch:
    """A set of requests moving through the layers together."""

    batch_id: int
    requests: list[Request]
    position: Position = field(default_factory=Position)

    @property
    def num_requests(self) -> int:
        return len(self.requests)

    @property
    def has_ls(self) -> bool:
        return any(r.is_ls for r in self.requests)

    @property
    def num_tokens(self) -> int:
        return sum(r.num_step_tokens for r in self.requests)
