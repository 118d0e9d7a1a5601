"""The measurement grids: a main grid the simulator interpolates over (piecewise linear in size),
and an offset held-out grid, measured in the same run, that checks the interpolation error.

Points are (x1, x2): attention_decode (batch, context), attention_prefill (sequences, prompt
length), every other stage (tokens or sequences, 0)."""

from __future__ import annotations

import math

POW2 = [2**i for i in range(16)]  # 1 .. 32768
TILE_ROWS = 128  # rows of a GEMM tile: expert time is a staircase in the rows each expert gets
# Token counts for the expert stages: every count to 8 (the number of non-empty queues changes with each
# token there), then steps of 1.33x-1.5x (powers of 2 and 1.5x them), and both sides of the engine's
# switches between grouped and dense experts (Mixtral 3|4 and Qwen3-30B-A3B 15|16 tokens, 256|257 for both).
EXPERT_TOKENS = sorted({*range(1, 9), 15, 257} | {m * 2**i for m in (2, 3) for i in range(2, 14)})
# Held out: 1.25x and 1.75x a power of two, between the grid points (and never across a switch).
EXPERT_HELDOUT = sorted({m * 2**i for m in (5, 7) for i in range(1, 12)})
# Decode sequences for the engine's `embed` (its pass start: the layout's copy, then the token gather), with
# both sides of two steps: the gather's kernel changes after 16 tokens (8.3 us at 16, 2.2 at 32, H200), and
# from 15 sequences on (a layout copy over 1 KiB: 72 bytes a sequence) the gather waits 4-12 us longer for
# the copy (H200, eighth calibration run: 8.3 us at 12 sequences, 18 at 16; held out at 12, the powers-of-two
# grid missed by 53%). The second step fits the driver sending small copies inline with its commands and
# larger ones through a copy engine; that is a reading, not a measurement.
EMBED_SEQS = (1, 2, 4, 8, 14, 15, 16, 17, 24, 32, 64)
PREFILL_SEQS = (1, 2, 4, 8, 16, 32)


def after_tiles(rows_per_token: float, skip: set[int], tiles: int = 16, limit: int = 24576) -> set[int]:
    """Token counts one row past each of the first `tiles` tile boundaries (128, 256, ... rows per
    expert): the first point of each step of the staircase. The power-of-two grid points sit on the
    boundaries, the top of each step, so without these a line between two of them runs under the
    whole next step (H200 Mixtral: 1,280 tokens measured 2.42 ms, interpolated 1.91). Boundaries in
    `skip` (held-out points, which the grid cannot hold) get no point past them either: a line from
    just past one to the next grid point would price the boundary itself a whole step too high."""
    out = set()
    for m in range(1, tiles + 1):
        boundary = m * TILE_ROWS / rows_per_token
        after = math.ceil((m * TILE_ROWS + 1) / rows_per_token)
        if after <= limit and not (boundary.is_integer() and int(boundary) in skip):
            out.add(after)
    return out


def _one_d(grid, heldout) -> dict:
    return {"grid": [(t, 0) for t in sorted(grid)], "heldout": [(t, 0) for t in heldout]}


def _prefill() -> dict:
    """The prefill attention stages' points (prompts x prompt length), one grid for all three, so that they compare
    point for point; prompts to 32: an LS prefill filled with BE prompts holds up to max_batch_size (32) of them."""
    return {"grid": [(n, p) for n in PREFILL_SEQS for p in (32, 64, 128, 256, 512, 1024, 2048)],
            "heldout": [(n, p) for n in (3, 6, 12, 24) for p in (96, 384, 1536)]}


def grids_for(num_experts: int, top_k: int) -> dict:
    """The grids of a model with `num_experts` experts, `top_k` per token (the calibration's balanced
    routing gives each expert tokens * top_k / num_experts rows; one expert alone gets every token)."""
    heldout = set(EXPERT_HELDOUT)
    expert = (set(EXPERT_TOKENS) | after_tiles(1.0, heldout)) - heldout
    layer = (set(EXPERT_TOKENS) | after_tiles(top_k / num_experts, heldout)) - heldout
    return {
        "attention_decode": {
            "grid": [(b, c) for b in (1, 2, 4, 8, 16, 32, 64) for c in (128, 256, 512, 1024, 2048, 4096)],
            "heldout": [(b, c) for b in (3, 12, 48) for c in (384, 1536, 3072)],
        },
        "attention_prefill": _prefill(),
        "attention_prefill_varlen": _prefill(),  # the engine's unpadded prompts (engine.varlen_prefill)
        "attention_prefill_lean": _prefill(),  # and with the pass's rotary tables (engine.lean_attention)
        "router": _one_d(POW2, [3, 24, 96, 384, 1536, 6144, 24576]),
        "expert": _one_d(expert, EXPERT_HELDOUT),
        "experts_layer": _one_d(layer, EXPERT_HELDOUT),
        "lm_head": _one_d(POW2[:9], [3, 12, 48, 192]),
        "embed": _one_d(EMBED_SEQS, [3, 12, 48]),
        # whole layers (calibrate.check compares them with the simulator's composition); the simulator reads
        # layer_decode's host time, never layer_prefill
        # every batch to 8: HF's layer at batch 5 sat above both neighbours in every run (fifth run: 15.6%
        # over the line on the H200, 14.0% on the H100), a kernel choice, not noise
        "layer_decode": {"grid": [(b, 512) for b in (*range(1, 9), 12, 16, 24, 32, 48, 64)],
                         "heldout": [(b, 512) for b in (10, 20, 28, 40, 56)]},
        "layer_prefill": {"grid": [(n, p) for n in (1, 2, 4, 8, 16, 32) for p in (32, 128, 512, 1024)],
                          "heldout": [(n, p) for n in (3, 6, 12) for p in (64, 256, 768)]},
    }


GRIDS = grids_for(8, 2)  # Mixtral-8x7B's

PASS_BATCHES = (1, 8, 32)  # decode passes (whole model and 1-/2-layer) at this context
# the calibration model's graph passes also at the dense buckets the engine pads 9-24 sequences to (real.graphs):
# the simulator's replayed-layer fix interpolates between these batches (serving, H100 Qwen3: bucket 16 priced 7% low)
GRAPH_PASS_BATCHES = (1, 8, 16, 24, 32)
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
