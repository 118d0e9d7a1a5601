"""`GET /metrics` of `python -m real serve`: what the HTTP front end has seen, per priority class, in Prometheus' text
format (version 0.0.4), for an operator's scraper or a glance with curl.

Counted where the answers are written (real.api), from the front end's own clock: requests by outcome, those being
answered now, tokens sent back, and two latency histograms: time to the first token (a streamed request's first
chunk; an unstreamed one has a single answer, so its first token is its last) and time to the whole answer. The
engine's own numbers (queueing, preemption, reaction) stay in its step log and `real.report`; nothing here touches
the serving loop."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

# seconds: a histogram's upper bounds, from an LS reaction (a millisecond) to a long BE answer (minutes)
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
OUTCOMES = ("ok", "refused", "timeout", "error", "left")  # left: a streaming client went away


@dataclass
class Histogram:
    """Cumulative-bucket counts, their sum and count (Prometheus' histogram)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS_S))
    total_s: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        index = bisect_left(BUCKETS_S, seconds)
        if index < len(BUCKETS_S):
            self.counts[index] += 1
        self.total_s += seconds
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(BUCKETS_S, self.counts):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {running}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.total_s:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


@dataclass
class Metrics:
    """The front end's counts; the handler threads record, `render` reads, one lock for both."""

    requests: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (priority, outcome)
    in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tokens: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first_token: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    answer: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refused(self, priority: str) -> None:
        """A request turned away before it was admitted (a bad body, or the server stopping)."""
        with self._lock:
            self.requests[priority, "refused"] += 1

    def admitted(self, priority: str) -> None:
        with self._lock:
            self.in_flight[priority] += 1

    def first(self, priority: str, seconds: float) -> None:
        """Its first tokens went back `seconds` after admission."""
        with self._lock:
            self.first_token[priority].observe(seconds)

    def ended(self, priority: str, outcome: str, seconds: float, tokens: int) -> None:
        """An admitted request's answer ended (`outcome`: ok, timeout or error) after `seconds`, with `tokens`."""
        with self._lock:
            self.in_flight[priority] -= 1
            self.requests[priority, outcome] += 1
            self.tokens[priority] += tokens
            if outcome == "ok":
                self.answer[priority].observe(seconds)

    def render(self) -> str:
        """The exposition text: every series for both classes, zeros included (a scraper sees them from the start)."""
        classes = ("LS", "BE")
        with self._lock:
            lines = ["# HELP qllm_requests_total Completion requests answered, by priority and outcome.",
                     "# TYPE qllm_requests_total counter"]
            lines += [f'qllm_requests_total{{priority="{p}",outcome="{o}"}} {self.requests.get((p, o), 0)}'
                      for p in classes for o in OUTCOMES]
            lines += ["# HELP qllm_requests_in_flight Admitted requests not yet answered.",
                      "# TYPE qllm_requests_in_flight gauge"]
            lines += [f'qllm_requests_in_flight{{priority="{p}"}} {self.in_flight.get(p, 0)}' for p in classes]
            lines += ["# HELP qllm_generated_tokens_total Tokens sent back to clients.",
                      "# TYPE qllm_generated_tokens_total counter"]
            lines += [f'qllm_generated_tokens_total{{priority="{p}"}} {self.tokens.get(p, 0)}' for p in classes]
            for name, histograms, text in (
                    ("qllm_time_to_first_token_seconds", self.first_token,
                     "From admission to the first tokens sent back (front end's clock)."),
                    ("qllm_answer_seconds", self.answer, "From admission to the whole answer, for answers sent.")):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram"]
                for p in classes:
                    lines += histograms.get(p, Histogram()).lines(name, f'priority="{p}"')
        return "\n".join(lines) + "\n"
