"""A whole pass on two clocks: the host issues it layer by layer while the GPU runs what was issued.

The real engine's host does not wait for a pass's tokens (real.pending), and an iteration-level policy's
pass is one advance: the host may issue pass N+1 while the GPU still runs pass N (real.timeline, run-ahead
depth one advance). A pass whose host path is longer than its GPU path (a small prefill stepped stage by
stage: about 2 ms of host per layer on the H200 against 1.2 of GPU) then hides part of its issue under
the pass before it: in fcfs at 8 req/s (H200, round 9) a 13-token prefill took 63.5 ms of host and 34.6 ms
on the GPU, which had still been running the previous decode pass for 29.5 ms of that issue. Charging
such a pass max(host, GPU) per layer, one pass after the other, priced it at 67 ms."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


def ran_ahead(run: dict) -> bool:
    """Whether a real run (its summary.json's `run`) issued whole passes ahead of the GPU: its host did not
    wait for a pass's tokens (engine.defer_tokens, real.pending)."""
    return bool(run.get("defer_tokens", False))


@dataclass(frozen=True, slots=True)
class PassPaths:
    """One pass's costs on the two clocks (CostModel.pass_paths)."""

    host: np.ndarray  # [L] seconds of host issue per layer (0: a replayed graph)
    gpu: np.ndarray  # [L] seconds of GPU per layer
    head_s: float  # the LM head on the GPU
    lead_s: float  # the host's work before the first layer (decision, layout, embedding, the last LM head's issue)


@dataclass
class LaunchQueue:
    """The host's side of the device's launch queue, across passes: it holds at most `depth` stepped layers
    (one with host time) ahead of the GPU (0: unbounded), and a stepped layer issued while the GPU still has
    earlier work to run costs the host `busy_extra_s` more. (H200, fcfs, round 9: the host ended a GPU-bound
    prefill pass's issue 9-11 layers before the GPU ended the pass, against 62 for a pass of replayed graphs,
    one launch per layer; a small prefill layer took the host 3.6 ms into a backlog, 1.8 with the GPU waiting.)"""

    depth: int = 0
    busy_extra_s: float = 0.0
    ends: deque = field(default_factory=deque)  # GPU end times of the latest stepped layers issued

    def issue_at(self, host_s: float) -> float:
        """When the host may issue the next stepped layer, ready at `host_s`."""
        return max(host_s, self.ends[-self.depth]) if self.depth and len(self.ends) >= self.depth else host_s

    def issued(self, device_end_s: float) -> None:
        self.ends.append(device_end_s)
        while len(self.ends) > self.depth:
            self.ends.popleft()


@dataclass(frozen=True, slots=True)
class PassTimes:
    host_end_s: float  # the host has issued the pass's last layer (and its LM head)
    device_begin_s: float  # the GPU starts the pass's first layer
    device_end_s: float  # the GPU has run its LM head: the pass's tokens exist


def pass_times(host_start_s: float, device_free_s: float, paths: PassPaths,
               queue: LaunchQueue | None = None) -> PassTimes:
    """Issue starts at `host_start_s` after the host's lead; layer i is issued its host time later, and the
    GPU, free from `device_free_s`, ends it no sooner than its GPU time after the layer before and no sooner
    than its issue ends (max(host, GPU) per layer once the two are in step, as in a stepped layer's pipelined
    price). The LM head follows on the GPU; its issue is part of the next pass's lead. `queue` (updated)
    bounds how far the host gets ahead and what it pays into a backlog."""
    queue = queue or LaunchQueue()
    host = host_start_s + paths.lead_s
    begin = max(device_free_s, host)
    device = begin
    for host_s, gpu_s in zip(paths.host, paths.gpu, strict=True):
        stepped = host_s > 0
        if stepped:
            host = queue.issue_at(host)
            host += host_s + (queue.busy_extra_s if host < device else 0.0)
        device = max(device + gpu_s, host)
        if stepped:
            queue.issued(device)
    return PassTimes(host, begin, device + paths.head_s)
