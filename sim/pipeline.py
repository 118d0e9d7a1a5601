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
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PassTimes:
    host_end_s: float  # the host has issued the pass's last layer (and its LM head)
    device_begin_s: float  # the GPU starts the pass's first layer
    device_end_s: float  # the GPU has run its LM head: the pass's tokens exist


def pass_times(host_start_s: float, device_free_s: float, lead_s: float, host_layers: Sequence[float],
               gpu_layers: Sequence[float], head_s: float, queued: deque | None = None,
               queue_layers: int = 0, busy_extra_s: float = 0.0) -> PassTimes:
    """Issue starts at `host_start_s` after `lead_s` of the host's own work (decision, layout, embedding);
    layer i is issued `host_layers[i]` later, and the GPU, free from `device_free_s`, ends it no sooner
    than `gpu_layers[i]` after the layer before and no sooner than its issue ends (max(host, GPU) per layer
    once the two are in step, as in a stepped layer's pipelined price). The LM head (`head_s`) follows on
    the GPU; its issue is part of the next pass's lead.

    The device's launch queue is bounded: with `queue_layers` > 0 the host issues a stepped layer (one with
    host time) only once the stepped layer `queue_layers` before it has left the GPU. `queued` holds the
    GPU end times of the latest stepped layers, across passes, and is updated. (H200, fcfs, round 9: the
    host ended a GPU-bound prefill pass's issue 9-11 layers before the GPU ended the pass, against 62 for a
    pass of replayed graphs, one launch per layer.)

    A stepped layer issued while the GPU still has earlier work to run costs the host `busy_extra_s` more
    (H200, fcfs, round 9: 3.6 ms a small prefill layer then, against 1.8 with the GPU waiting on the host).
    """
    host = host_start_s + lead_s
    begin = max(device_free_s, host)
    device = begin
    for host_s, gpu_s in zip(host_layers, gpu_layers, strict=True):
        stepped = host_s > 0
        if stepped and queue_layers and queued is not None and len(queued) >= queue_layers:
            host = max(host, queued[-queue_layers])
        host += host_s + (busy_extra_s if stepped and host < device else 0.0)
        device = max(device + gpu_s, host)
        if stepped and queued is not None:
            queued.append(device)
    if queued is not None:
        while len(queued) > queue_layers:
            queued.popleft()
    return PassTimes(host, begin, device + head_s)
