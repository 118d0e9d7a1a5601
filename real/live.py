"""`python -m real serve`: the real engine behind an HTTP endpoint (real.api), scheduled by the same policy
objects as a trace replay. The HTTP server runs in a process of its own (real.frontend; `frontend=thread`: on
threads of the engine's process). On shutdown (Ctrl-C, SIGTERM) it stops admitting, finishes what it admitted,
and writes the served requests as the simulator's tables (`requests.parquet`, `summary.json`, `source=real`)."""

from __future__ import annotations

import gc
import signal
import sys
import threading
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from policies import Policy, Priority, SchedulerState
from real import hostcpu
from real.api import Api, Codec, bind_http
from real.arrivals import LiveArrivals
from real.frontend import FrontendProcess, PipeArrivals
from real.run import EngineSettings, build_engine, make_server, model_config, watched
from real.server import ReplayServer, ServeOutcome
from real.steplog import write_steps
from sim.results import requests_table, summarize


@dataclass(frozen=True)
class LiveSpec:
    policy: Policy
    policy_name: str
    engine: EngineSettings
    max_len: int  # KV slot length: a request's prompt plus max_tokens must fit
    max_batch_size: int = 32
    slo_s: float = 3.0
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port
    default_priority: str = "BE"
    default_max_tokens: int = 16
    tokenizer: str | None = None  # SentencePiece model file for text prompts (None: mistral-common's)
    switch_interval_us: float = 200.0  # the GIL's switch interval while serving (Python's default: 5000)
    frontend: str = "process"  # where the HTTP server runs: "process" (its own) or "thread" (the engine's process)

    def __post_init__(self) -> None:
        if self.frontend not in ("process", "thread"):
            raise ValueError(f"frontend must be process or thread, got {self.frontend!r}")
        if self.max_len < 2:
            raise ValueError(f"engine.max_len must be >= 2 for serving, got {self.max_len}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not self.switch_interval_us > 0:
            raise ValueError(f"switch_interval_us must be > 0, got {self.switch_interval_us}")
        if self.default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be >= 1, got {self.default_max_tokens}")
        try:
            Priority.parse(self.default_priority)
        except (KeyError, ValueError):
            raise ValueError(f"default_priority must be LS or BE, got {self.default_priority!r}") from None


@dataclass
class LiveServer:
    """A built engine, its serving loop and the HTTP front end feeding it: a child process (`frontend`) or,
    with `frontend=thread`, an HTTP server on threads of this process (`http`)."""

    spec: LiveSpec
    arrivals: LiveArrivals | PipeArrivals
    server: ReplayServer
    url: str
    frontend: FrontendProcess | None = None
    http: ThreadingHTTPServer | None = None
    api: Api | None = None  # with `http`
    placement: hostcpu.Placement = field(default_factory=hostcpu.Placement)  # engine.host_cpu's choice

    @classmethod
    def build(cls, spec: LiveSpec) -> LiveServer:
        """The tokenizer and the port first: a bad path or a taken port fails before a minute of weights."""
        vocab_size = model_config(spec.engine).vocab_size  # a bad preset or checkpoint path fails here too
        frontend = http = api = None
        placement = hostcpu.Placement.of(spec.engine.host_cpu)
        if spec.frontend == "process":
            frontend = FrontendProcess.launch(spec.host, spec.port, spec.engine.model, vocab_size, spec.max_len,
                                              spec.default_priority, spec.default_max_tokens, spec.tokenizer,
                                              cpus=placement.rest)
            arrivals, url = frontend.arrivals, frontend.url
        else:
            codec = Codec.for_vocab(vocab_size, spec.tokenizer)
            arrivals = LiveArrivals(kv_unit_tokens=spec.max_len)  # one KV slot per request, as in a replay
            api = Api(arrivals, codec, spec.engine.model, spec.max_len, Priority.parse(spec.default_priority),
                      spec.default_max_tokens)
            http = bind_http(api, spec.host, spec.port)
            host, port = http.server_address[:2]
            url = f"http://{host}:{port}"
        try:
            engine = build_engine(spec.engine, spec.max_len, spec.max_batch_size)
        except BaseException:
            if frontend is not None:
                frontend.stop()
            if http is not None:
                http.server_close()
            raise
        state = SchedulerState(kv_capacity_tokens=engine.pool.num_free * spec.max_len,
                               max_batch_size=spec.max_batch_size)
        server = make_server(engine, spec.policy, spec.engine, state, arrivals.prompt_ids)
        server.on_finish, server.on_tokens = arrivals.finished, arrivals.tokens
        return cls(spec, arrivals, server, url, frontend, http, api, placement)

    def run(self, on_ready=lambda url: None) -> ServeOutcome:
        """Serve until `arrivals.close()` (a signal handler, or a test) and every admitted request is done.
        The collector stays on (a server may run for days) but skips the weights' and engine's objects.
        With `engine.host_cpu` the loop's thread has that CPU to itself (real.hostcpu)."""
        if self.http is not None:
            def serve_http() -> None:
                with hostcpu.pinned(self.placement.rest):  # its handler threads inherit it
                    self.http.serve_forever()
            # once the loop has started (as the front end's process does): a request answered before the loop's
            # clock existed was refused (503), and clients that connect sooner wait in the listen queue
            self.arrivals.on_start = threading.Thread(target=serve_http, name="qllm-http", daemon=True).start
        gc.collect()
        gc.freeze()
        # the engine's thread spins while it waits for the GPU, holding the GIL: a handler thread (frontend=thread)
        # that has read a request would wait up to the switch interval (5 ms by default) to hand it over
        interval = sys.getswitchinterval()
        sys.setswitchinterval(self.spec.switch_interval_us * 1e-6)
        try:
            on_ready(self.url)
            with self.placement.loop_thread(), watched(self.server, self.spec.engine):
                return self.server.serve(self.arrivals)
        except BaseException as error:
            self.arrivals.fail_all(f"the server stopped: {error!r}")
            raise
        finally:
            sys.setswitchinterval(interval)
            gc.unfreeze()
            if self.frontend is not None:
                self.frontend.stop()
            if self.http is not None:
                self.api.drain()
                self.http.shutdown()
                self.http.server_close()


def close_on_signals(arrivals: LiveArrivals | PipeArrivals) -> None:
    """Ctrl-C or SIGTERM: admit no more and finish what was admitted; a second one stops at once."""
    def handler(signum, frame) -> None:
        if arrivals.closing:
            raise KeyboardInterrupt
        print("\nstopping: finishing the admitted requests (again to abort)", flush=True)
        arrivals.close()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def results(outcome: ServeOutcome, spec: LiveSpec, out_dir: Path, host_cpu: int | None = None
            ) -> tuple[pd.DataFrame, dict]:
    """The served requests as the simulator's table and summary (rate: the measured arrival rate; `host_cpu`: the
    CPU the loop ran on, `LiveServer.placement`)."""
    write_steps(outcome.steps, out_dir / "steps.parquet")
    arrivals = [r.arrival_s for r in outcome.requests]
    span = max(arrivals) - min(arrivals) if len(arrivals) > 1 else 0.0
    rate = (len(arrivals) - 1) / span if span > 0 else 0.0
    table = requests_table(outcome.requests, "real", spec.policy_name, rate, 0)
    summary = summarize(table, spec.slo_s, outcome.busy_s) if len(table) else {"classes": {}, "slo_s": spec.slo_s}
    mode = "http" if spec.frontend == "process" else f"http-{spec.frontend}"
    summary["run"] = {"policy": spec.policy_name, "mode": mode, "frontend": spec.frontend, "rate": rate, "seed": 0, "engine": spec.engine.model,
                      "num_layers": model_config(spec.engine).num_hidden_layers,
                      "device": spec.engine.device, "kv_slot_tokens": spec.max_len, "wall_s": outcome.wall_s,
                      "num_consults": outcome.num_consults, **spec.engine.recorded(spec.policy), "host_cpu": host_cpu}
    return table, summary
