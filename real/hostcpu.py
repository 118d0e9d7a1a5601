"""A CPU of its own for the serving loop (`engine.host_cpu`).

Why: the loop's host path (an LS request's start, the layers it issues) is Python whose speed depends on the
CPU's caches (real.engine.Engine.rehearse). Served over HTTP, the front end's process and any local clients run
beside it; with the H100's Qwen3 at 28 req/s the process front end's runs noticed arrivals 0.3 ms later and
started them 0.5 ms slower at p50 than a replay of the same trace (session 15). Pinning the loop's thread to one
CPU, and the front end and clients to the CPUs not sharing its core, keeps them off that core's caches and run
queue. On a 16-core H100 host (session 16, 8 pairs) it made no difference the runs resolve, so it is off by
default: for hosts where the loop is crowded out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def allowed() -> set[int]:
    return set(os.sched_getaffinity(0))


def siblings(cpu: int) -> set[int]:
    """The CPUs sharing `cpu`'s core (hyperthreads), itself included; {cpu} where the kernel does not say."""
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    try:
        text = path.read_text().strip()
    except OSError:
        return {cpu}
    cpus = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus | {cpu}


def choose(cpu: int, cpus: set[int] | None = None) -> tuple[int, set[int]]:
    """The loop's CPU (`cpu`, or -1: the highest this process may use) and the CPUs left for the others (every
    allowed CPU outside that core; all of them but `cpu` where the core has no other)."""
    cpus = allowed() if cpus is None else cpus
    chosen = max(cpus) if cpu == -1 else cpu
    if chosen not in cpus:
        raise ValueError(f"engine.host_cpu={cpu}: CPU {chosen} is not among this process's CPUs {sorted(cpus)}")
    others = cpus - siblings(chosen) or cpus - {chosen}
    if not others:
        raise ValueError(f"engine.host_cpu={cpu}: this process may use only CPU {chosen}; nothing left for the rest")
    return chosen, others


def pin_thread(cpus: set[int]) -> None:
    """The calling thread (and threads it starts later) on `cpus` (Linux: affinity is per thread)."""
    os.sched_setaffinity(0, cpus)


@contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """The calling thread on `cpus` inside the block (None: left as it is), back on its own CPUs after."""
    own = allowed()
    if cpus is not None:
        pin_thread(cpus)
    try:
        yield
    finally:
        if cpus is not None:
            pin_thread(own)


@dataclass(frozen=True)
class Placement:
    """Where `engine.host_cpu` puts things, chosen once: the loop's CPU (None: anywhere) and the CPUs for the
    front end and clients (None: anywhere)."""

    loop: int | None = None
    rest: set[int] | None = None

    @classmethod
    def of(cls, host_cpu: int | None) -> Placement:
        return cls() if host_cpu is None else cls(*choose(host_cpu))

    def loop_thread(self):
        """Context: the calling thread runs the serving loop."""
        return pinned(None if self.loop is None else {self.loop})
