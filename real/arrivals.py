"""Where a server's requests come from: a trace replayed on the wall clock (`TraceArrivals`), or clients
that post them while the engine runs (`LiveArrivals`, fed by real.api). The serving loop asks either the
same questions: which requests are due now, is one due (the interrupt that ends a wait for the device),
wait for the next, and can any more come. `now` is the loop's clock (seconds since its start)."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from policies import Priority, Request


class Arrivals(Protocol):
    """What the serving loop asks of its arrivals (`TraceArrivals`, `LiveArrivals`, real.frontend's
    `PipeArrivals`); `now` is the loop's clock, in seconds since `start`'s origin."""

    def start(self, origin_s: float) -> None: ...
    def due(self, now: Callable[[], float]) -> list[Request]: ...
    def is_due(self, now: Callable[[], float]) -> bool: ...
    def wait(self, now_s: float) -> None: ...
    def idle(self) -> None: ...  # called while the host waits for the device (work that may wait for that)
    @property
    def closed(self) -> bool: ...


class ArrivalError(RuntimeError):
    """A request cannot be admitted (the server is closing)."""


@dataclass
class TraceArrivals:
    """A trace's requests, each due at its `arrival_s` on the replay's clock."""

    requests: list[Request]
    pending: deque = field(init=False)

    def __post_init__(self) -> None:
        self.pending = deque(sorted(self.requests, key=lambda r: (r.arrival_s, r.request_id)))

    def start(self, origin_s: float) -> None:
        """The arrival times are the trace's, on the loop's clock already."""

    def due(self, now: Callable[[], float]) -> list[Request]:
        out = []
        while self.pending and self.pending[0].arrival_s <= now():  # read again: one may land meanwhile
            out.append(self.pending.popleft())
        return out

    def is_due(self, now: Callable[[], float]) -> bool:
        return bool(self.pending) and self.pending[0].arrival_s <= now()

    def wait(self, now_s: float) -> None:
        """Sleep until the next arrival (the caller has nothing to run)."""
        time.sleep(max(self.pending[0].arrival_s - now_s, 0.0))

    def idle(self) -> None:
        """Nothing to do while the host waits."""

    @property
    def closed(self) -> bool:
        return not self.pending


@dataclass
class Ticket:
    """One live request's way back to its client: `done` is set once its last token is on the host; a
    streamed one also gets its tokens on `stream` as they reach the host, then None (finished or failed)."""

    request: Request
    prompt_ids: list[int]
    done: threading.Event = field(default_factory=threading.Event)
    output_ids: list[int] | None = None
    error: str | None = None
    stream: queue.Queue | None = None

    def end(self, output_ids: list[int] | None = None, error: str | None = None) -> None:
        self.output_ids, self.error = output_ids, error
        self.done.set()
        if self.stream is not None:
            self.stream.put(None)


@dataclass
class LiveArrivals:
    """Requests submitted from other threads (an HTTP server's) while the engine's thread serves them.
    A request's arrival time is taken when it is submitted, on the serving loop's clock (`start`)."""

    kv_unit_tokens: int = 1  # the requests' KV unit (the real engine: a whole slot, its length)
    poll_s: float = 0.001  # how long `wait` blocks: the loop retires finished passes between waits
    clock: Callable[[], float] = time.perf_counter
    # not a SimpleQueue: on CPython 3.11 its get(timeout) never returns once a signal handler ran during it
    # (Ctrl-C, which asks the server to stop, then hung it)
    inbox: queue.Queue = field(default_factory=queue.Queue)
    tickets: dict[int, Ticket] = field(default_factory=dict)
    held: deque = field(default_factory=deque)  # taken from the inbox by `wait`, not yet `due`
    origin_s: float | None = None
    _ids: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closing: threading.Event = field(default_factory=threading.Event)
    # called once the serving loop has started (`start`): the HTTP server starts answering then, so that no request
    # reaches `submit` before the loop's clock exists (it would be refused); earlier clients wait to be accepted
    on_start: Callable[[], None] = lambda: None

    def start(self, origin_s: float) -> None:
        """The serving loop's clock starts: arrivals are stamped relative to `origin_s`."""
        self.origin_s = origin_s
        self.on_start()

    def submit(self, prompt_ids: list[int], num_output_tokens: int, priority: Priority,
               stream: bool = False) -> Ticket:
        """Admit a request (any thread); wait on the ticket's `done`, or read its `stream` (`stream=True`)."""
        with self._lock:
            if self._closing.is_set() or self.origin_s is None:
                raise ArrivalError("the server is not accepting requests")
            request = Request(next(self._ids), self.clock() - self.origin_s, len(prompt_ids), num_output_tokens,
                              priority, kv_unit_tokens=self.kv_unit_tokens)
            ticket = Ticket(request, list(prompt_ids), stream=queue.Queue() if stream else None)
            self.tickets[request.request_id] = ticket
            self._hand_over(ticket)
        return ticket

    def _hand_over(self, ticket: Ticket) -> None:
        """To the serving loop (under the lock, so in admission order): here, its inbox."""
        self.inbox.put(ticket)

    def due(self, now: Callable[[], float]) -> list[Request]:
        while True:
            try:
                self.held.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        out = [ticket.request for ticket in self.held]
        self.held.clear()
        return out

    def is_due(self, now: Callable[[], float]) -> bool:
        return bool(self.held) or not self.inbox.empty()

    def wait(self, now_s: float) -> None:
        """Block for the next submission, at most `poll_s`."""
        if self.held:
            return
        try:
            self.held.append(self.inbox.get(timeout=self.poll_s))
        except queue.Empty:
            pass

    def prompt_ids(self, request: Request) -> list[int]:
        return self.tickets[request.request_id].prompt_ids

    def idle(self) -> None:
        """Nothing to do while the host waits: tokens reach the tickets as they come (`tokens`)."""

    def tokens(self, request_id: int, token_ids: list[int]) -> None:
        """The serving loop hands over a request's new tokens (in order): a streamed ticket gets them."""
        ticket = self.tickets.get(request_id)
        if ticket is not None and ticket.stream is not None:
            ticket.stream.put(list(token_ids))

    def finished(self, request: Request, output_ids: list[int]) -> None:
        """The serving loop hands back a finished request's tokens; its client wakes."""
        with self._lock:
            ticket = self.tickets.pop(request.request_id)
        ticket.end(list(output_ids))

    def close(self) -> None:
        """Admit no more: the loop ends once every admitted request has finished."""
        with self._lock:
            self._closing.set()

    def fail_all(self, reason: str) -> None:
        """The loop stopped with requests unfinished: their clients get `reason` instead of a hang."""
        with self._lock:
            self._closing.set()
            for ticket in self.tickets.values():
                ticket.end(error=reason)
            self.tickets.clear()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def closed(self) -> bool:
        """No more can come: closing, and nothing submitted is left to hand over."""
        return self._closing.is_set() and not self.held and self.inbox.empty()
