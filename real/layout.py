"""Packing: a batch's new tokens as one [T, D] tensor, and the padded views attention needs.

Built once per pass (all layers reuse it) from host-side lengths, so no device sync is needed.
Masks are not stored: attention derives them on the device from positions (key <= query position),
which also makes them cheap to rebuild inside a CUDA graph.

Shapes: T = packed new tokens, B = sequences of a group, Q = padded queries, N = real queries.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
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
    """Decode sequences (one new token) and prefill sequences are padded separately. Built with numpy
    and sent in one copy: this sits between an LS arrival and its first kernel (torch's per-op dispatch
    on small host tensors cost about 1 ms per batch)."""
    new = np.array([s.num_new for s in seqs])
    cached = np.array([s.num_cached for s in seqs])
    slot = np.array([s.slot for s in seqs])
    offsets = np.cumsum(new) - new
    positions = np.repeat(cached - offsets, new) + np.arange(new.sum())  # cached_i + (row - offset_i)
    host = [positions, np.repeat(slot, new), offsets + new - 1]
    groups = []
    for is_decode in (True, False):
        members = (new == 1) == is_decode
        if members.any():
            groups.append(_group(new[members], cached[members], slot[members], offsets[members]))
            host.extend(groups[-1][:-1])
    dev = to_device(host, device)
    groups = [AttentionGroup(*dev[3 + 5 * i: 8 + 5 * i], num_keys=g[-1]) for i, g in enumerate(groups)]
    return Layout(len(positions), dev[0], dev[1], dev[2], tuple(groups))


def to_device(host: list[np.ndarray], device) -> list[torch.Tensor]:
    """One asynchronous host-to-device copy (from pinned memory) for many small index arrays:
    a pageable copy would wait for the GPU to drain, a hidden sync at every merge or pass start."""
    flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in host]))
    if torch.device(device).type == "cuda":
        flat = flat.pin_memory().to(device, non_blocking=True)
    return [chunk.view(np.shape(a)) for chunk, a in zip(flat.split([np.size(a) for a in host]), host)]


def _group(new: np.ndarray, cached: np.ndarray, slots: np.ndarray, offsets: np.ndarray) -> tuple:
    """Host arrays of an AttentionGroup (rows, positions, slots, valid_flat, valid_rows) and num_keys."""
    q = np.arange(new.max())
    q_clamped = np.minimum(q[None, :], new[:, None] - 1)  # padding repeats the last real query
    rows = offsets[:, None] + q_clamped  # [B, Q]
    valid = q[None, :] < new[:, None]
    return rows, cached[:, None] + q_clamped, slots, np.flatnonzero(valid), rows[valid], int((cached + new).max())
