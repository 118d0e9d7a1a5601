"""The measurement grids: a main grid the simulator interpolates over (piecewise linear in size),
and an offset held-out grid, measured in the same run, that checks the interpolation error.

Points are (x1, x2): attention_decode (batch, context), attention_prefill (sequences, prompt
length), every other stage (tokens or sequences, 0)."""

from __future__ import annotations

POW2 = [2**i for i in range(16)]  # 1 .. 32768
# Token counts for the expert stages: every count to 8 (the number of non-empty queues changes with each
# token there), then steps of 1.33x-1.5x (powers of 2 and 1.5x them: grouped GEMMs run in row tiles, so
# time is a staircase that a sparser grid cuts corners of), and both sides of the engine's switches
# between grouped and dense experts (Mixtral 3|4 and Qwen3-30B-A3B 15|16 tokens, 256|257 for both).
EXPERT_TOKENS = sorted({*range(1, 9), 15, 257} | {m * 2**i for m in (2, 3) for i in range(2, 14)})
# Held out: 1.25x and 1.75x a power of two, between the grid points (and never across a switch).
EXPERT_HELDOUT = sorted({m * 2**i for m in (5, 7) for i in range(1, 12)})


def _one_d(grid: list[int], heldout: list[int]) -> dict:
    return {"grid": [(t, 0) for t in grid], "heldout": [(t, 0) for t in heldout]}


GRIDS = {
    "attention_decode": {
        "grid": [(b, c) for b in (1, 2, 4, 8, 16, 32, 64) for c in (128, 256, 512, 1024, 2048, 4096)],
        "heldout": [(b, c) for b in (3, 12, 48) for c in (384, 1536, 3072)],
    },
    "attention_prefill": {
        "grid": [(n, p) for n in (1, 2, 4, 8, 16) for p in (32, 64, 128, 256, 512, 1024, 2048)],
        "heldout": [(n, p) for n in (3, 6, 12) for p in (96, 384, 1536)],
    },
    "router": _one_d(POW2, [3, 24, 96, 384, 1536, 6144, 24576]),
    "expert": _one_d(EXPERT_TOKENS, EXPERT_HELDOUT),
    "experts_layer": _one_d(EXPERT_TOKENS, EXPERT_HELDOUT),
    "lm_head": _one_d(POW2[:9], [3, 12, 48, 192]),
    "embed": _one_d(POW2[:7], [3, 12, 48]),
    "layer_decode": {"grid": [(b, 512) for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)],
                     "heldout": [(b, 512) for b in (5, 10, 20, 40)]},
    "layer_prefill": {"grid": [(n, p) for n in (1, 2, 4, 8, 16, 32) for p in (32, 128, 512, 1024)],
                      "heldout": [(n, p) for n in (3, 6, 12) for p in (64, 256, 768)]},
}

PASS_BATCHES = (1, 8, 32)  # decode passes (whole model and 1-/2-layer) at this context
PASS_CONTEXT = 512
PASS_DEPTHS = (1, 2, 4)  # decoder layers of the calibration passes (overheads from the 2- and 4-layer ones)


def small(grids: dict) -> dict:
    """A cut-down grid for CPU smoke tests of the tool itself (tiny models)."""
    def keep(points):
        return [(a, min(b, 64)) for a, b in points if a <= 64][:4]
    return {stage: {split: keep(pts) for split, pts in g.items()} for stage, g in grids.items()}


def largest(grids: dict) -> tuple[int, int]:
    """(sequences, context) the KV pool must hold for the grids."""
    pts = grids["attention_decode"]["grid"] + grids["attention_decode"]["heldout"]
    pre = grids["attention_prefill"]["grid"] + grids["attention_prefill"]["heldout"]
    return max(max(b for b, _ in pts), max(n for n, _ in pre), 2 * max(PASS_BATCHES)), \
        max(max(c for _, c in pts), max(p for _, p in pre), PASS_CONTEXT + 64) + 1
