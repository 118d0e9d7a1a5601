"""`python -m real.servecheck --trace T --seed S --out DIR [overrides ...]`: one trace served twice, in-process
(`real run`) and over HTTP (`real serve` fed by `real.loadgen`), with the same policy and engine overrides, so the
cost of the HTTP front end shows in the same tables (`python -m real.report DIR --reaction --by mode`). Each run
is its own process, one after the other (the engine takes the GPU's memory); a server that dies is reported,
not waited for. The HTTP runs' requests are streamed, so the tables also have the clients' own TTFT beside the
servers' (`ttft.csv`). `--frontends process thread`: one HTTP run per front end (real.frontend)."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd

from real import hostcpu
from real.loadgen import replay, summary
from real.report import markdown, reaction_table
from sim.workload import read_trace
from sim.workload.trace import TraceError


def run_replay(trace: Path, seed: int, overrides: list[str], out: Path) -> None:
    """`real run` on the trace (which records the trace's rate: sim.workload.trace_rate)."""
    command = [sys.executable, "-m", "real", "run", f"trace={trace}", f"seed={seed}", *overrides,
               f"hydra.run.dir={out}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"real run failed (exit {done.returncode}): {_last_line(done.stderr or done.stdout)}")


def serve_trace(trace: Path, seed: int, overrides: list[str], out: Path, port: int, start_timeout_s: float,
                frontend: str = "process") -> str:
    """Start `real serve`, post the trace, stop it (SIGINT: it finishes and writes its tables); the loadgen summary."""
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "serve.out").open("w")
    server = subprocess.Popen([sys.executable, "-m", "real", "serve", f"port={port}", f"frontend={frontend}",
                               *overrides, f"hydra.run.dir={out}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(server, url, start_timeout_s, out / "serve.out")
        table = _clients(url, trace, seed, overrides)
        table.to_csv(out / "loadgen.csv", index=False)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=600)
        log.close()
    if server.returncode != 0:
        raise RuntimeError(f"real serve exited {server.returncode}: {_last_line((out / 'serve.out').read_text())}")
    return summary(table)


def _clients(url: str, trace: Path, seed: int, overrides: list[str]) -> pd.DataFrame:
    """The trace's streamed clients (threads of this process); with `engine.host_cpu` among the overrides, off the
    CPUs of the serving loop's core, as the server's front end (real.hostcpu)."""
    pins = [o.split("=", 1)[1] for o in overrides if o.startswith("engine.host_cpu=")]
    placement = hostcpu.Placement.of(int(pins[-1]) if pins and pins[-1] not in ("null", "None") else None)
    with hostcpu.pinned(placement.rest):  # the client threads started inside inherit it
        return replay(url, read_trace(trace), seed, stream=True)


def ttft_table(out: Path) -> pd.DataFrame:
    """TTFT p50 / p99 (ms) per priority: each run's server-side (arrival to first token on the host's clock;
    over HTTP, arrival is the admission) and, over HTTP, the client's (its send to its first streamed token)."""
    columns = {"replay, server": pd.read_parquet(out / "replay" / "requests.parquet")[["priority", "ttft_s"]]}
    for run in sorted(out.glob("http*")):
        columns[f"{run.name}, server"] = pd.read_parquet(run / "requests.parquet")[["priority", "ttft_s"]]
        client = pd.read_csv(run / "loadgen.csv")
        columns[f"{run.name}, client"] = client[client.status == 200][["priority", "ttft_s"]]
    rows = []
    for name, table in columns.items():
        for priority, group in [("all", table), *table.groupby("priority")]:
            rows.append({"ttft": name, "priority": priority, "n": len(group),
                         "p50 ms": 1e3 * group.ttft_s.median(), "p99 ms": 1e3 * group.ttft_s.quantile(0.99)})
    return pd.DataFrame(rows)


def _wait_until_up(server: subprocess.Popen, url: str, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"real serve exited {server.returncode} before serving: {_last_line(log.read_text())}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"real serve did not answer within {timeout_s:g} s")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.servecheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, required=True, help="the trace both runs serve")
    parser.add_argument("--seed", type=int, default=0, help="the prompts' seed (as real run's)")
    parser.add_argument("--out", type=Path, required=True, help="gets replay/ and http/ run folders")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--frontends", nargs="+", choices=["process", "thread"], default=["process"],
                        help="one HTTP run per front end (real serve frontend=...), after the replay")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds the server may take to build")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both (policy=..., engine.*=...)")
    args = parser.parse_args(argv)
    try:
        read_trace(args.trace)
        run_replay(args.trace.resolve(), args.seed, args.overrides, args.out / "replay")
        for frontend in args.frontends:
            print(f"{http_dir(frontend)}:")
            print(serve_trace(args.trace.resolve(), args.seed, args.overrides, args.out / http_dir(frontend),
                              args.port, args.start_timeout, frontend))
    except (TraceError, FileNotFoundError, RuntimeError) as error:
        sys.exit(f"error: {error}")
    table = reaction_table(args.out, by="mode")
    table.to_csv(args.out / "reaction.csv", index=False)
    print(markdown(table[table.run.str.startswith("all")]))
    ttft = ttft_table(args.out)
    ttft.to_csv(args.out / "ttft.csv", index=False)
    print(markdown(ttft))
    for run in ["replay", *map(http_dir, args.frontends)]:
        throughput = json.loads((args.out / run / "summary.json").read_text())["throughput"]
        print(f"{run}: tokens/s {throughput['tokens_per_s']:.1f}")


def http_dir(frontend: str) -> str:
    """The run folder (and summary `mode`, real.live.results) of an HTTP run with this front end."""
    return "http" if frontend == "process" else f"http-{frontend}"


if __name__ == "__main__":
    main()
