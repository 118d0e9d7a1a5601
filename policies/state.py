"""Scheduler bookkeeping both engines share: queues, running and paused batches, KV reservations.

An engine owns one `SchedulerState`, feeds it arrivals, asks the policy through `decide()` (which
shows it `view()` and hands its decisions to `apply()`), and calls `complete_pass()` when the running batch has passed the LM head.
All invariants (a request lives in exactly one place, KV never over-committed) are checked here,
so a faulty policy fails loudly in the simulator and on the GPU alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from policies.batch import Batch, Position
from policies.decision import Continue, Decision, Merge, Resume, RunBatch
from policies.queues import Queues
from policies.request import Request
from policies.view import Policy, SchedulerView


class PolicyError(RuntimeError):
    """A policy asked for something the engine cannot do."""


# An engine asks the policy again after every decision that changed its state (the view it acted on is
# gone), at most this many times at one scheduling point, so that two decisions undoing each other cannot
# stall the clock.
MAX_DECISIONS_PER_POINT = 4


@dataclass(frozen=True, slots=True)
class Transition:
    """What `apply` changed, so the engine can move its own per-batch state (loads, tensors)."""

    started: Batch | None = None
    paused: Batch | None = None
    resumed: Batch | None = None
    merged: tuple[Batch, ...] = ()

    @property
    def is_noop(self) -> bool:
        return not (self.started or self.paused or self.resumed or self.merged)


@dataclass(slots=True)
class SchedulerState:
    kv_capacity_tokens: int
    max_batch_size: int = 32
    queues: Queues = field(default_factory=Queues)
    running: Batch | None = None
    paused: list[Batch] = field(default_factory=list)
    num_reserved_kv_tokens: int = 0
    _next_batch_id: int = 0

    def arrive(self, request: Request) -> None:
        if request.num_kv_tokens > self.kv_capacity_tokens:
            raise PolicyError(
                f"request {request.request_id} needs {request.num_kv_tokens} KV tokens, "
                f"more than the whole cache ({self.kv_capacity_tokens})"
            )
        self.queues.push(request)

    def view(self, now_s: float) -> SchedulerView:
        return SchedulerView(
            now_s=now_s,
            queues=self.queues,
            running=self.running,
            paused=tuple(self.paused),
            num_free_kv_tokens=self.kv_capacity_tokens - self.num_reserved_kv_tokens,
            max_batch_size=self.max_batch_size,
            kv_capacity_tokens=self.kv_capacity_tokens,
        )

    def decide(self, policy: Policy, now_s: Callable[[], float]) -> Iterator[Transition]:
        """Ask `policy` and apply its decision, and again after every decision that changed something:
        the view it acted on is gone (after a merge, a waiting LS prefill may now preempt the merged
        batch), so the next decision is due at the same point, not at the next event. Yields each
        transition (the engine moves its own state, and may spend time, before the next question);
        stops at a no-op or after MAX_DECISIONS_PER_POINT decisions."""
        for _ in range(MAX_DECISIONS_PER_POINT):
            now = now_s()
            transition = self.apply(policy.schedule(self.view(now)), now)
            yield transition
            if transition.is_noop:
                return

    def apply(self, decision: Decision, now_s: float | None = None) -> Transition:
        """Carry out a decision; `now_s` stamps requests that run for the first time."""
        if isinstance(decision, Continue):
            return Transition()
        if isinstance(decision, RunBatch):
            transition = self._run(decision.requests)
            for request in decision.requests:
                if request.first_scheduled_s is None:
                    request.first_scheduled_s = now_s
            return transition
        if isinstance(decision, Resume):
            return self._resume(decision.batch_id)
        if isinstance(decision, Merge):
            return self._merge(decision.batch_ids)
        raise PolicyError(f"unknown decision {decision!r}")

    def complete_pass(self, now_s: float) -> list[Request]:
        """The running batch passed the LM head: one token each; return the finished requests."""
        if self.running is None:
            raise PolicyError("no running batch to complete")
        finished: list[Request] = []
        for request in self.running.requests:
            request.record_token(now_s)
            if request.is_finished:
                self.num_reserved_kv_tokens -= request.num_kv_tokens
                finished.append(request)
            else:
                self.queues.push(request)
        self.running = None
        return finished

    @property
    def is_idle(self) -> bool:
        return self.running is None and not self.paused and self.queues.num_waiting == 0

    def _run(self, requests: tuple[Request, ...]) -> Transition:
        if not requests:
            raise PolicyError("RunBatch with no requests")
        for request in requests:
            if request not in self.queues.queue_for(request):
                raise PolicyError(f"request {request.request_id} is not waiting in a queue")
        new_kv = sum(r.num_kv_tokens for r in requests if r.is_prefill)
        if self.num_reserved_kv_tokens + new_kv > self.kv_capacity_tokens:
            raise PolicyError(f"batch needs {new_kv} KV tokens, only "
                              f"{self.kv_capacity_tokens - self.num_reserved_kv_tokens} free")
        for request in requests:
            self.queues.remove(request)
        self.num_reserved_kv_tokens += new_kv
        paused = self._pause_running()
        self.running = Batch(self._next_batch_id, list(requests), Position())
        self._next_batch_id += 1
        return Transition(started=self.running, paused=paused)

    def _resume(self, batch_id: int) -> Transition:
        batch = self._take_paused(batch_id)
        paused = self._pause_running()
        self.running = batch
        return Transition(resumed=batch, paused=paused)

    def _merge(self, batch_ids: tuple[int, ...]) -> Transition:
        if self.running is None:
            raise PolicyError("Merge with no running batch")
        merged = []
        for batch_id in batch_ids:
            batch = next((b for b in self.paused if b.batch_id == batch_id), None)
            if batch is None or not self.running.position.can_absorb(batch.position):
                raise PolicyError(f"batch {batch_id} cannot merge at {self.running.position}")
            merged.append(self._take_paused(batch_id))
        for batch in merged:
            self.running.requests.extend(batch.requests)
        return Transition(merged=tuple(merged))

    def _pause_running(self) -> Batch | None:
        batch, self.running = self.running, None
        if batch is not None:
            for request in batch.requests:
                request.num_preemptions += 1
            self.paused.append(batch)
        return batch

    def _take_paused(self, batch_id: int) -> Batch:
        for i, batch in enumerate(self.paused):
            if batch.batch_id == batch_id:
                return self.paused.pop(i)
        raise PolicyError(f"no paused batch {batch_id}")
