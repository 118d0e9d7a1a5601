"""QLLM: Algorithm 1 of the paper plus preemption of best-effort batches inside an iteration."""

from __future__ import annotations

from dataclasses import dataclass

from policies.admission import admit_fifo, kv_of, within_padded_tokens
from policies.batch import Granularity
from policies.decision import CONTINUE, Decision, Merge, Resume, RunBatch
from policies.request import Request
from policies.view import SchedulerView


@dataclass
class QLLM:
    """Priority-aware preemptive scheduling.

    Mid-iteration, a batch with no LS request is paused as soon as LS work waits; the new LS batch
    absorbs the paused batch when it reaches the paused position (nothing recomputed). Between
    iterations, Algorithm 1 forms the next batch. Beyond the paper: `fill_ls_prefill=False` keeps
    LS prefill batches LS-only; `preempt_ls_decode=True` also pauses batches of LS decodes (but never
    LS prefills) for a waiting LS prefill, so a new LS request starts within one layer;
    `fill_max_tokens` caps the BE prefills that fill an LS prefill batch at that many padded tokens
    (batch x longest prompt), since a running LS prefill is not preempted by the next LS request unless
    `ls_catch_up_layers` > 0: then a waiting LS prefill also pauses an LS prefill batch that has run
    fewer than that many layers, and merges with it on reaching its layer (the new request catches
    up instead of waiting for the whole pass; past half the layers, waiting costs the pair less);
    A paused batch holding an LS prefill (a catch-up's, not absorbed when the pass that paused it ended) is
    resumed before any batch but a waiting LS prefill's: behind LS decodes it could wait for seconds.
    `ls_kv_reserve` keeps that fraction of the KV cache out of reach of BE prefills (unless the cache
    is empty), so a new LS request is not kept waiting for memory held by BE requests admitted before it.
    `be_prefill_room=True` runs waiting BE prefills (oldest first) before a decode batch while fewer than
    `max_batch_size` requests decode, as fcfs does: Algorithm 1 admits them only when no decode waits or
    as the fill of an LS prefill batch, so decode batches shrink as requests finish (H200, 28 req/s: 26.4
    sequences per decode layer against fcfs's 29.6, 12% more decode layers, 4% fewer tokens/s).
    `room_min_fill` holds them back until they fill at least that share of the room (max_batch_size minus
    the requests decoding): a prefill pass ahead of the decodes delays every LS decode by its length, which
    pays off only for a sizeable refill (at a third, LS turnaround at low load stays Algorithm 1's, and the
    throughput near and above saturation fcfs's; BENCHMARKS.md, rounds 8 and 9).
    """

    max_batch_size: int = 32
    granularity: Granularity = Granularity.LAYER
    fill_ls_prefill: bool = True
    preempt_ls_decode: bool = False
    fill_max_tokens: int | None = None
    ls_catch_up_layers: int = 0
    ls_kv_reserve: float = 0.0
    be_prefill_room: bool = False
    room_min_fill: float = 0.0

    def __post_init__(self) -> None:
        self.granularity = Granularity.parse(self.granularity)
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.fill_max_tokens is not None and self.fill_max_tokens < 1:
            raise ValueError(f"fill_max_tokens must be >= 1 or null, got {self.fill_max_tokens}")
        if self.ls_catch_up_layers < 0:
            raise ValueError(f"ls_catch_up_layers must be >= 0, got {self.ls_catch_up_layers}")
        if not 0.0 <= self.room_min_fill <= 1.0:
            raise ValueError(f"room_min_fill must be in [0, 1], got {self.room_min_fill}")
        if not 0.0 <= self.ls_kv_reserve < 1.0:
            raise ValueError(f"ls_kv_reserve must be in [0, 1), got {self.ls_kv_reserve}")

    def schedule(self, view: SchedulerView) -> Decision:
        running = view.running
        if running is not None:
            mergeable = tuple(b.batch_id for b in view.paused if running.position.can_absorb(b.position))
            if mergeable:
                return Merge(mergeable)
            if not self._preemptible(running, view):
                return CONTINUE
            batch = self.next_batch(view)
            # a batch holding LS work gives way to an LS prefill only, never to other decodes
            wanted = _is_ls_prefill if running.has_ls else _is_ls
            return RunBatch(batch) if any(map(wanted, batch)) else CONTINUE
        if view.paused and not view.queues.has_ls:
            return Resume(view.paused[0].batch_id)
        held = next((b for b in view.paused if any(map(_is_ls_prefill, b.requests))), None)
        if held is not None and not view.queues.ls_prefill:
            return Resume(held.batch_id)  # an LS prefill a catch-up paused, which no batch absorbed: before decodes
        batch = self.next_batch(view)
        if batch:
            return RunBatch(batch)
        return Resume(view.paused[0].batch_id) if view.paused else CONTINUE

    def _preemptible(self, running, view: SchedulerView) -> bool:
        if not running.has_ls:
            return view.queues.has_ls if not self.preempt_ls_decode else bool(view.queues.ls_prefill)
        if not view.queues.ls_prefill:
            return False
        if any(map(_is_ls_prefill, running.requests)):
            return running.position.layer < self.ls_catch_up_layers
        return self.preempt_ls_decode

    def next_batch(self, view: SchedulerView) -> tuple[Request, ...]:
        """Algorithm 1 (GetNextBatch); prefills also respect the free KV budget."""
        q, size, free_kv = view.queues, self.max_batch_size, view.num_free_kv_tokens
        if len(q.ls_decode) >= size:
            return tuple(q.ls_decode.head(size))
        # the LS share binds only while something holds memory: a BE request larger than the rest of
        # the cache still runs once the cache is empty
        empty = free_kv >= view.kv_capacity_tokens
        be_free_kv = free_kv if empty else free_kv - int(self.ls_kv_reserve * view.kv_capacity_tokens)
        ls_prefill = admit_fifo(q.ls_prefill, size, free_kv)
        if ls_prefill:
            room = size - len(ls_prefill) if self.fill_ls_prefill else 0
            fill = admit_fifo(q.be_prefill, room, be_free_kv - kv_of(ls_prefill))
            if self.fill_max_tokens is not None:
                fill = within_padded_tokens(ls_prefill, fill, self.fill_max_tokens)
            return tuple(ls_prefill + fill)
        if self.be_prefill_room and view.num_decoding < size:
            newcomers = admit_fifo(q.be_prefill, size - view.num_decoding, be_free_kv)
            if newcomers and len(newcomers) >= self.room_min_fill * (size - view.num_decoding):
                return tuple(newcomers)
        if q.ls_decode:
            ls_decode = q.ls_decode.head(size)
            return tuple(ls_decode + q.be_decode.head(size - len(ls_decode)))
        if q.be_decode:
            return tuple(q.be_decode.head(size))
        return tuple(admit_fifo(q.be_prefill, size, be_free_kv))


def _is_ls(request: Request) -> bool:
    return request.is_ls


def _is_ls_prefill(request: Request) -> bool:
    return request.is_ls and request.is_prefill
