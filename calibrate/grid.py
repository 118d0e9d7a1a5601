"""The measurement grids: a main grid the simulator interpolates over, and an offset held-out grid
that checks the interpolation error."""

from __future__ import annotations

GRIDS = {
    "attention_decode": {  # (batch, context)
        "grid": [(b, c) for b in (1, 2, 4, 8, 16, 32, 64) for c in (128, 256, 512, 1024, 2048)],
        "heldout": [(b, c) for b in (3, 12, 24, 48) for c in (384, 768, 1536)],
    },
    "attention_prefill": {  # (sequences, prompt length)
        "grid": [(n, p) for n in (1, 2, 4, 8, 16, 32) for p in (32, 128, 512, 1024) if n * p <= 16384],
        "heldout": [(n, p) for n in (3, 12) for p in (64, 256, 768)],
    },
    "router": {"grid": [(t, 0) for t in (1, 8, 32, 128, 512, 2048, 8192, 16384)],
               "heldout": [(t, 0) for t in (4, 64, 1024, 4096)]},
    "expert": {"grid": [(t, 0) for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)],
               "heldout": [(t, 0) for t in (3, 12, 48, 192, 768, 3072)]},
    "experts_layer": {"grid": [(t, 0) for t in (1, 8, 32, 128, 512, 2048, 8192)],
                      "heldout": [(t, 0) for t in (4, 64, 1024)]},
    "lm_head": {"grid": [(n, 0) for n in (1, 2, 4, 8, 16, 32, 64, 128)],
                "heldout": [(n, 0) for n in (3, 12, 48)]},
    "embed": {"grid": [(t, 0) for t in (1, 8, 32, 128, 512, 2048, 8192, 16384)],
              "heldout": [(t, 0) for t in (4, 64, 1024)]},
}


def small(grids: dict) -> dict:
    """A cut-down grid for CPU smoke tests of the tool itself."""
    return {stage: {split: pts[:3] for split, pts in g.items()} for stage, g in grids.items()}
