"""Packing: a batch's new tokens as one [T, D] tensor, and the padded views attention needs.

Built once per pass (all layers reuse it) from host-side lengths, so no device sync is needed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from real.sequence import Sequence


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences attended together in one padded SDPA call. B = sequences, Q = max new tokens,
    K = max context."""

    rows: torch.Tensor  # [B, Q] packed row of each (sequence, query) slot; padding repeats the last row
    valid: torch.Tensor  # [B, Q] True for real query rows
    valid_flat: torch.Tensor  # [N] index of each real query in the flattened [B*Q] (integer: no device sync)
    valid_rows: torch.Tensor  # [N] its packed row
    positions: torch.Tensor  # [B, Q] absolute positions
    slots: torch.Tensor  # [B] KV slot of each sequence
    write_slot: torch.Tensor  # [N] slot of each real new token (N = valid.sum())
    write_pos: torch.Tensor  # [N] its position
    mask: torch.Tensor  # [B, 1, Q, K] bool: query may see key
    num_keys: int


@dataclass(frozen=True)
class Layout:
    num_tokens: int
    last_rows: torch.Tensor  # [S] packed row of each sequence's last new token
    groups: tuple[AttentionGroup, ...]


def build_layout(seqs: list[Sequence], device) -> Layout:
    """Decode sequences (one new token) and prefill sequences are padded separately."""
    offsets, total = [], 0
    for seq in seqs:
        offsets.append(total)
        total += seq.num_new
    groups = []
    for is_decode in (True, False):
        members = [i for i, s in enumerate(seqs) if (s.num_new == 1) == is_decode]
        if members:
            groups.append(_group([seqs[i] for i in members], [offsets[i] for i in members], device))
    last = torch.tensor([o + s.num_new - 1 for o, s in zip(offsets, seqs)], device=device)
    return Layout(total, last, tuple(groups))


def _group(seqs: list[Sequence], offsets: list[int], device) -> AttentionGroup:
    q_len = max(s.num_new for s in seqs)
    num_keys = max(s.num_cached + s.num_new for s in seqs)
    q = torch.arange(q_len)
    n_new = torch.tensor([s.num_new for s in seqs])[:, None]  # [B, 1]
    start = torch.tensor([s.num_cached for s in seqs])[:, None]
    q_clamped = torch.minimum(q[None, :], n_new - 1)  # padding repeats the last real query
    positions = start + q_clamped  # [B, Q]
    rows = torch.tensor(offsets)[:, None] + q_clamped
    valid = q[None, :] < n_new
    slots = torch.tensor([s.slot for s in seqs])
    mask = torch.arange(num_keys)[None, None, :] <= positions[:, :, None]  # [B, Q, K]
    return AttentionGroup(
        rows=rows.to(device), valid=valid.to(device), positions=positions.to(device), slots=slots.to(device),
        valid_flat=valid.flatten().nonzero().squeeze(1).to(device), valid_rows=rows[valid].to(device),
        write_slot=slots[:, None].expand_as(valid)[valid].to(device), write_pos=positions[valid].to(device),
        mask=mask[:, None].to(device), num_keys=num_keys,
    )
