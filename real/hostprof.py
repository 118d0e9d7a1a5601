"""Host time per call of the functions between an LS arrival and its first kernel, during a real replay:
`python -m real.hostprof [the overrides of python -m real run]` runs `real.cli` with timers wrapped around
them (about 1 us each) and prints p50 / p90 / max per function. A diagnostic: the replay's own numbers carry
the timers' cost. `consult` holds the policy's decisions and `bookkeep`; `bookkeep` holds `engine.start`
(layout, copy, embedding) for a batch it starts."""

from __future__ import annotations

import functools
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

import policies
import policies.state
import real.engine
import real.lanes
import real.layout
import real.server
import real.timeline
from real import stages

WRAPPED = [(real.server.ReplayServer, "_consult", "consult"), (real.server.ReplayServer, "_bookkeep", "bookkeep"),
           (real.engine.Engine, "start", "engine.start"), (real.engine, "build_layout", "build_layout"),
           (real.layout, "to_device", "to_device"), (real.engine, "pending_ids", "input_ids"),
           (real.layout, "_packed", "layout._packed"), (real.layout, "_fresh", "layout._fresh"),
           (torch.Tensor, "pin_memory", "pin_memory"),
           (stages, "embed", "embed"), (real.engine.Engine, "add_sequence", "add_sequence"),
           (real.timeline.DeviceTimeline, "busy_streams", "busy_streams"),
           (real.timeline.DeviceTimeline, "mark", "mark"), (real.lanes.PriorityLane, "claim", "lane.claim"),
           (real.server.ReplayServer, "_rejoin", "lane.join"), (real.server.ReplayServer, "_retire", "retire"),
           (policies.state.SchedulerState, "view", "view"), (policies.state.SchedulerState, "apply", "apply"),
           (policies.QLLM, "schedule", "qllm.schedule"), (real.server.ReplayServer, "_advance", "advance")]


def _one_prompt(seqs) -> bool:
    """A batch of one new prompt: an LS arrival's start, mostly."""
    return len(seqs) == 1 and seqs[0].num_cached == 0


def _prompts(seqs) -> bool:
    """A batch of several new prompts: an LS prefill with its BE fill, or BE prefills."""
    return len(seqs) > 1 and all(seq.num_cached == 0 for seq in seqs)


KINDS = {  # sub-labels: the calls on an LS request's way to its first kernel
    "engine.start": lambda engine, seqs: "one prompt" if _one_prompt(seqs) else "prompts" if _prompts(seqs) else "",
    "input_ids": lambda seqs: "prompts" if _prompts(seqs) else "",
    "bookkeep": lambda server, t: ("starts one prompt" if t.started is not None and len(t.started.requests) == 1
                                   and t.started.requests[0].is_prefill else ""),
}


@dataclass
class Timers:
    """Seconds per call of each wrapped function, by label."""

    times: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def wrap(self, owner, name: str, label: str, kind=None) -> None:
        """Replace `owner.name` by a timed version (for the rest of the process); `kind(*args)`, if given,
        names a sub-label for the call (its times also go under `label [kind]`)."""
        fn, times = getattr(owner, name), self.times[label]

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                times.append(elapsed)
                if kind is not None and (sub := kind(*args)):
                    self.times[f"{label} [{sub}]"].append(elapsed)
        setattr(owner, name, timed)

    def report(self) -> str:
        lines = []
        for label, times in self.times.items():
            us = np.array(times) * 1e6
            if len(us):
                lines.append(f"{label:14s} n={len(us):6d} p50={np.median(us):9.1f}us p90={np.quantile(us, 0.9):9.1f}us "
                             f"max={us.max():9.1f}us")
        return "\n".join(lines)


def main() -> None:
    timers = Timers()
    for owner, name, label in WRAPPED:
        timers.wrap(owner, name, label, KINDS.get(label))
    from real.cli import main as run
    sys.argv = ["real", *sys.argv[1:]]
    try:
        run()
    except SystemExit as done:
        if done.code:
            raise
    print(timers.report())


if __name__ == "__main__":
    main()
