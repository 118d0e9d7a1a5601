"""A user-written policy in a few lines: strict LS priority between iterations, no preemption."""

from __future__ import annotations

from dataclasses import dataclass

from policies import CONTINUE, Decision, Granularity, RunBatch, SchedulerView
from policies.admission import admit_fifo


@dataclass
class LSFirst:
    """LS prefill, then LS decode, then BE decode, then BE prefill; whole iterations only."""

    max_batch_size: int = 32
    granularity: Granularity = Granularity.ITERATION

    def schedule(self, view: SchedulerView) -> Decision:
        if view.running is not None:
            return CONTINUE
        q, size, free_kv = view.queues, self.max_batch_size, view.num_free_kv_tokens
        for picked in (admit_fifo(q.ls_prefill, size, free_kv), q.ls_decode.head(size),
                       q.be_decode.head(size), admit_fifo(q.be_prefill, size, free_kv)):
            if picked:
                return RunBatch(tuple(picked))
        return CONTINUE
