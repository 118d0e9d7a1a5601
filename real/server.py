"""Serving on the wall clock: the same policy objects and `SchedulerState` as the simulator, driving the
real engine, for a trace's requests or for clients' (real.arrivals: `run` replays a trace, `serve` takes
either; real.api puts an HTTP server in front). Arrivals are admitted at every scheduling point, and an arrival also ends the
host's wait for the device (real.timeline): an LS request that arrives while a BE batch is inside layer
k is seen at once, and a batch the policy starts then runs on the urgent stream (real.lanes), ahead of
the layers the device has queued. The host does not wait for a pass's tokens either (real.pending): the
pass is complete for the policy once its LM head is issued, and its tokens reach the host in the background."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from itertools import takewhile

import numpy as np
import torch

from policies import Granularity, Policy, Position, Request, SchedulerState, Stage, Transition
from real import starttrace
from real.arrivals import Arrivals, TraceArrivals
from real.batch import BatchState, merge
from real.engine import Engine
from real.lanes import Join, PriorityLane
from real.pending import PLACEHOLDER, PendingTokens, wait_for
from real.sequence import Sequence
from real.timeline import DeviceTimeline


class ServingError(RuntimeError):
    """The replay cannot go on (a policy that idles while work waits)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One advance (or a pass's LM head, `finish`) of one batch, with its marks on the timeline."""

    batch_id: int
    num_seqs: int
    num_prefill_seqs: int  # sequences feeding more than one new token (the rest decode)
    num_tokens: int
    longest: int  # tokens of the longest sequence (prompt, or context when decoding): the padded length
    prefill_sq_tokens: int  # sum of the prefill sequences' new tokens squared: an unpadded group's attention work
    from_layer: int
    to_layer: int
    whole: bool  # began and ended at layer boundaries (False: stopped between stages, real.engine's `stop`)
    kind: str  # "advance" | "finish"
    level: int  # stream priority level it was issued at (0: main stream; real.lanes)
    decided_s: float  # host clock when the consult before this step began (NaN: none since the last step)
    issued_s: float  # host clock, since the replay's start
    begin: int  # DeviceTimeline mark indices
    end: int


@dataclass(frozen=True, slots=True)
class ServeOutcome:
    requests: list[Request]
    busy_s: float
    wall_s: float
    num_consults: int
    steps: list[dict]  # Step fields + device begin_s/end_s: what the GPU did when (real.run writes them)


@dataclass
class ReplayServer:
    engine: Engine
    policy: Policy
    state: SchedulerState
    prompt_ids: Callable[[Request], list[int]]
    clock: Callable[[], float] = time.perf_counter
    timeline: DeviceTimeline | None = None  # default: one on the engine's device, run-ahead depth 1
    lane: PriorityLane = field(default_factory=lambda: PriorityLane(enabled=False))
    stage_stops: bool = False  # a stepped layer also ends between stages once an arrival is due (_stop)
    head_stops: bool = False  # an arrival also ends the wait for a pass's last layer: the policy decides first
    defer_tokens: bool = True  # the host does not wait for a pass's tokens (real.pending): see _retire
    start_checks: bool = False  # an arrival during a consult is decided on before the next layer is issued
    # a new sequence takes the KV slot of a request whose last pass is still on the device at once, its batch's
    # stream waiting for that pass on the device, not the host (_free_slot)
    slot_fences: bool = False
    fences: list[PendingTokens] = field(default_factory=list)  # passes the next started batch's stream waits for
    slot_waits: dict[str, int] = field(default_factory=lambda: {"host": 0, "device": 0})  # by `_free_slot`, per kind
    # a batch that gives the urgent lane up to a starting batch is joined back (real.lanes.Join) once that batch's first
    # layer is issued (_finish_joins), not before its start: a stream wait, its blocks marked, its pass rows copied out
    defer_joins: bool = False
    deferred: list[Join] = field(default_factory=list)  # joins not yet done (`defer_joins`)
    start_joins: int = 0  # batch starts that found the lane held by a batch no longer running (joined or deferred)
    merge_offered: int | None = None  # batch last offered a merge before its LM head (_head_wait)
    batches: dict[int, BatchState] = field(default_factory=dict)  # by policies' batch_id
    seqs: dict[int, Sequence] = field(default_factory=dict)  # by request_id
    outputs: dict[int, list[int]] = field(default_factory=dict)  # generated token ids of finished requests
    busy_s: float = 0.0
    num_consults: int = 0
    decided_s: float = float("nan")  # host time of the latest consult not yet followed by a step
    steps: list[Step] = field(default_factory=list)
    first_starts: dict[int, int] = field(default_factory=dict)  # request_id -> mark of its first batch start
    token_marks: dict[int, list[int]] = field(default_factory=dict)  # request_id -> marks of its first, last token
    retiring: list[tuple[PendingTokens, list[Request]]] = field(default_factory=list)  # passes' tokens, finished
    prompts: dict[int, list[int]] = field(default_factory=dict)  # request_id -> prompt token ids
    # request_id -> its sequence (own ids, an int64 array of them), made at admission, until its batch gives it a slot
    unplaced: dict[int, Sequence] = field(default_factory=dict)
    on_finish: Callable[[Request, list[int]], None] | None = None  # a finished request's tokens, once on the host
    on_tokens: Callable[[int, list[int]], None] | None = None  # a request's new tokens, in order, once on the host
    streamed: dict[int, int] = field(default_factory=dict)  # request_id -> tokens handed to `on_tokens`

    def run(self, requests: list[Request]) -> ServeOutcome:
        """Replay a trace: each request arrives at its `arrival_s` on the wall clock."""
        self.prompts = {r.request_id: self.prompt_ids(r) for r in requests}  # the trace's input, not timed work
        self.unplaced = {rid: self._new_sequence(rid, ids) for rid, ids in self.prompts.items()}
        return replace(self.serve(TraceArrivals(requests)), requests=requests)

    def serve(self, arrivals: Arrivals) -> ServeOutcome:
        """Serve what `arrivals` brings until it can bring no more and every admitted request has finished."""
        if self.timeline is None:
            self.timeline = DeviceTimeline(self.engine.device, self.clock)
        start = self.timeline.start()
        arrivals.start(start)
        now = lambda: self.clock() - start  # noqa: E731
        own_idle = self.timeline.idle  # the arrivals' idle work too (real.frontend: the clients' tokens go out)
        self.timeline.idle = arrivals.idle if own_idle is None else _both(arrivals.idle, own_idle)
        try:
            admitted = self._loop(arrivals, now)
        finally:
            self.timeline.idle = own_idle
        self._finish_joins()
        self._retire(wait=True)
        wall_s = now()
        return ServeOutcome(admitted, self.busy_s, wall_s, self.num_consults, self._resolve(admitted))

    def _loop(self, arrivals: Arrivals, now: Callable[[], float]) -> list[Request]:
        """Until `arrivals` can bring no more and every admitted request's last pass is issued; the admitted."""
        admitted, unfinished, changed, rechecked = [], 0, True, False
        while unfinished or not arrivals.closed:
            for request in arrivals.due(now):
                if request.request_id not in self.prompts:
                    self.prompts[request.request_id] = ids = self.prompt_ids(request)
                    # its sequence now, not when its batch starts (an LS start fills up with these prompts)
                    self.unplaced[request.request_id] = self._new_sequence(request.request_id, ids)
                self.state.arrive(request)
                admitted.append(request)
                unfinished += 1
                changed = True
            if self.state.running is None or changed or self._can_merge():
                changed = False
                self._consult(now())
                # starting a batch takes the host 0.3-1 ms (H200): an LS request that arrived meanwhile would
                # otherwise wait for the new batch's first layer to be issued too (once per advance: a flood
                # of arrivals cannot hold the loop here)
                if self.start_checks and not rechecked and arrivals.is_due(now):
                    rechecked = True
                    continue
            self._retire()
            if self.state.running is None:
                if arrivals.closed and unfinished:
                    raise ServingError(f"policy left {self.state.queues.num_waiting} requests waiting "
                                       "with nothing running")
                if not arrivals.closed:
                    arrivals.wait(now())
                continue
            unfinished -= self._advance(now, lambda: arrivals.is_due(now))
            rechecked = False
        return admitted

    def _resolve(self, requests: list[Request]) -> list[dict]:
        """Device times of the marks: each request's `first_scheduled_s` becomes the moment its first
        batch reached the device (not the host's decision), and the step log gets begin/end times."""
        times = self.timeline.times_s()
        for request in requests:
            if request.request_id in self.first_starts:
                request.first_scheduled_s = times[self.first_starts[request.request_id]]
            if request.request_id in self.token_marks:
                first, last = self.token_marks[request.request_id]
                request.first_token_s = times[first]
                if request.finish_s is not None:
                    request.finish_s = times[last]
        return [{**asdict(step), "begin_s": times[step.begin], "end_s": times[step.end]} for step in self.steps]

    def _consult(self, now_s: float) -> None:
        """Decisions at this point (`SchedulerState.decide`: asked again after every change)."""
        self.decided_s = now_s
        starttrace.begin()
        for transition in self.state.decide(self.policy, lambda: now_s):
            self.num_consults += 1
            self._bookkeep(transition)
        starttrace.stamp("consulted")

    def _advance(self, now: Callable[[], float], interrupt: Callable[[], bool]) -> int:
        """Run the running batch to its next scheduling point (the host's wait for the device ends early
        when `interrupt()`); returns how many requests finished."""
        issued_s = now()
        running = self.state.running
        batch = self.batches[running.batch_id]
        starttrace.end(batch_id=running.batch_id, num_seqs=len(batch.seqs), num_tokens=batch.layout.num_tokens,
                       level=self.lane.level if running.batch_id == self.lane.batch_id else 0)
        self._finish_joins(running.batch_id)  # it goes on now, on the main stream unless it holds the lane
        self._leave_lane(keep=running.batch_id)
        with self.lane.issue(running.batch_id):
            shape = _shape(batch)  # before the LM head appends a token to every sequence
            done = batch.position.layer >= self.engine.num_layers  # paused before its LM head (_head_wait)
            if not done:
                start, begin = batch.position, self.timeline.mark()
                done = self.engine.advance(batch, self.policy.granularity, self._stop(interrupt),
                                           tuple(b.position for b in self.state.paused))
                self._finish_joins()  # while the device runs what was just issued
                whole = start.stage == Stage.ATTENTION and (done or batch.position.stage == Stage.ATTENTION)
                self._log(running.batch_id, batch, shape, start.layer, "advance", issued_s, begin,
                          self.timeline.mark(throttle=not done, interrupt=interrupt), whole)
            running.position = batch.position
            if done and not self._head_wait(running.batch_id, interrupt):
                done = False  # the policy decides before the LM head (head_stops)
            elif done:
                finish_s, begin = now(), self.timeline.mark()
                tokens = self.engine.finish_async(batch)
                # the tokens' times (device time, in _resolve); and, as after an advance, the host waits here
                # until the device holds at most `depth` advances: without a sync at the LM head nothing
                # else bounds how far an iteration-level policy's passes queue ahead (H200, fcfs at 8 req/s:
                # a new request's pass queued behind up to 258 ms of passes)
                end = self.timeline.mark(throttle=True, interrupt=interrupt)
                if not self.defer_tokens:
                    tokens.resolve()  # waits for the pass's last layer and its LM head
                self._log(running.batch_id, batch, shape, batch.position.layer, "finish", finish_s, begin, end)
        self._finish_joins()
        finished = []
        if done:
            self._leave_lane()
            del self.batches[running.batch_id]
            for request in running.requests:
                self.token_marks.setdefault(request.request_id, [end, end])[1] = end
            finished = self.state.complete_pass(now())
            self.retiring.append((tokens, finished))
        self.busy_s += now() - issued_s
        return len(finished)

    def _retire(self, wait: bool = False) -> None:
        """Passes whose tokens have reached the host (all of them, waiting, with `wait`): their placeholders
        are filled, and their finished requests' outputs kept and KV slots freed. A slot is freed no earlier:
        a new sequence's prefill, on an urgent stream, could otherwise overwrite KV its last pass still reads."""
        keep = []
        for tokens, finished in self.retiring:
            if wait:
                tokens.resolve()
            if not tokens.poll():
                keep.append((tokens, finished))
                continue
            if self.on_tokens is not None:
                for seq in tokens.seqs:
                    self._stream(seq)
            for request in finished:
                seq = self.seqs.pop(request.request_id)
                self.outputs[request.request_id] = seq.token_ids[request.num_prompt_tokens:]
                if seq.slot >= 0:  # else a new sequence took it already (_free_slot)
                    self.engine.release(seq)
                self.streamed.pop(request.request_id, None)
                if self.on_finish is not None:
                    self.on_finish(request, self.outputs[request.request_id])
        self.retiring = keep

    def _stream(self, seq: Sequence) -> None:
        """Hand `on_tokens` the sequence's tokens that reached the host since it last did, in order: the
        passes of one sequence may be polled out of order (the later one's tokens first), so only those
        before its first placeholder go."""
        if seq.seq_id not in self.prompts:
            return  # a stand-in of the engine's, not a request
        start = len(self.prompts[seq.seq_id]) + self.streamed.get(seq.seq_id, 0)
        new = list(takewhile(lambda token: token != PLACEHOLDER, seq.token_ids[start:]))
        if new:
            self.streamed[seq.seq_id] = self.streamed.get(seq.seq_id, 0) + len(new)
            self.on_tokens(seq.seq_id, new)

    def _head_wait(self, batch_id: int, interrupt: Callable[[], bool]) -> bool:
        """With `head_stops` (layer-level policies), wait for the pass's last layer before its LM head, and
        end the wait if an arrival is due: False then, and the batch stays where only its LM head is left,
        for the policy to keep or pause. Otherwise the LM head's sync held the host for that layer: of the
        LS reactions over 2 ms in H200 serving round 6 (stage stops on), 11 of 26. A batch paused there is
        offered to the running batch once it gets there too (False: the policy may merge, one LM head)."""
        if not self.head_stops or self.policy.granularity < Granularity.LAYER:
            return True
        if self._can_merge() and self.merge_offered != batch_id:
            self.merge_offered = batch_id  # a policy that declines is not asked again for this batch
            return False
        return self.timeline.drain(interrupt)

    def _stop(self, interrupt: Callable[[], bool]) -> Callable[[Position], bool] | None:
        """Where a stepped layer may end before the next scheduling point: at a paused batch's position
        (the two can merge there) and, with `stage_stops`, at any stage boundary once an arrival is due.
        Issuing an eager prefill layer takes the host 1-2 ms (H200); an LS arrival in that time used to
        wait for the whole layer's issue (round 4: 62 of the 84 LS reactions over 2 ms)."""
        if self.policy.granularity < Granularity.LAYER:
            return None
        waiting = [b.position for b in self.state.paused]
        if not waiting and not self.stage_stops:
            return None
        def stop(position: Position) -> bool:
            return any(position.can_absorb(p) for p in waiting) or (self.stage_stops and interrupt())
        return stop

    def _log(self, batch_id: int, batch: BatchState, shape: tuple[int, int, int], from_layer: int, kind: str,
             issued_s: float, begin: int, end: int, whole: bool = True) -> None:
        longest, prefills, prefill_sq = shape
        level = self.lane.level if batch_id == self.lane.batch_id else 0
        self.steps.append(Step(batch_id, len(batch.seqs), prefills, batch.layout.num_tokens, longest, prefill_sq,
                               from_layer, batch.position.layer, whole, kind, level, self.decided_s, issued_s,
                               begin, end))
        self.decided_s = float("nan")

    def _bookkeep(self, t: Transition) -> None:
        starttrace.stamp("policy")
        running = self.state.running
        if self._leave_lane(keep=None if t.merged or running is None else running.batch_id,  # merges: main stream
                            defer=self.defer_joins and t.started is not None and not t.merged) and t.started:
            self.start_joins += 1
        starttrace.stamp("join")
        if t.started is not None:
            batch_id = t.started.batch_id
            seqs = [self._sequence(r) for r in t.started.requests]
            starttrace.stamp("sequences")
            self._claim(batch_id, seqs)
            starttrace.stamp("lane")
            with self.lane.issue(batch_id):
                wait_for(self.fences)  # the last passes of the requests whose slots its sequences took
                self.fences.clear()
                self.batches[batch_id] = self.engine.start(seqs)
                mark = self.timeline.mark()  # after the embedding: the batch has reached the device's SMs
            starttrace.stamp("mark")
            for request in t.started.requests:
                self.first_starts.setdefault(request.request_id, mark)
        if t.merged:
            self._finish_joins()  # the merge reads the paused batches on the main stream
        for paused in t.merged:
            running_id = self.state.running.batch_id
            self.batches[running_id] = merge(self.batches[running_id], self.batches.pop(paused.batch_id),
                                             self.engine.staging)

    def _claim(self, batch_id: int, seqs: list[Sequence]) -> bool:
        """The urgent lane for the batch starting with `seqs`, if the device is busy, unless it replays decode graphs:
        those run on the main stream (real.lanes). Such a batch used to claim the lane for its embedding alone and
        join back at once, a join (stream wait, tensors marked, rows released) on every decode restart's host path:
        qllm's main-stream starts spent 150 µs more after the start than fcfs's, which never claims (H100, session
        33's start traces), time an LS arrival then waits out."""
        if self.engine.graphs_from_start(seqs, self.policy.granularity):
            return False
        busy = {self.lane.level_of(key) for key in self.timeline.busy_streams()}
        return self.lane.claim(batch_id, busy)

    def _leave_lane(self, keep: int | None = None, defer: bool = False) -> bool:
        """Join the urgent stream back unless batch `keep` holds it (True if another did); with `defer`, give the
        lane up now and join later (`_finish_joins`)."""
        if self.lane.batch_id is None or self.lane.batch_id == keep:
            return False
        held = self.lane.detach()
        if defer:
            self.deferred.append(held)
        else:
            self._rejoin(held)
        return True

    def _rejoin(self, held: Join) -> None:
        batch = self.batches.get(held.batch_id)
        if batch is not None:
            with torch.cuda.stream(held.stream) if held.stream is not None else nullcontext():
                self.engine.release_rows(batch)  # the urgent stream's next batch may take its pass bucket
        held.rejoin(batch)

    def _finish_joins(self, batch_id: int | None = None) -> None:
        """The deferred joins (`defer_joins`), or batch `batch_id`'s alone. Before a batch runs on or is merged,
        and after the start that deferred its join has issued a layer: on the same urgent stream that layer's
        bucket load already copied out the rows it took (real.graphs.hold), in order."""
        if not self.deferred:
            return
        keep = []
        for held in self.deferred:
            if batch_id is None or held.batch_id == batch_id:
                self._rejoin(held)
            else:
                keep.append(held)
        self.deferred = keep

    def _sequence(self, request: Request) -> Sequence:
        if request.request_id not in self.seqs:
            if not self.engine.pool.can_allocate():
                self._free_slot()  # the policy counted the slots of requests whose last pass is in flight
            self.seqs[request.request_id] = self.engine.place(self.unplaced.pop(request.request_id))
        return self.seqs[request.request_id]

    def _free_slot(self) -> None:
        """At least one free KV slot, while finished requests whose last pass is still on the device hold them all.
        Waiting on the host for those passes (`_retire(wait=True)`) is on the start path, and an arrival meanwhile
        goes unheard; with 74 slots (Qwen3-30B-A3B, H100) it was rare: 5 waits in one of eight runs (session 23).
        With `slot_fences`, the oldest such pass's finished requests give up their slots at once, and the batch
        being started has its stream wait for that pass on the device (`fences`, `_bookkeep`): its first write to
        the slot comes after the last read of the slot's old keys, and the host goes on issuing."""
        self._retire()  # passes whose tokens have arrived meanwhile
        if self.engine.pool.can_allocate():
            return
        if self.slot_fences:
            for tokens, finished in self.retiring:
                held = [self.seqs[request.request_id] for request in finished
                        if self.seqs[request.request_id].slot >= 0]
                if held:
                    for seq in held:
                        self.engine.release(seq)
                    self.fences.append(tokens)
                    self.slot_waits["device"] += 1
                    return
        self.slot_waits["host"] += 1
        self._retire(wait=True)

    def _new_sequence(self, request_id: int, ids: list[int]) -> Sequence:
        return self.engine.new_sequence(request_id, ids, np.asarray(ids, dtype=np.int64))

    def _can_merge(self) -> bool:
        running = self.state.running
        return running is not None and any(running.position.can_absorb(b.position) for b in self.state.paused)


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        second()
    return both


def _shape(batch: BatchState) -> tuple[int, int, int]:
    """(tokens of the longest sequence, sequences feeding more than one new token, the sum of their new tokens
    squared) of a batch in a pass: the last is what prices an unpadded prefill group (its root-mean-square
    length), which the count and the longest alone do not give."""
    prefills = [s.num_new for s in batch.seqs if s.num_new > 1]
    return max(len(s.token_ids) for s in batch.seqs), len(prefills), sum(n * n for n in prefills)
