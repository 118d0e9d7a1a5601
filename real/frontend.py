"""The HTTP front end in a process of its own (`real serve frontend=process`, the default).

Why: in one process the handler threads share the GIL with the engine's thread. On the H200 (session 15,
`real.servecheck`, 300 streamed requests at 18 req/s) that moved an LS request's reaction from 0.73 to 1.77 ms
at p50 and from 1.59 to 7.81 ms at p99 (arrivals that found BE work), against the same trace replayed in-process:
every pass wakes a handler thread per streamed request, and each takes the GIL from the thread that issues the
GPU's work. Here the handlers parse, encode and write in the child; the engine's process only moves messages.

The two processes share a socket pair (`multiprocessing.connection.Connection`, pickled tuples):
- child -> engine: `("submit", request_id, arrival_s, prompt_ids, max_tokens, priority, stream, sent_s)`;
  `("closed",)` once it admits no more, after every submission it sent (so none is lost in the pipe).
- engine -> child: `("start", origin)` (the serving loop's clock: `time.perf_counter` is the same monotonic
  clock in both processes, so an arrival is stamped at its admission in the child); `("out", [...])`, a batch of
  `("tokens", request_id, ids)` and `("finished", request_id, ids)`; `("close",)`; `("fail", reason)`; `("stop",)`.
The child learns that the engine's process is gone when the pipe closes, and exits.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from multiprocessing.connection import Connection

from policies import Priority, Request
from real.api import Api, Codec, bind_http
from real.arrivals import ArrivalError, LiveArrivals, Ticket


@dataclass(frozen=True, slots=True)
class Transit:
    """A submission's times on the serving loop's clock (s): stamped at admission in the child (`arrival_s`),
    handed to the pipe (`sent_s`), first seen readable by the engine's polls (`seen_s`), read (`received_s`).
    `real.report --reaction` splits an LS request's notice into these legs."""

    arrival_s: float
    sent_s: float
    seen_s: float
    received_s: float


@dataclass
class PipeArrivals:
    """The serving loop's side: the arrivals a `FrontendProcess` admits, with the interface of
    `real.arrivals.LiveArrivals` (due, is_due, wait, closed; tokens and finished go back to the clients).
    Everything runs on the engine's thread except `close`, which a signal handler may call: it only sets a flag
    (a send from a handler could interleave with one the thread is in the middle of)."""

    conn: Connection
    kv_unit_tokens: int = 1
    poll_s: float = 0.001
    clock: Callable[[], float] = time.perf_counter
    origin_s: float = 0.0
    transit: dict[int, Transit] = field(default_factory=dict)  # request_id -> its way from the child
    seen_s: float | None = None  # when `is_due` first found the pipe readable since the last `due`
    poller: select.poll = field(init=False)  # the pipe's, registered once: 0.5 µs a poll, not Connection.poll's 3-11
    held: deque = field(default_factory=deque)
    prompts: dict[int, list[int]] = field(default_factory=dict)
    streamed: set[int] = field(default_factory=set)
    outbox: list = field(default_factory=list)
    closing: bool = False  # asked to close (a signal)
    close_sent: bool = False
    child_closed: bool = False  # the child acknowledged (or died): nothing more can come
    child_gone: bool = False  # the pipe broke: the admitted requests still finish, unanswered

    def __post_init__(self) -> None:
        self.poller = select.poll()
        self.poller.register(self.conn.fileno(), select.POLLIN)

    def start(self, origin_s: float) -> None:
        self.origin_s = origin_s
        self._send(("start", origin_s))

    def due(self, now) -> list[Request]:
        """The submissions that came; the clients' tokens go out here only when none did: a send wakes the child,
        and with arrivals to decide on that can wait for the loop's next wait (`idle`) or call."""
        self._pump(0.0)
        self.seen_s = None
        out = list(self.held)
        self.held.clear()
        if not out:
            self.flush()
        return out

    def idle(self) -> None:
        """While the host waits for the device: what the clients are owed goes out."""
        self.flush()

    def is_due(self, now) -> bool:
        if self.held:
            return True
        if self.child_gone or not self.poller.poll(0):  # readable, or the child hung up (the read finds out)
            return False
        if self.seen_s is None:
            self.seen_s = self.clock() - self.origin_s
        return True

    def wait(self, now_s: float) -> None:
        self.flush()
        if not self.held:
            self._pump(self.poll_s)

    def prompt_ids(self, request: Request) -> list[int]:
        return self.prompts[request.request_id]

    def tokens(self, request_id: int, token_ids: list[int]) -> None:
        if request_id in self.streamed:
            self.outbox.append(("tokens", request_id, list(token_ids)))

    def finished(self, request: Request, output_ids: list[int]) -> None:
        self.outbox.append(("finished", request.request_id, list(output_ids)))
        self.prompts.pop(request.request_id, None)
        self.streamed.discard(request.request_id)

    def flush(self) -> None:
        """Send what the clients are owed (one message), and the close once it is asked for."""
        if self.child_gone:
            self.outbox = []
            return
        if self.outbox:
            self._send(("out", self.outbox))
            self.outbox = []
        if self.closing and not self.close_sent:
            self._send(("close",))
            self.close_sent = True

    def close(self) -> None:
        self.closing = True

    def fail_all(self, reason: str) -> None:
        self.closing = True
        self.flush()
        if not self.child_gone:
            self._send(("fail", reason))

    def stop(self) -> None:
        """After the serving loop: the last answers, then the child may go."""
        self.flush()
        if not self.child_gone:
            self._send(("stop",))

    @property
    def closed(self) -> bool:
        return self.child_closed and not self.held

    def transit_table(self):
        """Each request's way from its admission in the child to the serving loop (`frontend.parquet`)."""
        import pandas as pd  # not in the child's imports

        return pd.DataFrame([{"request_id": request_id, **asdict(t)} for request_id, t in self.transit.items()],
                            columns=["request_id", *(f.name for f in fields(Transit))])

    def _send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:
            self._gone()

    def _pump(self, timeout_s: float) -> None:
        try:
            self._receive(timeout_s)
        except (EOFError, OSError):
            self._gone()

    def _gone(self) -> None:
        if not self.child_gone:
            print("error: the HTTP front end's process is gone: finishing the admitted requests",
                  file=sys.stderr, flush=True)
        self.child_gone = self.child_closed = self.closing = self.close_sent = True
        self.outbox = []

    def _receive(self, timeout_s: float) -> None:
        if self.child_gone:
            return
        if self.closing and not self.close_sent:
            self.flush()
        while self.poller.poll(timeout_s * 1e3):  # ms; a hang-up counts too (the read raises EOFError)
            timeout_s = 0.0
            message = self.conn.recv()
            if message[0] == "submit":
                _, request_id, arrival_s, prompt_ids, max_tokens, priority, stream, sent_s = message
                received_s = self.clock() - self.origin_s
                # one that came after the poll that found the pipe readable (read in the same pump): seen as sent
                seen_s = received_s if self.seen_s is None else max(self.seen_s, sent_s)
                self.transit[request_id] = Transit(arrival_s, sent_s, seen_s, received_s)
                self.prompts[request_id] = prompt_ids
                if stream:
                    self.streamed.add(request_id)
                self.held.append(Request(request_id, arrival_s, len(prompt_ids), max_tokens, Priority(priority),
                                         kv_unit_tokens=self.kv_unit_tokens))
            elif message[0] == "closed":
                self.child_closed = True
            else:
                raise ValueError(f"unknown message from the front end: {message[0]!r}")


@dataclass
class RemoteArrivals(LiveArrivals):
    """The child's side: `LiveArrivals` (tickets, stamps, streams, closing) whose submissions go down the
    pipe instead of to an inbox; `read`, on a thread of its own, hands the engine's answers to the tickets."""

    conn: Connection | None = None

    def _hand_over(self, ticket: Ticket) -> None:
        request = ticket.request
        try:
            self.conn.send(("submit", request.request_id, request.arrival_s, ticket.prompt_ids,
                            request.num_output_tokens, request.priority.value, ticket.stream is not None,
                            self.clock() - self.origin_s))
        except OSError:
            del self.tickets[request.request_id]
            raise ArrivalError("the engine's process is gone") from None

    def read(self) -> None:
        """Until `stop` or the engine's process is gone: the engine's messages to the tickets."""
        try:
            while True:
                message = self.conn.recv()
                kind = message[0]
                if kind == "start":
                    self.start(message[1])  # and `on_start`: the HTTP server starts answering
                elif kind == "out":
                    for what, request_id, ids in message[1]:
                        if what == "tokens":
                            self.tokens(request_id, ids)
                        elif request_id in self.tickets:  # not if it was failed meanwhile
                            self.finished(self.tickets[request_id].request, ids)
                elif kind == "close":
                    with self._lock:  # after every submission sent before it
                        self._closing.set()
                        self.conn.send(("closed",))
                elif kind == "fail":
                    self.fail_all(message[1])
                elif kind == "stop":
                    break
        except (EOFError, OSError):
            self.fail_all("the engine's process is gone")
        except Exception as error:  # a message cut short (the engine aborted mid-send), say
            self.fail_all(f"the engine's messages could not be read: {error!r}")


@dataclass
class FrontendProcess:
    """The child process serving HTTP, and the engine side's end of its pipe."""

    process: subprocess.Popen
    arrivals: PipeArrivals
    url: str

    @classmethod
    def launch(cls, host: str, port: int, model: str, vocab_size: int, max_len: int, default_priority: str,
               default_max_tokens: int, tokenizer: str | None, timeout_s: float = 60.0,
               cpus: set[int] | None = None) -> FrontendProcess:
        """Start the child and wait until it has bound its port and loaded the tokenizer; its error as an
        OSError (the port) or ValueError (anything else) if it could not. `cpus`: the child's (real.hostcpu)."""
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "real.frontend", "--fd", str(theirs.fileno()), "--host", host,
                   "--port", str(port), "--model", model, "--vocab-size", str(vocab_size), "--max-len", str(max_len),
                   "--default-priority", default_priority, "--default-max-tokens", str(default_max_tokens)]
        if tokenizer:
            command += ["--tokenizer", str(tokenizer)]
        if cpus:
            command += ["--cpus", ",".join(map(str, sorted(cpus)))]
        process = subprocess.Popen(command, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        conn = Connection(ours.detach())
        if not conn.poll(timeout_s):
            process.kill()
            raise ValueError(f"the HTTP front end did not start within {timeout_s:g} s")
        try:
            kind, detail = conn.recv()
        except EOFError:
            raise ValueError(f"the HTTP front end exited {process.wait()} before it started") from None
        if kind != "bound":
            process.wait()
            raise (OSError(detail) if kind == "oserror" else ValueError(detail))
        return cls(process, PipeArrivals(conn, kv_unit_tokens=max_len), detail)

    def stop(self) -> None:
        """After the serving loop: the last answers out, then the child stops."""
        self.arrivals.stop()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.arrivals.conn.close()


def child_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.frontend")
    for name, kind in (("--fd", int), ("--host", str), ("--port", int), ("--model", str), ("--vocab-size", int),
                       ("--max-len", int), ("--default-priority", str), ("--default-max-tokens", int),
                       ("--tokenizer", str), ("--cpus", str)):
        parser.add_argument(name, type=kind, required=name not in ("--tokenizer", "--cpus"))
    args = parser.parse_args(argv)
    if args.cpus:  # before any thread starts: they inherit it
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine's process decides when to stop
    conn = Connection(args.fd)
    try:
        codec = Codec.for_vocab(args.vocab_size, args.tokenizer)
    except (ValueError, ImportError, FileNotFoundError) as error:
        conn.send(("error", str(error)))
        return
    arrivals = RemoteArrivals(conn=conn)
    api = Api(arrivals, codec, args.model, args.max_len, Priority.parse(args.default_priority),
              args.default_max_tokens)
    try:
        http = bind_http(api, args.host, args.port)
    except OSError as error:
        conn.send(("oserror", error.strerror or str(error)))
        return
    host, port = http.server_address[:2]
    conn.send(("bound", f"http://{host}:{port}"))
    # clients that connect before the engine is built wait in the listen queue, as with frontend=thread
    arrivals.on_start = threading.Thread(target=http.serve_forever, name="qllm-http", daemon=True).start
    arrivals.read()
    api.drain()
    http.shutdown()
    http.server_close()


if __name__ == "__main__":
    child_main()
