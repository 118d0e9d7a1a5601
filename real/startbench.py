"""Host time of a pass start by its number of prompts: `python -m real.startbench [--model M] [--device D]`.

An LS request's reaction includes the host's `Engine.start` of its batch, which Algorithm 1 fills up with waiting
BE prefills: this prints the median time of the start's host pieces (packing the ids, the layout's host arrays,
the whole layout with its copy, the start with its embedding) for 1 to 32 prompts of 50-900 tokens, in a hot loop;
the layout and the start also with `varlen` (fresh prompts as one unpadded group: real.layout.PackedGroup).
Then decode starts of 1 to 32 sequences whose last tokens are still on the device, built on the host (ids with
placeholders, layout, copy, the ids filled in) against carried from their last pass (real.carry).
A diagnostic of the code's cost per prompt; the serving host runs these cold and 2-3x slower (BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from real.engine import Engine
from real.kv import KVPool
from real.layout import _packed, _single, build_layout
from real.model import build_model, preset_config
from real.pending import input_ids
from real.run import DTYPES
from real.sequence import Sequence
from sim.results import markdown


def median_us(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return float(np.median(times) * 1e6)


def prompts(engine: Engine, count: int, rng: np.random.Generator) -> list[Sequence]:
    """`count` new prompts with their ids as arrays too (as the server hands them over), in slots 0..count-1."""
    vocab = engine.model.config.vocab_size
    out = []
    for slot, length in enumerate(rng.integers(50, 900, count)):
        ids = rng.integers(1, vocab, int(length))
        out.append(Sequence(slot, ids.tolist(), slot=slot, prompt=ids))
    return out


def _start(engine: Engine, seqs: list[Sequence], varlen: bool):
    engine.varlen_prefill = varlen
    return engine.start(seqs)


def bench_parser(prog: str, doc: str, counts: list[int], repeats: int) -> argparse.ArgumentParser:
    """The arguments of a one-layer host bench (this one, real.prefillbench)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-mixtral")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--counts", type=int, nargs="+", default=counts)
    parser.add_argument("--repeats", type=int, default=repeats)
    return parser


def print_table(rows: list[dict], title: str, out: str | None = None) -> None:
    """A bench's table, printed under its title, and written as CSV where `out` says."""
    table = pd.DataFrame(rows)
    print(title)
    print(markdown(table))
    if out:
        table.to_csv(out, index=False)


def one_layer(args: argparse.Namespace) -> tuple[torch.nn.Module, KVPool]:
    """`bench_parser`'s model with one decoder layer and a KV pool of a slot per prompt; bad arguments exit."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if min(args.counts) < 1:
        raise SystemExit("error: --counts must be >= 1")
    config = preset_config(args.model, num_hidden_layers=1)
    model = build_model(config, args.device, DTYPES[args.dtype])
    return model, KVPool.allocate_for(config, max(args.counts), 1024, torch.device(args.device), DTYPES[args.dtype])


def main(argv: list[str] | None = None) -> None:
    args = bench_parser("python -m real.startbench", __doc__, [1, 4, 8, 16, 32], 300).parse_args(argv)
    device = torch.device(args.device)
    engine = Engine(*one_layer(args))  # a start runs the embedding only
    rng = np.random.default_rng(0)
    rows = []
    with torch.inference_mode():
        for count in args.counts:
            seqs = prompts(engine, count, rng)
            lists = [Sequence(s.seq_id, s.token_ids, slot=s.slot) for s in seqs]  # the same, without arrays
            ids, _ = input_ids(seqs)
            arrays = (lambda: _single(seqs[0])) if count == 1 else (lambda: _packed(seqs))
            rows.append({"prompts": count, "tokens": len(ids),
                         "ids from lists us": median_us(lambda: input_ids(lists), args.repeats, device),
                         "ids from arrays us": median_us(lambda: input_ids(seqs), args.repeats, device),
                         "host arrays us": median_us(arrays, args.repeats, device),
                         **{f"{label}layout us": median_us(
                             lambda: build_layout(seqs, device, ids, staging=engine.staging, varlen=varlen),
                             args.repeats, device) for label, varlen in (("", False), ("varlen ", True))},
                         **{f"{label}start us": median_us(lambda: _start(engine, seqs, varlen), args.repeats, device)
                            for label, varlen in (("", False), ("varlen ", True))}})
    print(f"Engine.start's host pieces ({args.model}, {args.device}), medians of {args.repeats} hot calls")
    print(markdown(pd.DataFrame(rows)))
    decode = [decode_row(engine, count, rng, args.repeats) for count in args.counts]
    print(f"\ndecode starts, built on the host vs carried from the last pass (real.carry), µs, medians of {args.repeats}")
    print(markdown(pd.DataFrame(decode)))


def decode_row(engine: Engine, count: int, rng: np.random.Generator, repeats: int) -> dict:
    """Host time of the next decode start of `count` sequences whose last pass's tokens are still on the device."""
    seqs = prompts(engine, count, rng)
    with torch.inference_mode():
        engine.carry_decode = False
        engine.run_pass(seqs)  # prefill
        batch = engine.start(seqs)
        while not engine.advance(batch):
            pass
        engine.carry_decode = True
        engine.finish_async(batch)  # not polled: each sequence holds a placeholder, and the carry is kept
        carry = engine.carries.pop(0)
        engine.carry_decode = False
        built = median_us(lambda: engine.start(seqs), repeats, engine.device)
        engine.carry_decode = True
        carried = median_us(lambda: engine.carries.insert(0, carry) or engine.start(seqs), repeats, engine.device)
    engine.carry_decode, engine.carries = False, []
    return {"sequences": count, "built us": built, "carried us": carried, "carried / built": carried / built}


if __name__ == "__main__":
    main()
