"""Trace replay on the wall clock: the same policy objects and `SchedulerState` as the simulator,
driving the real engine. Arrivals are admitted at every scheduling point, so an LS request that
arrives while a BE batch is inside layer k is seen at the next layer (or expert) boundary."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from policies import Policy, Request, SchedulerState, Transition
from real.batch import BatchState, merge
from real.engine import Engine
from real.sequence import Sequence


class ServingError(RuntimeError):
    """The replay cannot go on (a policy that idles while work waits)."""


@dataclass(frozen=True, slots=True)
class ServeOutcome:
    requests: list[Request]
    busy_s: float
    wall_s: float
    num_consults: int


@dataclass
class ReplayServer:
    engine: Engine
    policy: Policy
    state: SchedulerState
    prompt_ids: Callable[[Request], list[int]]
    clock: Callable[[], float] = time.perf_counter
    batches: dict[int, BatchState] = field(default_factory=dict)  # by policies' batch_id
    seqs: dict[int, Sequence] = field(default_factory=dict)  # by request_id
    outputs: dict[int, list[int]] = field(default_factory=dict)  # generated token ids of finished requests
    busy_s: float = 0.0
    num_consults: int = 0

    def run(self, requests: list[Request]) -> ServeOutcome:
        pending = deque(sorted(requests, key=lambda r: (r.arrival_s, r.request_id)))
        remaining, start = len(requests), self.clock()
        now = lambda: self.clock() - start  # noqa: E731
        changed = True
        while remaining:
            while pending and pending[0].arrival_s <= now():
                self.state.arrive(pending.popleft())
                changed = True
            if self.state.running is None or changed or self._can_merge():
                changed = False
                self._consult(now())
            if self.state.running is None:
                self._wait_for(pending, now)
                continue
            remaining -= self._advance(now)
        return ServeOutcome(requests, self.busy_s, now(), self.num_consults)

    def _consult(self, now_s: float) -> None:
        self.num_consults += 1
        self._bookkeep(self.state.apply(self.policy.schedule(self.state.view(now_s)), now_s))

    def _advance(self, now: Callable[[], float]) -> int:
        """Run the running batch to its next scheduling point; returns how many requests finished."""
        started = self.clock()
        running = self.state.running
        batch = self.batches[running.batch_id]
        done = self.engine.advance(batch, self.policy.granularity)
        running.position = batch.position
        finished = []
        if done:
            self.engine.finish(batch)  # synchronises: token times below are real
            del self.batches[running.batch_id]
            finished = self.state.complete_pass(now())
            for request in finished:
                seq = self.seqs.pop(request.request_id)
                self.outputs[request.request_id] = seq.token_ids[request.num_prompt_tokens:]
                self.engine.release(seq)
        self.busy_s += self.clock() - started
        return len(finished)

    def _bookkeep(self, t: Transition) -> None:
        if t.started is not None:
            seqs = [self._sequence(r) for r in t.started.requests]
            self.batches[t.started.batch_id] = self.engine.start(seqs)
        for paused in t.merged:
            running_id = self.state.running.batch_id
            self.batches[running_id] = merge(self.batches[running_id], self.batches.pop(paused.batch_id))

    def _sequence(self, request: Request) -> Sequence:
        if request.request_id not in self.seqs:
            self.seqs[request.request_id] = self.engine.add_sequence(request.request_id, self.prompt_ids(request))
        return self.seqs[request.request_id]

    def _can_merge(self) -> bool:
        running = self.state.running
        return running is not None and any(running.position.can_absorb(b.position) for b in self.state.paused)

    def _wait_for(self, pending: deque, now: Callable[[], float]) -> None:
        if not pending:
            raise ServingError(f"policy left {self.state.queues.num_waiting} requests waiting with nothing running")
        time.sleep(max(pending[0].arrival_s - now(), 0.0))
