"""High-priority CUDA streams for a batch that preempts work the device has already queued.

With run-ahead depth 1 (real.timeline) the device holds one issued layer of the running batch behind the
one it is running, so a batch started at a scheduling point waits for both: about 1.5 layers on average,
two at worst. A batch started while other work is in flight is instead issued on an *urgent* stream of
higher priority than any stream with work in flight: the GPU's block scheduler dispatches its kernels ahead
of the queued layers, which finish in the background on the SMs it leaves free. That work is not wasted,
and nothing is cancelled. There are a few levels (torch offers three above the default), so an LS prefill
that preempts another urgent batch (a catch-up) also runs ahead of its queued layers; above the top level
a batch queues behind the work on it.

The batch keeps the stream for its whole run of advances. When it stops running (paused, merged, its
pass finished), the lane *joins*: the main stream waits for the urgent one, and the batch's tensors are
marked as used on the main stream, since the caching allocator would otherwise hand their memory to the
next urgent batch while the main stream still reads it. Batches that replay decode graphs never claim the lane
(real.server): the graphs share one memory pool, which admits one replay at a time, so they run on the main
stream. Prefill and mixed layers' graphs (real.passgraphs) have a runner, and so a pool, per stream: the engine
builds one for each stream it is warmed up on, and a batch leaving an urgent stream first takes its rows out of
that runner's buckets.

Without a stream (CPU, or the lane switched off) the lane keeps its bookkeeping only, so tests on the
CPU check when batches would claim and leave it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache
from typing import TYPE_CHECKING

import torch

from real.batch import BatchState

if TYPE_CHECKING:
    from real.engine import Engine


URGENT_LEVELS = 3  # torch's stream priorities above the default: -1, -2, -3


@cache
def urgent_streams(device: torch.device) -> tuple[torch.cuda.Stream, ...]:
    """Streams of rising priority, one per level (the same objects for every run of a process, so that a
    warm-up on them fills the allocator pools and library workspaces the runs use)."""
    return tuple(torch.cuda.Stream(device, priority=-level) for level in range(1, URGENT_LEVELS + 1))


def warm_up(engine: Engine, max_batch: int) -> None:
    """The engine's warm-up once on each urgent stream: the caching allocator keeps a pool per stream and
    the libraries a workspace per stream, and neither should be built while a timed replay runs."""
    for stream in urgent_streams(engine.device):
        with torch.cuda.stream(stream):
            engine.warm_up(max_batch)
    torch.cuda.synchronize(engine.device)


@dataclass
class PriorityLane:
    streams: tuple[torch.cuda.Stream, ...] = ()  # by rising priority; empty: bookkeeping only
    enabled: bool = True
    batch_id: int | None = None  # the batch now issued on an urgent stream
    level: int = 0  # its level (1 = the first above the main stream)
    claims: list[tuple[int, int]] = field(default_factory=list)  # (batch id, level) of each claim, in order

    @property
    def num_levels(self) -> int:
        return len(self.streams) or URGENT_LEVELS

    def level_of(self, stream_key: int) -> int:
        """The level of a stream (its `cuda_stream` handle); 0 for any other, the main stream."""
        keys = [s.cuda_stream for s in self.streams]
        return keys.index(stream_key) + 1 if stream_key in keys else 0

    def claim(self, batch_id: int, busy_levels: set[int]) -> bool:
        """Take a level above every level with work in flight (0: the main stream), or the top one, for a
        batch that starts while the device is busy; False when switched off or nothing is in flight."""
        if not self.enabled or not busy_levels:
            return False
        if self.batch_id is not None:
            raise RuntimeError(f"lane held by batch {self.batch_id}: join it before batch {batch_id} claims it")
        self.batch_id, self.level = batch_id, min(max(busy_levels) + 1, self.num_levels)
        self.claims.append((batch_id, self.level))
        return True

    @property
    def stream(self) -> torch.cuda.Stream | None:
        return self.streams[self.level - 1] if self.streams and self.batch_id is not None else None

    def issue(self, batch_id: int):
        """Context for issuing `batch_id`'s work: on its urgent stream if it holds the lane."""
        if self.stream is None or batch_id != self.batch_id:
            return nullcontext()
        return torch.cuda.stream(self.stream)

    def join(self, batch: BatchState | None) -> None:
        """The lane's batch goes back to the main stream (`batch`: its state, None once it is gone)."""
        if (held := self.detach()) is not None:
            held.rejoin(batch)

    def detach(self) -> Join | None:
        """Give the lane up, its batch's join left to the caller (`Join.rejoin`); None if nobody held it. Called
        outside `issue`, so the stream current then is the main one."""
        if self.batch_id is None:
            return None
        stream = self.stream
        held = Join(self.batch_id, stream, torch.cuda.current_stream(stream.device) if stream is not None else None)
        self.batch_id, self.level = None, 0
        return held


@dataclass(frozen=True)
class Join:
    """A batch that has given the lane up and goes on on the main stream, once `rejoin` has run: the server may do
    that after the next batch's first layer is issued (`engine.defer_joins`), off the preempting start's path."""

    batch_id: int
    stream: torch.cuda.Stream | None  # its urgent stream (None: bookkeeping only)
    main: torch.cuda.Stream | None  # the stream it goes back to

    def rejoin(self, batch: BatchState | None) -> None:
        """The main stream waits for the urgent one, and the batch's memory is marked as used on it: the caching
        allocator would otherwise hand that memory to the urgent stream's next batch while the main stream reads it."""
        if self.stream is None:
            return
        self.main.wait_stream(self.stream)
        if batch is not None:
            for tensor in _storages(batch):
                tensor.record_stream(self.main)


def _storages(state) -> Iterator[torch.Tensor]:
    """One tensor per memory block of a batch's tensors: the allocator marks a block used on a stream, so a view
    marks its whole storage, and a layout's fields are views of one copied buffer (real.layout)."""
    seen = set()
    for tensor in _tensors(state):
        if (ptr := tensor.untyped_storage().data_ptr()) not in seen:
            seen.add(ptr)
            yield tensor


def _tensors(state) -> Iterator[torch.Tensor]:
    """Every tensor held by a batch: its residual stream, layout and MoE state (nested dataclasses)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, (list, tuple)):
        for item in state:
            yield from _tensors(item)
    elif is_dataclass(state) and not isinstance(state, type):
        for f in fields(state):
            if f.name != "seqs":
                yield from _tensors(getattr(state, f.name))
