"""`python -m real.workspacecheck [--seconds S] [--arms shared,own]`: do CUDA graphs replayed on two streams at once
corrupt or hang each other's cuBLAS GEMMs when they were captured on one stream (a GPU probe for the engine stall).

A captured cuBLAS GEMM keeps the workspace of the stream it was captured on; `torch.cuda.graph` captures on one
process-wide side stream unless given another. Two chains of GEMMs shaped like a Qwen3-30B-A3B decode layer (main
stream) and a prefill pass (a high-priority stream, as the urgent lane's) are captured either on that one stream
(`shared`, as the engine did until session 25) or each on the stream it replays on (`own`, real.graphs.capture_stream),
then replayed side by side for `--seconds`. Each replay's output is compared bit for bit with the chain's output when
replayed alone. Each arm runs in a process of its own under a timeout, since a GEMM that never ends cannot be
interrupted: `hung` means its replays stopped finishing. Prints one row per arm: replays, mismatches, hung."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import pandas as pd

# (tokens, [(in, out), ...]): Qwen3-30B-A3B's projections (q, o, k/v, an expert's gate-up and down) at 32 decoding
# sequences for 8 layers and its LM head, and at 768 prefill tokens for 6 layers
DECODE = (32, [(2048, 4096), (4096, 2048), (2048, 512), (512, 2048), (2048, 1536), (1536, 2048)] * 8 + [(2048, 151936)])
PREFILL = (768, [(2048, 4096), (4096, 2048), (2048, 1536), (1536, 2048)] * 6)


def chain(tokens: int, dims: list[tuple[int, int]], seed: int):
    import torch
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, dims[0][0], device="cuda", dtype=torch.bfloat16, generator=gen)
    weights = [torch.randn(o, i, device="cuda", dtype=torch.bfloat16, generator=gen) / i ** 0.5 for i, o in dims]

    def run() -> torch.Tensor:
        h = x
        for w in weights:
            h = torch.nn.functional.linear(h, w)
        return h
    return run


def arm(name: str, seconds: float) -> None:
    """One arm in this process: prints `replays mismatches` when done."""
    import torch
    main, urgent = torch.cuda.Stream(), torch.cuda.Stream(priority=-1)
    shared = torch.cuda.Stream()
    runs = [chain(*DECODE, seed=1), chain(*PREFILL, seed=2)]
    graphs, outs, refs = [], [], []
    for run, stream in zip(runs, (main, urgent)):
        capture = shared if name == "shared" else stream
        with torch.cuda.stream(capture):
            run()  # warm-up: workspace and kernel choice, eagerly
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=capture):
            out = run()
        graphs.append(graph)
        outs.append(out)
    for graph, out, stream in zip(graphs, outs, (main, urgent)):
        with torch.cuda.stream(stream):
            graph.replay()
        torch.cuda.synchronize()
        refs.append(out.clone())
    replays = mismatches = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(8):  # the main chain twice per urgent one, so that they overlap at shifting offsets
            with torch.cuda.stream(main):
                graphs[0].replay()
                graphs[0].replay()
            with torch.cuda.stream(urgent):
                graphs[1].replay()
        torch.cuda.synchronize()
        replays += 1
        mismatches += int(not torch.equal(outs[0], refs[0])) + int(not torch.equal(outs[1], refs[1]))
        print(f"progress {replays} {mismatches}", flush=True)
    print(f"done {replays} {mismatches}", flush=True)


def probe(name: str, seconds: float, grace: float) -> dict:
    cmd = [sys.executable, "-m", "real.workspacecheck", "--arm", name, "--seconds", str(seconds)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + grace)
        lines, hung = done.stdout.split("\n"), False
        error = done.stderr.strip().splitlines()[-1] if done.returncode else ""
    except subprocess.TimeoutExpired as timeout:
        out = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else (timeout.stdout or "")
        lines, hung, error = out.split("\n"), True, ""
    last = [line.split() for line in lines if line.startswith(("progress", "done"))]
    replays, mismatches = (int(last[-1][1]), int(last[-1][2])) if last else (0, 0)
    return {"arm": name, "replays": replays, "mismatches": mismatches, "hung": hung, "error": error}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m real.workspacecheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="replay time per arm")
    parser.add_argument("--arms", default="shared,own", help="shared: both captured on one stream; own: each on its own")
    parser.add_argument("--repeats", type=int, default=1, help="processes per arm, interleaved")
    parser.add_argument("--grace", type=float, default=30.0, help="s past --seconds before an arm counts as hung")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.arm:
        arm(args.arm, args.seconds)
        return
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("error: real.workspacecheck needs a CUDA device")
    names = args.arms.split(",")
    if set(names) - {"shared", "own"}:
        raise SystemExit(f"error: --arms takes shared and/or own, got {args.arms!r}")
    rows = [probe(name, args.seconds, args.grace) for _ in range(args.repeats) for name in names]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
