"""Where each sequence of a batch sits, as one attention call over the KV pool needs it with static shapes
(real.stages.attend_pool, real.passgraphs): its queries' rows among the batch's packed tokens, the pool rows of its
slot, and how many of those keys it reads. Any mix of fresh prompts, cached prefixes and decodes fits one layout.

A bucket of `num_rows` rows and `num_seqs` sequences pads a batch of T tokens and B sequences: sequences B..num_seqs-1
are empty, and one last sequence holds the padding rows T..num_rows-1 with no keys (flash attention writes 0 for
them). Padding rows have position 0 and the pool's scratch slot, so their keys and values never touch a sequence's.

Shapes: R = bucket rows, N = bucket sequences (the padding sequence is one more).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from real.layout import packed_rows
from real.sequence import Sequence


@dataclass(frozen=True)
class PoolSpans:
    positions: torch.Tensor  # [R] position of each row's token (0: padding)
    slots: torch.Tensor  # [R] KV slot of each row (the scratch slot: padding)
    cu_queries: torch.Tensor  # [N + 2] int32: each sequence's first row, then the padding's, then R
    key_starts: torch.Tensor  # [N + 2] int32: each sequence's first key among the pool's [S * L] rows (last: unused)
    used: torch.Tensor  # [N + 1] int32: keys each sequence reads (its cached and new tokens; 0: empty, padding)
    max_queries: int  # an upper bound of any sequence's rows (R: the padding sequence may hold nearly all)

    @property
    def num_rows(self) -> int:
        return self.positions.shape[0]

    @classmethod
    def over(cls, block: torch.Tensor, num_rows: int, num_seqs: int) -> PoolSpans:
        """Views of a block of `block_size(num_rows, num_seqs)` int64s laid out as `host_spans` writes them."""
        small = block[2 * num_rows:].view(torch.int32)
        n = num_seqs + 2
        return cls(block[:num_rows], block[num_rows: 2 * num_rows], small[:n], small[n: 2 * n], small[2 * n: 3 * n - 1],
                   num_rows)


def block_size(num_rows: int, num_seqs: int) -> int:
    """int64s of a bucket's block: positions and slots, then the int32 arrays in pairs."""
    return 2 * num_rows + -(-(3 * (num_seqs + 2) - 1) // 2)


def host_spans(seqs: list[Sequence], num_rows: int, num_seqs: int, max_len: int, scratch_slot: int) -> np.ndarray:
    """The block of `PoolSpans.over` for `seqs` (rows in their order, each its `num_new` tokens) padded to the
    bucket, built on the host for one copy."""
    rows = packed_rows(seqs)
    total, count = rows.total, len(seqs)
    if total > num_rows or count > num_seqs:
        raise ValueError(f"{count} sequences of {total} tokens exceed a bucket of {num_seqs} and {num_rows}")
    block = np.zeros(block_size(num_rows, num_seqs), dtype=np.int64)
    block[:total] = rows.positions
    block[num_rows: num_rows + total] = rows.slots
    block[num_rows + total: 2 * num_rows] = scratch_slot
    small = block[2 * num_rows:].view(np.int32)
    n = num_seqs + 2
    small[:count] = rows.offsets
    small[count: n - 1] = total  # empty sequences and the padding's start
    small[n - 1] = num_rows
    small[n: n + count] = rows.slot * max_len
    small[n + count: 2 * n] = scratch_slot * max_len
    small[2 * n: 2 * n + count] = rows.cached + rows.new
    return block
