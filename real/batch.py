"""A batch in flight: its sequences, their packed residual stream and MoE progress, and its
position. Merging and splitting move rows of small per-pass tensors; KV stays in the pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from policies import Position, Stage
from real.layout import Layout, PinnedStaging, build_layout
from real.sequence import Sequence


@dataclass(eq=False)
class MoEState:
    """Between the router and the last expert of a layer. T = tokens, D = hidden, k = top-k."""

    x: torch.Tensor  # [T, D] normalised expert input
    weights: torch.Tensor  # [T, k] routing weights
    experts: torch.Tensor  # [T, k] chosen experts
    out: torch.Tensor  # [T, D] sum of the expert outputs done so far
    first_expert: torch.Tensor  # [T] experts below this were already run for the token

    def select(self, rows: torch.Tensor) -> MoEState:
        return MoEState(self.x[rows], self.weights[rows], self.experts[rows], self.out[rows], self.first_expert[rows])


@dataclass(eq=False)
class BatchState:
    seqs: list[Sequence]
    hidden: torch.Tensor  # [T, D] residual stream at `position`
    layout: Layout
    position: Position
    moe: MoEState | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # the pass's rotary tables (Engine.lean_attention)

    @property
    def seq_ids(self) -> list[int]:
        return [s.seq_id for s in self.seqs]


def merge(running: BatchState, paused: BatchState, staging: PinnedStaging | None = None) -> BatchState:
    """Fold `paused` into `running`; inside the MoE stage the paused tokens keep their place in
    the expert queues (they skip the experts they already ran). Before the router (a batch stopped
    between stages) the residual streams are simply stacked. `staging`: the engine's (real.layout)."""
    if not running.position.can_absorb(paused.position):
        raise ValueError(f"cannot merge a batch at {paused.position} into one at {running.position}")
    seqs = running.seqs + paused.seqs
    moe = None
    if running.position.stage == Stage.EXPERTS:
        parts = [_clamped(running), _clamped(paused)]
        moe = MoEState(*(torch.cat([getattr(p, f) for p in parts]) for f in
                         ("x", "weights", "experts", "out", "first_expert")))
    hidden = torch.cat([running.hidden, paused.hidden])
    return BatchState(seqs, hidden, build_layout(seqs, hidden.device, staging=staging,
                                                                 varlen=running.layout.varlen), running.position, moe)


def split(batch: BatchState, seq_ids: set[int]) -> tuple[BatchState, BatchState]:
    """(the sequences in `seq_ids`, the rest), both at the batch's position."""
    halves = []
    for keep in (True, False):
        seqs = [s for s in batch.seqs if (s.seq_id in seq_ids) == keep]
        rows = _rows_of(batch, [s.seq_id in seq_ids for s in batch.seqs], keep)
        moe = batch.moe.select(rows) if batch.moe is not None else None
        halves.append(BatchState(seqs, batch.hidden[rows], build_layout(seqs, batch.hidden.device, varlen=batch.layout.varlen),
                                 batch.position, moe))
    return halves[0], halves[1]


def _clamped(batch: BatchState) -> MoEState:
    moe = batch.moe
    cursor = torch.full_like(moe.first_expert, batch.position.expert)
    return MoEState(moe.x, moe.weights, moe.experts, moe.out, torch.maximum(moe.first_expert, cursor))


def _rows_of(batch: BatchState, member: list[bool], keep: bool) -> torch.Tensor:
    rows, offset = [], 0
    for seq, is_member in zip(batch.seqs, member):
        if is_member == keep:
            rows.extend(range(offset, offset + seq.num_new))
        offset += seq.num_new
    return torch.tensor(rows, dtype=torch.long, device=batch.hidden.device)
