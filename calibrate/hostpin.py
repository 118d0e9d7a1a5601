"""Which CPU the calibration's host should run on.

On the lent H100 the host clock of a stage moved between two states from one sweep to the next
(`attention_decode` at 48 x 384: 0.71-0.89 ms in some sweeps, 1.47-1.59 in others), with no such
states on the H200. A thread the kernel moves between cores, some of them far from the GPU or busy
with a neighbour's work, would do that. `probe` times the host's issue speed on each CPU this
process may use, in interleaved rounds, so that a core that is slow, or slow at times, shows; `pin`
moves the calling (issuing) thread, and the threads it starts later, to the steadiest one. On the
lent H100 (session 9) every core was noisy (6.5-10 us per launch from probe to probe, spikes to 30-99):
pinning picks the steadiest core; it does not make such a host steady (BENCHMARKS_calibrate.md).

`python3 -m calibrate.hostpin [--rounds 20]` prints the table (GPU machine)."""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

LAUNCHES = 200  # small kernels per probe: ~1-2 ms of issue work, far longer than a timer tick


def _issue_s(x: torch.Tensor) -> float:
    """Host seconds per launch of a tiny kernel while the GPU is held busy (nothing waits on it)."""
    torch.cuda.synchronize()
    torch.cuda._sleep(int(5e-3 * 2.0e9))  # covers 200 launches at up to 25 us
    start = time.perf_counter()
    for _ in range(LAUNCHES):
        x.add_(1.0)
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / LAUNCHES


def issue_us(probes: int = 5) -> float:
    """The host's issue speed now: median microseconds per tiny launch over `probes` probes. Logged
    through a calibration run (`calibrate.measure`: host_probe.csv), so a host that changed speed
    between the stages and the passes they predict shows in the run's own record."""
    x = torch.zeros(16, device="cuda")
    _issue_s(x)
    return 1e6 * float(np.median([_issue_s(x) for _ in range(probes)]))


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def probe(rounds: int = 10, cpus: list[int] | None = None) -> pd.DataFrame:
    """Rows (round, cpu, issue_us): cpu -1 is the process unpinned (the scheduler's choice)."""
    everything = allowed_cpus()
    cpus = everything if cpus is None else cpus
    x = torch.zeros(16, device="cuda")
    for _ in range(3):
        _issue_s(x)
    rows = []
    try:
        for r in range(rounds):
            for cpu in [-1, *cpus]:
                os.sched_setaffinity(0, everything if cpu < 0 else {cpu})
                _issue_s(x)  # settle on the new core
                rows.append({"round": r, "cpu": cpu, "issue_us": 1e6 * float(np.median([_issue_s(x) for _ in range(3)]))})
    finally:
        os.sched_setaffinity(0, everything)
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per CPU: median and worst round (us per launch); `steady` = worst / median."""
    out = table.groupby("cpu").issue_us.agg(median="median", worst="max")
    out["steady"] = out.worst / out["median"]
    return out


def best_cpu(table: pd.DataFrame) -> int:
    """The CPU whose worst round is fastest (a core that is quick but slow at times is no better than
    the scheduler's choice); -1 (do not pin) where no core beats running unpinned."""
    stats = summary(table)
    pinned = stats.drop(index=-1, errors="ignore")
    if pinned.empty:
        return -1
    cpu = int(pinned.worst.idxmin())
    return cpu if -1 not in stats.index or pinned.worst[cpu] < stats.worst[-1] else -1


def pin(cpu: int) -> None:
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default=None, help="CSV of every probe")
    args = parser.parse_args(argv)
    table = probe(args.rounds)
    if args.out:
        table.to_csv(args.out, index=False)
    print(table.pivot(index="round", columns="cpu", values="issue_us").round(2).to_string())
    print(summary(table).round(2).to_string())
    print(f"best cpu: {best_cpu(table)}")


if __name__ == "__main__":
    main()
