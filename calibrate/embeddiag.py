"""Which part of the engine's `embed` stage makes its GPU clock bimodal: the layout's pinned host-to-device
copy, the token gather, or the two together (sixth calibration run: together 8.7 or 17 us per call, each
alone steady; since then the ids travel in the layout's copy and the gather reads them). Times the three
with the calibration's own `calibrate.timing.measure`.

    python -m calibrate.embeddiag [--device cuda] [--repeats 20]"""

from __future__ import annotations

import argparse

import torch

from calibrate.timing import measure
from real.layout import PinnedStaging, build_layout
from real.pending import input_ids
from real.sequence import Sequence

HIDDEN, VOCAB = 4096, 32000  # Mixtral-8x7B's embedding


def parts(table: torch.nn.Embedding, tokens: int, device: str) -> dict:
    """The stage as the engine runs it for `tokens` decode sequences, and its two parts alone."""
    seqs = [Sequence(i, [1] * 512, slot=i, num_cached=511) for i in range(tokens)]
    ids = torch.randint(0, VOCAB, (tokens,), device=device)
    staging = PinnedStaging.allocate(torch.device(device)) if device == "cuda" else None  # as an Engine has

    def layout():
        return build_layout(seqs, device, ids=input_ids(seqs)[0], staging=staging)
    return {"layout": layout, "gather": lambda: table(ids), "both": lambda: table(layout().token_ids)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 48, 64])
    args = parser.parse_args(argv)
    table = torch.nn.Embedding(VOCAB, HIDDEN, dtype=torch.bfloat16, device=args.device)
    print(f"GPU clock (on a CPU: wall) per call, us, one value per repeat ({args.device})")
    for tokens in args.tokens:
        for name, fn in parts(table, tokens, args.device).items():
            rows = measure(fn, args.device, args.repeats, inner=4)
            print(f"{tokens:>4} {name:<6} " + " ".join(f"{r['gpu_s'] * 1e6:.1f}" for r in rows))


if __name__ == "__main__":
    main()
