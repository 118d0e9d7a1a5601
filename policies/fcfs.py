"""TGI-style iteration-level continuous batching, first come first served (the paper's baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from policies.admission import admit_fifo, by_arrival
from policies.batch import Granularity
from policies.decision import CONTINUE, Decision, Resume, RunBatch
from policies.view import SchedulerView


@dataclass
class FCFS:
    """Between iterations: prefill newcomers (oldest first, priority-blind) while fewer than
    `max_batch_size` requests are active, else one decode pass of the active requests."""

    max_batch_size: int = 32
    granularity: Granularity = Granularity.ITERATION

    def __post_init__(self) -> None:
        self.granularity = Granularity.parse(self.granularity)
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")

    def schedule(self, view: SchedulerView) -> Decision:
        if view.running is not None:
            return CONTINUE
        if view.paused:
            return Resume(view.paused[0].batch_id)
        q = view.queues
        room = self.max_batch_size - view.num_decoding
        newcomers = admit_fifo(by_arrival(q.ls_prefill, q.be_prefill), room, view.num_free_kv_tokens)
        if newcomers:
            return RunBatch(tuple(newcomers))
        decoding = list(by_arrival(q.ls_decode, q.be_decode))[: self.max_batch_size]
        return RunBatch(tuple(decoding)) if decoding else CONTINUE
