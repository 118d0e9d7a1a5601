"""A high-priority CUDA stream for a batch that preempts work the device has already queued.

With run-ahead depth 1 (real.timeline) the device holds one issued layer of the running batch behind the
one it is running, so a batch started at a scheduling point waits for both: about 1.5 layers on average,
two at worst. A batch started while other work is in flight is instead issued on the *urgent* stream, of
the highest priority: the GPU's block scheduler dispatches its kernels ahead of the queued layers, which
finish in the background on the SMs it leaves free. That work is not wasted, and nothing is cancelled.

The batch keeps the stream for its whole run of advances. When it stops running (paused, merged, its
pass finished), the lane *joins*: the main stream waits for the urgent one, and the batch's tensors are
marked as used on the main stream, since the caching allocator would otherwise hand their memory to the
next urgent batch while the main stream still reads it. Batches that replay CUDA graphs stay on the main
stream: the graphs share one memory pool, which admits one replay at a time.

Without a stream (CPU, or the lane switched off) the lane keeps its bookkeeping only, so tests on the
CPU check when batches would claim and leave it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field, fields, is_dataclass
from functools import cache

import torch

from real.batch import BatchState


@cache
def urgent_stream(device: torch.device) -> torch.cuda.Stream:
    """One stream of the highest priority per device (the same object for every run of a process, so that
    a warm-up on it fills the allocator pool and library workspaces the runs use)."""
    return torch.cuda.Stream(device, priority=-100)  # out of range: torch maps it to the highest priority


@dataclass
class PriorityLane:
    stream: torch.cuda.Stream | None = None  # None: bookkeeping only
    enabled: bool = True
    batch_id: int | None = None  # the batch now issued on the urgent stream
    claims: list[int] = field(default_factory=list)  # batch ids that took the lane, in order

    def claim(self, batch_id: int) -> bool:
        """Take the lane for a batch that starts while the device is busy; False when switched off."""
        if not self.enabled:
            return False
        if self.batch_id is not None:
            raise RuntimeError(f"lane held by batch {self.batch_id}: join it before batch {batch_id} claims it")
        self.batch_id = batch_id
        self.claims.append(batch_id)
        return True

    def issue(self, batch_id: int):
        """Context for issuing `batch_id`'s work: on the urgent stream if it holds the lane."""
        if self.stream is None or batch_id != self.batch_id:
            return nullcontext()
        return torch.cuda.stream(self.stream)

    def join(self, batch: BatchState | None) -> None:
        """The lane's batch goes back to the main stream (`batch`: its state, None once it is gone)."""
        if self.batch_id is None:
            return
        self.batch_id = None
        if self.stream is None:
            return
        main = torch.cuda.current_stream(self.stream.device)
        main.wait_stream(self.stream)
        if batch is not None:
            for tensor in _tensors(batch):
                tensor.record_stream(main)


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
