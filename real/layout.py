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

from real import starttrace
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
    token_ids: torch.Tensor | None = None  # [T] the new tokens themselves (a pass's start embeds them)


def build_layout(seqs: list[Sequence], device, ids: np.ndarray | None = None,
                 staging: PinnedStaging | None = None, dry: bool = False) -> Layout:
    """Decode sequences (one new token) and prefill sequences are padded separately. Built with numpy
    and sent in one copy (with `ids`, the packed new token ids too: real.pending.input_ids): this sits
    between an LS arrival and its first kernel (torch's per-op dispatch on small host tensors cost about 1 ms
    per batch; a second copy for the ids, 0.13 ms of host time per pass start, H200). `staging`: the engine's pinned buffers (`to_device`).
    `dry`: the same host work, but the device tensors are views of a scratch block, nothing copied (a rehearsal:
    real.engine.Engine.rehearse)."""
    if len(seqs) == 1:  # an LS arrival's prefill, mostly: the same arrays with a few numpy calls
        host, groups, total = _single(seqs[0])
    else:
        host, groups, total = _packed(seqs)
    if ids is not None:
        host.append(ids)
    starttrace.stamp("layout")
    dev = to_device(host, device, staging, dry)
    starttrace.stamp("copy")
    layout_groups = tuple(AttentionGroup(*dev[3 + 5 * i: 8 + 5 * i], num_keys=g[-1]) for i, g in enumerate(groups))
    return Layout(total, dev[0], dev[1], dev[2], layout_groups, dev[-1] if ids is not None else None)


def _single(seq: Sequence) -> tuple[list[np.ndarray], list[tuple], int]:
    """`_packed` for one sequence: one group, no padding."""
    new, cached = seq.num_new, seq.num_cached
    rows = np.arange(new)
    positions = rows + cached
    slots = np.full(1, seq.slot)
    group = (rows[None], positions[None], slots, rows, rows, cached + new)
    return [positions, np.repeat(slots, new), rows[-1:], *group[:-1]], [group], new


def _packed(seqs: list[Sequence]) -> tuple[list[np.ndarray], list[tuple], int]:
    """Host arrays (positions, slots, last rows, then each group's), the groups, and the token count."""
    meta = np.array([(len(s.token_ids), s.num_cached, s.slot) for s in seqs], dtype=np.int64).reshape(-1, 3)
    cached, slot = meta[:, 1], meta[:, 2]
    new = meta[:, 0] - cached
    ends = np.cumsum(new)
    offsets = ends - new
    total = int(ends[-1]) if len(ends) else 0
    if len(seqs) == total:  # decode only: one new token each
        positions, token_slots = cached, slot
    else:
        positions = np.repeat(cached - offsets, new) + np.arange(total)  # cached_i + (row - offset_i)
        token_slots = np.repeat(slot, new)
    host = [positions, token_slots, ends - 1]
    groups = []
    decode = new == 1
    for members in (decode, ~decode):
        if members.all():
            members = slice(None)
        elif not members.any():
            continue
        groups.append(_group(new[members], cached[members], slot[members], offsets[members]))
        host.extend(groups[-1][:-1])
    return host, groups, total


def to_device(host: list[np.ndarray], device, staging: PinnedStaging | None = None,
              dry: bool = False) -> list[torch.Tensor]:
    """One asynchronous host-to-device copy (from pinned memory) for many small index arrays:
    a pageable copy would wait for the GPU to drain, a hidden sync at every merge or pass start.
    Through `staging` where given and large enough, else from a block pinned for this copy.
    `dry`: no copy; views of `staging`'s scratch block (`PinnedStaging.rehearse`), or without it host tensors."""
    sizes = [np.size(a) for a in host]
    total = sum(sizes)
    if staging is not None and total <= staging.capacity:
        flat = staging.rehearse(host, total) if dry else staging.send(host, total)
    else:
        flat = torch.from_numpy(np.concatenate([np.ravel(a) for a in host]).astype(np.int64, copy=False))
        if torch.device(device).type == "cuda" and not dry:  # dry without staging: host tensors only
            flat = flat.pin_memory().to(device, non_blocking=True)
    return [chunk if np.ndim(a) == 1 else chunk.view(np.shape(a)) for chunk, a in zip(flat.split(sizes), host)]


@dataclass
class PinnedStaging:
    """A ring of pinned host buffers for `to_device` (one per engine), each reused once the copy that last
    read it has run (an event per buffer). Torch's pinned-memory pool costs about 47 µs per `pin_memory()` on
    the H200's host (p50), and up to 3.5 ms when it has to pin a new block (`real.hostprof`, round 7): both on
    the way from an LS arrival to its first kernel."""

    device: torch.device
    buffers: list[torch.Tensor]
    views: list[np.ndarray]
    copied: list[torch.cuda.Event | None]
    scratch: np.ndarray | None = None  # `rehearse`'s: a host buffer and a device block, never copied
    scratch_device: torch.Tensor | None = None
    next: int = 0

    @classmethod
    def allocate(cls, device: torch.device, elements: int = 1 << 17, count: int = 16) -> PinnedStaging:
        """`count` buffers of `elements` int64s (default 16 x 1 MiB: layouts of up to ~16k prefill tokens)."""
        buffers = [torch.empty(elements, dtype=torch.int64, pin_memory=True) for _ in range(count)]
        return cls(device, buffers, [b.numpy() for b in buffers], [None] * count, np.empty(elements, np.int64),
                   torch.zeros(elements, dtype=torch.int64, device=device))

    @property
    def capacity(self) -> int:
        return self.buffers[0].numel()

    def send(self, host: list[np.ndarray], total: int) -> torch.Tensor:
        """The arrays, concatenated as int64, on the device (asynchronously, on the current stream)."""
        i, self.next = self.next, (self.next + 1) % len(self.buffers)
        if self.copied[i] is not None:
            self.copied[i].synchronize()  # the buffer's last copy has run (16 copies ago: at once, in practice)
        np.concatenate([np.ravel(a) for a in host], out=self.views[i][:total], casting="unsafe")
        out = self.buffers[i][:total].to(self.device, non_blocking=True)
        if self.copied[i] is None:
            self.copied[i] = torch.cuda.Event()
        self.copied[i].record()
        return out

    def rehearse(self, host: list[np.ndarray], total: int) -> torch.Tensor:
        """`send`'s host work without the copy: the arrays into the host scratch, and the device scratch's first
        `total` elements (stale values) in place of the copy's result."""
        np.concatenate([np.ravel(a) for a in host], out=self.scratch[:total], casting="unsafe")
        return self.scratch_device[:total]


def _group(new: np.ndarray, cached: np.ndarray, slots: np.ndarray, offsets: np.ndarray) -> tuple:
    """Host arrays of an AttentionGroup (rows, positions, slots, valid_flat, valid_rows) and num_keys. The real
    queries' indices come from the lengths (O(N)), not from a [B, Q] mask: a 32-prompt LS start with its BE fill
    pads to B x Q of about 30k entries, and each pass over them sits between the LS arrival and its first kernel."""
    width = int(new.max())
    q_clamped = np.minimum(np.arange(width)[None, :], new[:, None] - 1)  # padding repeats the last real query
    rows = offsets[:, None] + q_clamped  # [B, Q]
    starts = np.cumsum(new) - new  # each sequence's first real query among the group's N
    real = np.arange(int(new.sum()))
    valid_flat = np.repeat(np.arange(len(new)) * width - starts, new) + real  # b * Q + q
    valid_rows = np.repeat(offsets - starts, new) + real  # offset_b + q: its packed row
    return rows, cached[:, None] + q_clamped, slots, valid_flat, valid_rows, int((cached + new).max())
