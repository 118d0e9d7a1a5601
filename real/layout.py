"""Packing: a batch's new tokens as one [T, D] tensor, and the padded views attention needs.

Built once per pass (all layers reuse it) from host-side lengths, so no device sync is needed.
Masks are not stored: attention derives them on the device from positions (key <= query position),
which also makes them cheap to rebuild inside a CUDA graph.

Shapes: T = packed new tokens, B = sequences of a group, Q = padded queries, N = real queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch

from real.sequence import Sequence


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences attended together in one padded SDPA call (decode and prefill are grouped apart)."""

    rows: torch.Tensor  # [B, Q] packed row of each (sequence, query); padding repeats the last real query
    positions: torch.Tensor  # [B, Q] absolute position of each query
    slots: torch.Tensor  # [B] KV slot of each sequence
    valid_flat: torch.Tensor  # [N] index of each real query in the flattened [B*Q]
    valid_rows: torch.Tensor  # [N] its packed row
    num_keys: int  # K: keys read per sequence (>= the longest context of the group)


@dataclass(frozen=True)
class Layout:
    num_tokens: int
    positions: torch.Tensor  # [T] position of each packed token
    slots: torch.Tensor  # [T] KV slot of each packed token
    last_rows: torch.Tensor  # [S] packed row of each sequence's last new token
    groups: tuple[AttentionGroup, ...]


def build_layout(seqs: list[Sequence], device) -> Layout:
    """Decode sequences (one new token) and prefill sequences are padded separately."""
    offsets = list(accumulate((s.num_new for s in seqs), initial=0))[:-1]
    groups = []
    for is_decode in (True, False):
        members = [i for i, s in enumerate(seqs) if (s.num_new == 1) == is_decode]
        if members:
            groups.append(_group([seqs[i] for i in members], [offsets[i] for i in members]))
    positions = [p for s in seqs for p in range(s.num_cached, s.num_cached + s.num_new)]
    slots = [s.slot for s in seqs for _ in range(s.num_new)]
    last = [o + s.num_new - 1 for o, s in zip(offsets, seqs)]
    host = [torch.tensor(positions), torch.tensor(slots), torch.tensor(last)] + [t for g in groups for t in g[:-1]]
    dev = to_device(host, device)
    groups = [AttentionGroup(*dev[3 + 5 * i: 8 + 5 * i], num_keys=g[-1]) for i, g in enumerate(groups)]
    return Layout(len(positions), dev[0], dev[1], dev[2], tuple(groups))


def to_device(host: list[torch.Tensor], device) -> list[torch.Tensor]:
    """One asynchronous host-to-device copy (from pinned memory) for many small index tensors:
    a pageable copy would wait for the GPU to drain, a hidden sync at every merge or pass start."""
    flat = torch.cat([t.flatten().long() for t in host])
    if torch.device(device).type == "cuda":
        flat = flat.pin_memory()
    flat = flat.to(device, non_blocking=True)
    return [chunk.view(t.shape) for chunk, t in zip(flat.split([t.numel() for t in host]), host)]


def _group(seqs: list[Sequence], offsets: list[int]) -> tuple:
    """Host tensors of an AttentionGroup (rows, positions, slots, valid_flat, valid_rows) and num_keys."""
    q = torch.arange(max(s.num_new for s in seqs))
    n_new = torch.tensor([s.num_new for s in seqs])[:, None]  # [B, 1]
    start = torch.tensor([s.num_cached for s in seqs])[:, None]
    q_clamped = torch.minimum(q[None, :], n_new - 1)  # padding repeats the last real query
    rows = torch.tensor(offsets)[:, None] + q_clamped  # [B, Q]
    valid = q[None, :] < n_new
    slots = torch.tensor([s.slot for s in seqs])
    num_keys = max(s.num_cached + s.num_new for s in seqs)
    return rows, start + q_clamped, slots, valid.flatten().nonzero().squeeze(1), rows[valid], num_keys
