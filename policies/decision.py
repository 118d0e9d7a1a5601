"""What a policy may ask of an engine. The engine applies it; the policy never mutates state."""

from __future__ import annotations

from dataclasses import dataclass

from policies.request import Request


@dataclass(frozen=True, slots=True)
class Continue:
    """Keep running the current batch (or stay idle if there is none)."""


@dataclass(frozen=True, slots=True)
class RunBatch:
    """Start a new batch at layer 0 from waiting requests; a running batch is paused first."""

    requests: tuple[Request, ...]


@dataclass(frozen=True, slots=True)
class Resume:
    """Continue a paused batch where it stopped; a running batch is paused first."""

    batch_id: int


@dataclass(frozen=True, slots=True)
class Merge:
    """Fold paused batches into the running one; they must sit at a position it can absorb."""

    batch_ids: tuple[int, ...]


Decision = Continue | RunBatch | Resume | Merge

CONTINUE = Continue()
