"""`python -m real.sweepwatch --out DIR --sweep KEY=V1,V2 ... [--fixed KEY=V ...]`: a `python -m real run -m` sweep
under a stall watchdog, for GPU sessions that hunt the engine stall (BENCHMARKS.md, sessions 22-25).

A job stalls when its replay's own watch (real.stallwatch, after `--watch` s without progress) reports it in the
job's log, or when it runs longer than `--limit` s (the first: plus `--build`, the engine's build). Then the
replay's Python stacks (SIGUSR1, real.cli), the kernels on the GPU (`cuda-gdb` attached: `info cuda kernels`) and
`nvidia-smi` go to `DIR/stall_<job>.txt`, the process is killed, and the sweep's remaining jobs run one process each.
Unless `--fixed` sets them, each job gets `engine.device_trail=true` (the watch's report then says where each
stream's device work stopped: real.devicetrail), `engine.stall_timeout_s=<--watch>` and `engine.stall_hold_s` long
enough for cuda-gdb (the watch would otherwise end the stalled process before cuda-gdb attaches). Job folders are
named as Hydra names a sweep's (`<n>_<policy>_rate<r>_seed<s>`) or, for single runs, `<n>_<key><value>...`."""

from __future__ import annotations

import argparse
import itertools
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from real.stallwatch import STALL_MESSAGE


@dataclass
class Sweep:
    out: Path
    sweep: list[str]  # KEY=V1,V2 (outer first, as Hydra orders them)
    fixed: list[str]
    limit_s: float
    build_s: float
    gdb_timeout_s: int = 150

    @property
    def keys(self) -> list[str]:
        return [s.split("=", 1)[0] for s in self.sweep]

    @property
    def combos(self) -> list[tuple[str, ...]]:
        return list(itertools.product(*[s.split("=", 1)[1].split(",") for s in self.sweep]))

    def command(self, first: int, multirun: bool) -> list[str]:
        if multirun:
            return [sys.executable, "-m", "real", "run", "-m", *self.sweep, *self.fixed, f"hydra.sweep.dir={self.out}"]
        combo = self.combos[first]
        name = f"{first}_" + "_".join(f"{k.split('.')[-1]}{v}" for k, v in zip(self.keys, combo))
        return [sys.executable, "-m", "real", "run", *[f"{k}={v}" for k, v in zip(self.keys, combo)], *self.fixed,
                f"hydra.run.dir={self.out / name}"]

    def run_jobs(self, first: int, multirun: bool) -> int:
        """Jobs from `first` (all that are left in one sweep process, or that one alone); the next job to run."""
        last = len(self.combos) if multirun else first + 1
        path = self.out / f"proc_{first}.log"
        with open(path, "w") as log:
            proc = subprocess.Popen(self.command(first, multirun), stdout=log, stderr=subprocess.STDOUT)
            job, started, limit = first, time.monotonic(), self.limit_s + self.build_s
            while True:
                time.sleep(0.2)
                reported = STALL_MESSAGE in path.read_text(errors="replace")
                if list(self.out.glob(f"{job}_*/summary.json")):
                    print(f"job {job} {self.combos[job]}: done in {time.monotonic() - started:.0f} s", flush=True)
                    job, started, limit = job + 1, time.monotonic(), self.limit_s
                    if job >= last:
                        proc.wait()
                        return job
                elif proc.poll() is not None:
                    print(f"job {job} {self.combos[job]}: its process ended, status {proc.returncode}", flush=True)
                    return job + 1
                elif reported or time.monotonic() - started > limit:
                    how = "its watch reported a stall" if reported else "over its limit"
                    print(f"job {job} {self.combos[job]}: stalled after {time.monotonic() - started:.0f} s ({how})",
                          flush=True)
                    self.diagnose(proc, job)
                    proc.kill()
                    proc.wait()
                    return job + 1

    def diagnose(self, proc: subprocess.Popen, job: int) -> None:
        proc.send_signal(signal.SIGUSR1)  # real.cli prints every thread's stack into the job's log
        time.sleep(2)
        gdb = ["timeout", str(self.gdb_timeout_s), "cuda-gdb", "-batch", "-p", str(proc.pid), "-ex", "info cuda kernels",
               "-ex", "info cuda devices", "-ex", "detach"]
        smi = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used,power.draw", "--format=csv"]
        (self.out / f"stall_{job}.txt").write_text("".join(_output(cmd) for cmd in (smi, gdb, smi)))


def _output(cmd: list[str]) -> str:
    began = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as error:
        return f"--- {' '.join(cmd)}: {error}\n"
    return (f"--- {' '.join(cmd)}: status {done.returncode}, {time.monotonic() - began:.0f} s\n{done.stdout}\n"
            f"{done.stderr[-4000:]}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.sweepwatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the sweep's folder")
    parser.add_argument("--sweep", nargs="+", required=True, help="KEY=V1,V2 ... (outer first)")
    parser.add_argument("--fixed", nargs="*", default=[], help="KEY=V for every job")
    parser.add_argument("--limit", type=float, default=100, help="s a job may take")
    parser.add_argument("--build", type=float, default=60, help="s more for the first job (the engine's build)")
    parser.add_argument("--total", type=float, default=float("inf"), help="start no job after this many s")
    parser.add_argument("--gdb-timeout", type=int, default=150)
    parser.add_argument("--watch", type=float, default=20, help="engine.stall_timeout_s of each job, unless --fixed sets it")
    args = parser.parse_args(argv)
    if any("=" not in s or not s.split("=", 1)[1] for s in args.sweep):
        raise SystemExit("error: --sweep takes KEY=V1,V2 ...")
    defaults = {"engine.device_trail": "true", "engine.stall_timeout_s": f"{args.watch:g}",
                "engine.stall_hold_s": str(args.gdb_timeout + 30)}
    fixed = args.fixed + [f"{k}={v}" for k, v in defaults.items() if not any(f.startswith(k + "=") for f in args.fixed)]
    sweep = Sweep(args.out, args.sweep, fixed, args.limit, args.build, args.gdb_timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    job = sweep.run_jobs(0, multirun=True)
    while job < len(sweep.combos) and time.monotonic() - began < args.total:
        job = sweep.run_jobs(job, multirun=False)
    print(f"{job} of {len(sweep.combos)} jobs run in {time.monotonic() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
