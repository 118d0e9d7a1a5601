"""What the host pays to issue work while the GPU is busy, and what an LS request's start path costs.

Serving logs (H200, fcfs, round 9) showed a small prefill layer taking the host 3.6 ms to issue while the GPU
still ran an earlier pass, against 1.8 ms with the GPU waiting on the host (calibrate.serving's
`pass_layer_busy`), and the LS start path (policy, layout, copy, embedding) takes 0.6-0.9 ms of host while a
BE batch runs. This probe times, with the GPU idle and busy (a sleep kernel on the main stream, the work
issued on the main stream or on a high-priority one, as real.lanes does; or 40 replayed decode-layer graphs
on the main stream, as a BE decode pass leaves them), in interleaved rounds:
- `launch`: one tiny kernel (a 16-element add);
- `start`: `Engine.start` for one prompt (layout through the pinned ring, one copy, the embedding) on a
  full-width Mixtral of `--layers` layers, and `layer`: one stepped prefill layer of it.

    python -m real.launchprobe [--layers 2] [--rounds 20] [--prompt 300] [--graphs 1100]      # on a GPU

`--cold` times instead single starts (one prompt, and an LS prompt with seven BE prompts) on the urgent stream
behind a busy GPU, each after: three untimed starts (`hot`); replayed graphs and a 2 ms spin on an event, as the
server waits (`served`); a 64 MiB memory sweep (`flushed`); `served`, with `Engine.rehearse` every 0.25 ms of the
spin (`served, rehearsed`: the host side of starts for stand-in prompts, nothing copied or launched). The serving
process started a batch 2-3x slower than the hot loop above: the host work between starts evicts the start path from
the CPU's caches (BENCHMARKS.md, session 13), which is why the server rehearses it (engine.rehearse_us).

`--graph-ab N` asks whether the captured graphs a process holds slow its other launches (the serving engine holds
batch buckets x key lengths x layers of them, real.graphs): rounds alternate between N more (dummy) graphs held and
none, the order flipping every round, and time a tiny launch and hot and cold starts (one prompt; an LS prompt with
seven BE prompts) on the urgent stream behind a busy GPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

BUSY_MS = 20.0  # the sleep kernel in front of the timed work: longer than any of it


def sleep_cycles(device: torch.device, ms: float) -> int:
    """Clock cycles of `torch.cuda._sleep` that take about `ms` on this GPU (measured once)."""
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    cycles = 10_000_000
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return int(cycles * ms / start.elapsed_time(end))


def timed(fn: Callable[[], None], busy: Callable[[], None] | None, stream: torch.cuda.Stream | None,
          repeat: int) -> float:
    """Host seconds per call of `fn` (issued on `stream`, or the current one), after `busy()` has queued
    work on the current stream (None: the GPU idle)."""
    device = torch.device("cuda")
    torch.cuda.synchronize(device)
    if busy is not None:
        busy()
    context = torch.cuda.stream(stream) if stream is not None else torch.cuda.stream(torch.cuda.current_stream())
    with context:
        begin = time.perf_counter()
        for _ in range(repeat):
            fn()
        elapsed = time.perf_counter() - begin
    torch.cuda.synchronize(device)
    return elapsed / repeat


@dataclass
class Rig:
    """A full-width Mixtral of a few layers on the GPU, warmed up, with what the probes put in front of their work:
    the urgent stream, the sleep kernel's cycles, and a graph-replayed decode batch of four sequences."""

    engine: object  # real.engine.Engine
    urgent: torch.cuda.Stream
    cycles: int
    decode: object  # real.batch.BatchState
    layers: int

    @classmethod
    def build(cls, layers: int, num_slots: int) -> Rig:
        from real.engine import Engine
        from real.kv import KVPool
        from real.lanes import urgent_streams
        from real.model import build_model, preset_config

        device = torch.device("cuda")
        model = build_model(preset_config("mixtral-8x7b", num_hidden_layers=layers), "cuda", torch.bfloat16)
        engine = Engine.for_device(model, KVPool.allocate_for(model.config, num_slots=num_slots, max_len=1024,
                                                              device=device, dtype=torch.bfloat16))
        engine.warm_up(4)
        decoding = [engine.add_sequence(100 + i, [1] * 200) for i in range(4)]
        engine.run_pass(decoding)
        return cls(engine, urgent_streams(device)[0], sleep_cycles(device, BUSY_MS), engine.start(decoding), layers)

    def graphs(self) -> None:
        """40 decode layers replayed on the current stream, as a BE decode pass leaves them."""
        from policies import Position, Stage
        for i in range(40):
            self.decode.position = Position(i % self.layers, Stage.ATTENTION)
            self.engine.runner.run_layer(self.decode)

    def sleep(self) -> None:
        torch.cuda._sleep(self.cycles)


@torch.inference_mode()
def probe(layers: int, rounds: int, prompt: int, extra_graphs: int = 0, queued: tuple[int, ...] = ()) -> pd.DataFrame:
    rig = Rig.build(layers, num_slots=8)
    engine, device = rig.engine, torch.device("cuda")
    x = torch.zeros(16, device=device)
    seq = engine.add_sequence(0, np.random.default_rng(0).integers(0, 32000, prompt).tolist())  # ints, as served

    def start():
        engine.start([seq])

    def layer():
        batch = engine.start([seq])
        engine.step(batch)  # attention
        engine.step(batch)  # router
        engine.step(batch)  # experts
        del batch

    work = {"launch": (lambda: x.add_(1), 50), "start": (start, 5), "layer": (layer, 2)}
    states = {"idle": (None, None), "busy, same stream": (rig.sleep, None), "busy, urgent stream": (rig.sleep, rig.urgent),
              "graphs, same stream": (rig.graphs, None), "graphs, urgent stream": (rig.graphs, rig.urgent)}
    for n in queued:  # a longer sleep kernel (it outlasts issuing them) with n tiny kernels queued behind it
        states[f"{n} queued, same stream"] = (lambda n=n: (torch.cuda._sleep(int(rig.cycles * (1 + n / 500))),
                                                           [x.add_(1) for _ in range(n)]), None)
    rows, kept = [], []
    for phase in ("as built", f"+{extra_graphs} graphs") if extra_graphs else ("as built",):
        if phase != "as built":
            kept = dummy_graphs(extra_graphs, device)
        for r in range(rounds):  # interleaved: the host's drift reaches every cell alike
            for name, (fn, repeat) in work.items():
                for state, (busy, stream) in states.items():
                    rows.append({"phase": phase, "round": r, "work": name, "state": state,
                                 "us": 1e6 * timed(fn, busy, stream, repeat)})
    del kept
    return pd.DataFrame(rows)


@torch.inference_mode()
def cold_probe(layers: int, rounds: int, prompt: int) -> pd.DataFrame:
    from real.timeline import every

    rig = Rig.build(layers, num_slots=16)
    engine, device = rig.engine, torch.device("cuda")
    rng = np.random.default_rng(0)
    lengths = (prompt, 250, 180, 400, 90, 320, 210, 150)
    prompts = [engine.add_sequence(i, rng.integers(0, 32000, n).tolist()) for i, n in enumerate(lengths)]
    sweep = np.ones(8 << 20)  # 64 MiB

    def spin(rehearse: bool):
        """2 ms of the server's wait: event polls, with rehearsals as engine.rehearse_us=250 runs them."""
        event, idle = torch.cuda.Event(), every(0.25e-3, engine.rehearse)
        event.record()
        end = time.perf_counter() + 2e-3
        while time.perf_counter() < end:
            event.query()
            if rehearse:
                idle()

    before = {"hot": lambda seqs: [engine.start(seqs) for _ in range(3)],
              "served": lambda seqs: (rig.graphs(), spin(False)),
              "flushed": lambda seqs: sweep.__iadd__(1.0),
              "served, rehearsed": lambda seqs: (rig.graphs(), spin(True))}
    rows = []
    for r in range(rounds):
        for work, seqs in (("start 1", prompts[:1]), ("start 8", prompts)):
            for state, prepare in before.items():
                torch.cuda.synchronize(device)
                rig.sleep()
                prepare(seqs)
                with torch.cuda.stream(rig.urgent):
                    begin = time.perf_counter()
                    engine.start(seqs)
                    elapsed = time.perf_counter() - begin
                rows.append({"phase": "cold", "round": r, "work": work, "state": state, "us": 1e6 * elapsed})
    torch.cuda.synchronize(device)
    return pd.DataFrame(rows)


@torch.inference_mode()
def graph_ab(layers: int, rounds: int, prompt: int, count: int) -> pd.DataFrame:
    """See the module's `--graph-ab`: phases `none` and `+N graphs`, interleaved."""
    import gc

    rig = Rig.build(layers, num_slots=16)
    engine, device = rig.engine, torch.device("cuda")
    rng = np.random.default_rng(0)
    lengths = (prompt, 250, 180, 400, 90, 320, 210, 150)
    prompts = [engine.add_sequence(i, rng.integers(0, 32000, n).tolist()) for i, n in enumerate(lengths)]
    x = torch.zeros(16, device=device)
    phases = ("none", f"+{count} graphs")
    rows = []
    for r in range(rounds):
        for phase in phases if r % 2 == 0 else phases[::-1]:
            kept = dummy_graphs(count, device) if phase != "none" else []
            for name, fn, repeat in (("launch", lambda: x.add_(1), 50),
                                     ("start 1, hot", lambda: engine.start(prompts[:1]), 5),
                                     ("start 8, hot", lambda: engine.start(prompts), 5)):
                rows.append({"phase": phase, "round": r, "work": name, "state": "busy, urgent stream",
                             "us": 1e6 * timed(fn, rig.sleep, rig.urgent, repeat)})
            for name, seqs in (("start 1, cold", prompts[:1]), ("start 8, cold", prompts)):
                for _ in range(5):  # as served: graph replays and a wait, then one start on the urgent stream
                    torch.cuda.synchronize(device)
                    rig.sleep()
                    rig.graphs()
                    time.sleep(2e-3)
                    with torch.cuda.stream(rig.urgent):
                        begin = time.perf_counter()
                        engine.start(seqs)
                        elapsed = time.perf_counter() - begin
                    rows.append({"phase": phase, "round": r, "work": name, "state": "served", "us": 1e6 * elapsed})
            torch.cuda.synchronize(device)
            del kept
            gc.collect()
    return pd.DataFrame(rows)


def dummy_graphs(count: int, device: torch.device, kernels: int = 30) -> list:
    """`count` captured CUDA graphs of `kernels` tiny kernels each, kept alive: the serving engine holds about
    1,100 (7 batch buckets x 5 key lengths x 32 layers)."""
    x = torch.zeros(16, device=device)
    stream, graphs = torch.cuda.Stream(device), []
    with torch.cuda.stream(stream):
        for _ in range(count):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(kernels):
                    x.add_(1)
            graphs.append(graph)
    torch.cuda.synchronize(device)
    return graphs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.launchprobe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--prompt", type=int, default=300)
    parser.add_argument("--graphs", type=int, default=0, help="then capture this many more (dummy) CUDA graphs "
                        "and time it all again")
    parser.add_argument("--queued", default="", help="comma-separated counts of tiny kernels queued behind the "
                        "sleep kernel, as further states (does issue slow with the launch queue's fill?)")
    parser.add_argument("--cold", action="store_true", help="single starts after other host work (see above)")
    parser.add_argument("--graph-ab", type=int, default=0, metavar="N",
                        help="rounds with N more captured graphs held and without, interleaved (see above)")
    parser.add_argument("--out", default=None, help="CSV of every timing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: real.launchprobe needs a GPU")
    table = (cold_probe(args.layers, args.rounds, args.prompt) if args.cold
             else graph_ab(args.layers, args.rounds, args.prompt, args.graph_ab) if args.graph_ab
             else probe(args.layers, args.rounds, args.prompt, args.graphs,
                        tuple(int(n) for n in args.queued.split(",") if n)))
    if args.out:
        table.to_csv(args.out, index=False)
    summary = table.groupby(["phase", "work", "state"]).us.describe(percentiles=[0.5, 0.9])[["count", "50%", "90%", "max"]]
    print(summary.round(1).to_string())


if __name__ == "__main__":
    main()
