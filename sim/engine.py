"""The simulated GPU: one SimPy process that runs stages of the running batch and asks the policy
at scheduling points. Stretches in which no decision can change run as a single timeout; an arrival
interrupts such a stretch and the engine stops at the next scheduling point (SimPy's
interrupt-and-compute-what-is-left idiom).

With `host_ahead` an iteration-level policy's passes run as the real engine runs them (sim.pipeline): the
clock is the host's, which issues a pass, waits until at most one pass is in flight on the GPU (or an
arrival), and treats the pass as done for the policy; the pass's tokens carry the GPU's time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import simpy

from policies import Batch, Granularity, Policy, Request, SchedulerState, Transition
from sim.pipeline import pass_times
from sim.plan import CostModel


@dataclass(slots=True)
class BatchWork:
    """Simulator-side state of a batch: expert loads and stage durations of its current pass."""

    loads: np.ndarray  # [L, E] tokens queued at each expert in this pass
    durations: np.ndarray  # [L*S + 1] seconds per stage
    index: int = 0  # next flat stage


@dataclass
class SimEngine:
    env: simpy.Environment
    state: SchedulerState
    policy: Policy
    costs: CostModel
    on_finish: Callable[[Request], None] = lambda r: None
    busy_s: float = 0.0
    num_consults: int = 0
    _work: dict[int, BatchWork] = field(default_factory=dict)
    _changed: bool = True
    _wake: simpy.Event | None = None
    _interruptible: bool = False
    _process: simpy.Process | None = None
    _remaining: int = 0
    stage_stops: bool = False  # an arrival also ends a layer between its stages (real engine.stage_stops)
    host_ahead: bool = False  # iteration-level passes on two clocks, the host a pass ahead (module docstring)
    _device_free: float = 0.0  # host_ahead: when the GPU has run everything issued

    def __post_init__(self) -> None:
        layout = self.costs.layout
        self._points = layout.points(self.policy.granularity)
        self._every_point = getattr(self.policy, "consults_every_point", False)
        # where a running batch may stop: the policy's points and, with stage stops, its stages' boundaries
        stops = self.stage_stops and self.policy.granularity >= Granularity.LAYER
        self._stops = np.union1d(self._points, layout.stage_points()) if stops else self._points
        self._ahead = self.host_ahead and self.policy.granularity == Granularity.ITERATION
        self._launches = self.costs.launch_queue()  # host_ahead: the device's launch queue, across passes

    def start(self, requests: list[Request]) -> simpy.Process:
        self._remaining = len(requests)
        self.env.process(self._arrivals(requests))
        self._process = self.env.process(self._run())
        return self._process

    def _arrivals(self, requests: list[Request]):
        for request in requests:
            yield self.env.timeout(max(request.arrival_s - self.env.now, 0.0))
            self.state.arrive(request)
            self._changed = True
            if self._wake is not None and not self._wake.triggered:
                self._wake.succeed()
            elif self._interruptible:
                self._interruptible = False
                self._process.interrupt()

    def _run(self):
        while self._remaining > 0:
            if self.state.running is None or self._changed:
                yield from self._consult()
            if self.state.running is None:
                self._wake = self.env.event()
                yield self._wake
                self._wake = None
                continue
            yield from self._issue_pass() if self._ahead else self._advance()
        if self.env.now < self._device_free:  # host_ahead: the GPU runs the last passes issued
            yield self.env.timeout(self._device_free - self.env.now)

    def _consult(self):
        """Decisions at this point (`SchedulerState.decide`), each charged its engine overhead."""
        self._changed = False
        for transition in self.state.decide(self.policy, lambda: self.env.now):
            self.num_consults += 1
            cost = self._bookkeep(transition)
            if cost > 0:
                yield from self._busy(cost)

    def _advance(self):
        """Run the running batch up to the next point where a decision may differ."""
        work = self._work[self.state.running.batch_id]
        target = self._target(work.index)
        cumulative = np.cumsum(work.durations[work.index:target])
        start = self.env.now
        self._interruptible = self._has_point_between(work.index, target)
        try:
            yield self.env.timeout(cumulative[-1])
        except simpy.Interrupt:
            elapsed = self.env.now - start
            stage = work.index + int(np.searchsorted(cumulative, elapsed))
            target = min(self._next_point_after(stage), target)
            yield self.env.timeout(cumulative[target - work.index - 1] - elapsed)
        self._interruptible = False
        self.busy_s += self.env.now - start
        self._arrive_at(work, target)

    def _issue_pass(self):
        """host_ahead: issue the running batch's whole pass, wait (as real.timeline's throttle does) until
        the pass issued before it has left the GPU or a request arrives, and complete it for the policy."""
        batch = self.state.running
        paths = self.costs.pass_paths(batch, self._work.pop(batch.batch_id).durations)
        start = self.env.now
        times = pass_times(start, self._device_free, paths, self._launches)
        for request in batch.requests:
            if request.is_prefill:  # its first batch: it reaches the GPU when the pass begins there
                request.first_scheduled_s = times.device_begin_s
        yield self.env.timeout(times.host_end_s - start)
        self.busy_s += times.device_end_s - times.device_begin_s
        wait = self._device_free - self.env.now  # until the pass issued before this one has left the GPU
        self._device_free = times.device_end_s
        if wait > 0:
            self._interruptible = True
            try:
                yield self.env.timeout(wait)
            except simpy.Interrupt:
                pass
            self._interruptible = False
        for request in self.state.complete_pass(times.device_end_s):
            self._remaining -= 1
            self.on_finish(request)

    def _arrive_at(self, work: BatchWork, index: int) -> None:
        work.index = index
        batch = self.state.running
        if index == self.costs.layout.end:
            del self._work[batch.batch_id]
            for request in self.state.complete_pass(self.env.now):
                self._remaining -= 1
                self.on_finish(request)
            return
        batch.position = self.costs.layout.position(index)
        self._changed = self._changed or self._every_point or self._can_merge(batch)

    def _target(self, index: int) -> int:
        """Next flat index to stop at: the next point if the policy sees every point, else the
        first point where a paused batch could merge, else the end of the iteration."""
        end = self.costs.layout.end
        later = self._points[self._points > index]
        if self._every_point:
            return int(later[0]) if len(later) else end
        for point in self._stops[self._stops > index]:
            if any(self.costs.layout.position(int(point)).can_absorb(b.position) for b in self.state.paused):
                return int(point)
        return end

    def _has_point_between(self, index: int, target: int) -> bool:
        return bool(np.any((self._stops > index) & (self._stops < target)))

    def _next_point_after(self, stage: int) -> int:
        """First stop at or after the boundary that ends `stage` (the stage running now)."""
        later = self._stops[self._stops > stage]
        return int(later[0]) if len(later) else self.costs.layout.end

    def _can_merge(self, batch: Batch) -> bool:
        return any(batch.position.can_absorb(b.position) for b in self.state.paused)

    def _bookkeep(self, t: Transition) -> float:
        """Move simulator state along with the scheduler's; return the engine overhead to charge."""
        o = self.costs.profile.overheads
        cost = 0.0
        if t.started is not None:
            loads, expert_s = self.costs.draw(self.costs.expert_tokens(t.started))
            self._work[t.started.batch_id] = BatchWork(loads, self.costs.durations(t.started, expert_s))
        if t.paused is not None:
            cost += o.pause_s
        if t.resumed is not None:
            cost += o.resume_s
        for batch in t.merged:
            self._absorb(self.state.running, batch)
            cost += o.merge_s
        return cost

    def _absorb(self, running: Batch, paused: Batch) -> None:
        """Paused tokens join the per-expert queues: loads add up from here on."""
        work, other = self._work[running.batch_id], self._work.pop(paused.batch_id)
        layer, stages = running.position.layer, self.costs.layout.stages_per_layer
        done_experts = max(other.index - layer * stages - 2, 0)
        other.loads[layer, :done_experts] = 0
        work.loads = work.loads + np.where(np.arange(len(work.loads))[:, None] >= layer, other.loads, 0)
        work.durations = self.costs.durations(running, self.costs.profile.experts_s(work.loads))

    def _busy(self, seconds: float):
        yield self.env.timeout(seconds)
        self.busy_s += seconds
