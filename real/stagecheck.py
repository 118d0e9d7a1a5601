"""Layouts sent through a pinned staging ring (real.layout.PinnedStaging) equal the ones built on the CPU,
while copies queue behind sleep kernels (the ring wraps and must wait for its buffers) and on two streams.

    python -m real.stagecheck [--iters 3000]        # on a GPU (H200: 3,000 layouts, none differ)

On a CPU there is no staging and the check only compares the CPU path with itself."""

from __future__ import annotations

import argparse
import random

import torch

from real.layout import Layout, PackedGroup, PinnedStaging, build_layout
from real.pending import input_ids
from real.sequence import Sequence


def random_batch(rng: random.Random) -> list[Sequence]:
    seqs = []
    for i in range(rng.randint(1, 12)):
        length = rng.randint(1, 900)
        cached = rng.choice([0, length - 1, rng.randint(0, length - 1)]) if length > 1 else 0
        seqs.append(Sequence(i, [rng.randint(0, 31999) for _ in range(length)], slot=rng.randint(0, 63),
                             num_cached=cached))
    return seqs


def tensors(layout: Layout) -> list[torch.Tensor]:
    out = [layout.positions, layout.slots, layout.last_rows, layout.token_ids]
    for g in layout.groups:
        if isinstance(g, PackedGroup):
            out += [g.cu_lengths] + ([] if g.rows is None else [g.rows])
        else:
            out += [g.rows, g.positions, g.slots, g.valid_flat, g.valid_rows]
    return out


def check(iters: int, device: torch.device, seed: int = 0) -> int:
    """How many of `iters` layouts differ from their CPU twins."""
    rng, kept = random.Random(seed), []
    on_cuda = device.type == "cuda"
    side = torch.cuda.Stream(priority=-1) if on_cuda else None
    staging = PinnedStaging.allocate(device) if on_cuda else None
    for i in range(iters):
        seqs = random_batch(rng)
        if on_cuda and i % 7 == 0:
            torch.cuda._sleep(200_000)  # ~0.1 ms: the next copies queue behind it
        varlen = i % 2 == 1  # every other layout with its fresh prompts unpadded (int32 lengths in the copy)
        if side is not None and i % 3 == 0:
            with torch.cuda.stream(side):
                kept.append((seqs, build_layout(seqs, device, input_ids(seqs)[0], staging, varlen=varlen)))
        else:
            kept.append((seqs, build_layout(seqs, device, input_ids(seqs)[0], staging, varlen=varlen)))
    if on_cuda:
        torch.cuda.synchronize()
    return sum(any(not torch.equal(a.cpu(), b) for a, b in zip(tensors(lay), tensors(_on_cpu(seqs, lay.varlen))))
               for seqs, lay in kept)


def _on_cpu(seqs: list[Sequence], varlen: bool = False) -> Layout:
    return build_layout(seqs, "cpu", input_ids(seqs)[0], varlen=varlen)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    bad = check(args.iters, torch.device(args.device))
    print(f"stagecheck: {args.iters} layouts, {bad} differ")
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
