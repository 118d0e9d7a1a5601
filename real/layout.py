"""Packing: a batch's new tokens as one [T, D] tensor, and the padded views attention needs.

Built once per pass (all layers reuse it) from host-side lengths, so no device sync is needed.
Masks are not stored: attention derives them on the device from positions (key <= query position),
which also makes them cheap to rebuild inside a CUDA graph.

Shapes: T = packed new tokens, B = sequences of a group, Q = padded queries, N = real queries.

With `varlen`, the fresh prompts of a batch (no cached keys: a new request's prefill) form a `PackedGroup`
instead: attended over their own new keys by variable-length causal attention (real.stages), so the host
builds and sends O(B) numbers for them instead of padded [B, Q] index arrays, and the device neither pads
nor reads their keys back from the KV pool.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
class PackedGroup:
    """Fresh prompts (nothing cached) attended over their own new keys, unpadded (`Layout.varlen`)."""

    span: tuple[int, int] | None  # their packed rows are lo..hi-1 (None: see `rows`)
    rows: torch.Tensor | None  # [N] their packed rows, where they are not one span (decode rows between them)
    cu_lengths: torch.Tensor  # [B + 1] int32: where each sequence's tokens start among the N, then N
    longest: int  # tokens of the longest prompt

    @property
    def index(self) -> slice | torch.Tensor:
        """What selects the group's rows of a packed [T, ...] tensor."""
        return slice(*self.span) if self.rows is None else self.rows


@dataclass(frozen=True)
class Layout:
    num_tokens: int
    positions: torch.Tensor  # [T] position of each packed token
    slots: torch.Tensor  # [T] KV slot of each packed token
    last_rows: torch.Tensor  # [S] packed row of each sequence's last new token
    groups: tuple[AttentionGroup | PackedGroup, ...]
    token_ids: torch.Tensor | None = None  # [T] the new tokens themselves (a pass's start embeds them)
    varlen: bool = False  # fresh prompts as a PackedGroup (kept when batches merge or split: real.batch)


def build_layout(seqs: list[Sequence], device, ids: np.ndarray | None = None,
                 staging: PinnedStaging | None = None, dry: bool = False, varlen: bool = False) -> Layout:
    """Decode sequences (one new token) and prefill sequences are padded separately. Built with numpy
    and sent in one copy (with `ids`, the packed new token ids too: real.pending.input_ids): this sits
    between an LS arrival and its first kernel (torch's per-op dispatch on small host tensors cost about 1 ms
    per batch; a second copy for the ids, 0.13 ms of host time per pass start, H200). `staging`: the engine's pinned buffers (`to_device`).
    `dry`: the same host work, but the device tensors are views of a scratch block, nothing copied (a rehearsal:
    real.engine.Engine.rehearse). `varlen`: fresh prompts as a PackedGroup (module docstring)."""
    if len(seqs) == 1:  # an LS arrival's prefill, mostly: the same arrays with a few numpy calls
        host, groups, total = _single(seqs[0], varlen)
    elif varlen and (fresh := _fresh(seqs)) is not None:  # an LS prefill filled with BE prefills, mostly
        host, groups, total = fresh
    else:
        host, groups, total = _packed(seqs, varlen)
    if ids is not None:
        host.append(ids)
    starttrace.stamp("layout")
    dev = to_device(host, device, staging, dry)
    starttrace.stamp("copy")
    return Layout(total, dev[0], dev[1], dev[2], _device_groups(groups, dev), dev[-1] if ids is not None else None,
                  varlen)


def _device_groups(groups: list[tuple], dev: list[torch.Tensor]) -> tuple[AttentionGroup | PackedGroup, ...]:
    """The groups over their arrays' device chunks (after the layout's first three), in `_packed`'s order."""
    out, i = [], 3
    for g in groups:
        if isinstance(g, _HostPacked):
            cu = dev[i].view(torch.int32)[: g.num_seqs + 1]  # int32 pairs sent as int64 (`_cu_lengths`)
            rows = dev[i + 1] if g.span is None else None
            out.append(PackedGroup(g.span, rows, cu, g.longest))
            i += 1 if g.span is not None else 2
        else:
            out.append(AttentionGroup(*dev[i: i + 5], num_keys=g[-1]))
            i += 5
    return tuple(out)


@dataclass(frozen=True)
class _HostPacked:
    """A PackedGroup on the host: its arrays (cu_lengths, and rows unless they are one span) go in the copy."""

    num_seqs: int
    span: tuple[int, int] | None
    longest: int


def _cu_lengths(new: np.ndarray) -> np.ndarray:
    """[0, n_0, n_0 + n_1, ...] as int32 (what flash attention takes), packed in pairs into int64s so that it
    travels in the layout's one int64 copy; the device side views the chunk as int32 again."""
    cu = np.zeros((len(new) + 2) // 2 * 2, dtype=np.int32)  # B + 1 rounded up to even: whole int64s
    np.cumsum(new, out=cu[1: len(new) + 1])
    return cu.view(np.int64)


def _host_packed(new: np.ndarray, offsets: np.ndarray, members) -> tuple[list[np.ndarray], _HostPacked]:
    """A PackedGroup's host arrays for the fresh prompts `members` (a mask over the batch, or all of it)."""
    picked = np.flatnonzero(members) if isinstance(members, np.ndarray) else np.arange(len(new))
    lengths = new[picked]
    lo, hi = int(offsets[picked[0]]), int(offsets[picked[-1]] + lengths[-1])
    group = _HostPacked(len(picked), None, int(lengths.max()))
    if hi - lo == int(lengths.sum()):  # no decode rows between them
        return [_cu_lengths(lengths)], replace(group, span=(lo, hi))
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(offsets[picked] - starts, lengths) + np.arange(int(lengths.sum()))
    return [_cu_lengths(lengths), rows], group


def _single(seq: Sequence, varlen: bool = False) -> tuple[list[np.ndarray], list, int]:
    """`_packed` for one sequence: one group, no padding."""
    new, cached = seq.num_new, seq.num_cached
    rows = np.arange(new)
    positions = rows + cached
    slots = np.full(1, seq.slot)
    head = [positions, np.repeat(slots, new), rows[-1:]]
    if varlen and cached == 0 and new > 1:  # cu_lengths [0, new] as one int64 (`_cu_lengths`)
        return [*head, np.array([0, new], dtype=np.int32).view(np.int64)], [_HostPacked(1, (0, new), new)], new
    group = (rows[None], positions[None], slots, rows, rows, cached + new)
    return [*head, *group[:-1]], [group], new


def _fresh(seqs: list[Sequence]) -> tuple[list[np.ndarray], list, int] | None:
    """`_packed(seqs, varlen=True)` where every sequence is a fresh prompt of two or more tokens (one PackedGroup
    over all rows), in half the numpy calls: it sits between an LS arrival and its first kernel, and on the serving
    host, cold, each call costs several µs. None for any other batch."""
    if any(s.num_cached for s in seqs):
        return None
    new = np.fromiter([len(s.token_ids) for s in seqs], np.int64, len(seqs))
    if new.min() < 2:  # a one-token prompt is attended with the decode rows (`_packed`)
        return None
    ends = np.cumsum(new)
    total = int(ends[-1])
    cu = np.zeros((len(new) + 2) // 2 * 2, dtype=np.int32)  # as `_cu_lengths`
    cu[1: len(new) + 1] = ends
    slots = np.fromiter([s.slot for s in seqs], np.int64, len(seqs))
    host = [np.arange(total) - np.repeat(ends - new, new), np.repeat(slots, new), ends - 1, cu.view(np.int64)]
    return host, [_HostPacked(len(seqs), (0, total), int(new.max()))], total


@dataclass(slots=True)
class PackedRows:
    """Host arrays of a batch's packed new tokens, sequence by sequence (S = sequences, T = tokens)."""

    new: np.ndarray  # [S] new tokens of each sequence
    cached: np.ndarray  # [S] its tokens already in the KV pool
    slot: np.ndarray  # [S] its KV slot
    ends: np.ndarray  # [S] one past its last packed row
    offsets: np.ndarray  # [S] its first packed row
    total: int  # T
    positions: np.ndarray  # [T] each token's position
    slots: np.ndarray  # [T] each token's KV slot


def packed_rows(seqs: list[Sequence]) -> PackedRows:
    """Every sequence's `num_new` tokens in batch order (a layout's rows; real.spans' too). On the start path of
    every pass: a plain dataclass, a few numpy calls."""
    meta = np.array([(len(s.token_ids), s.num_cached, s.slot) for s in seqs], dtype=np.int64).reshape(-1, 3)
    cached, slot = meta[:, 1], meta[:, 2]
    new = meta[:, 0] - cached
    ends = np.cumsum(new)
    offsets = ends - new
    total = int(ends[-1]) if len(ends) else 0
    if len(seqs) == total:  # decode only: one new token each
        return PackedRows(new, cached, slot, ends, offsets, total, cached, slot)
    positions = np.repeat(cached - offsets, new) + np.arange(total)  # cached_i + (row - offset_i)
    return PackedRows(new, cached, slot, ends, offsets, total, positions, np.repeat(slot, new))


def _packed(seqs: list[Sequence], varlen: bool = False) -> tuple[list[np.ndarray], list, int]:
    """Host arrays (positions, slots, last rows, then each group's), the groups, and the token count."""
    rows = packed_rows(seqs)
    new, cached, slot, offsets, total = rows.new, rows.cached, rows.slot, rows.offsets, rows.total
    host = [rows.positions, rows.slots, rows.ends - 1]
    if total == len(seqs):  # decode only (a BE batch's next pass, mostly): `_group`'s arrays with Q = 1
        one = np.arange(total)
        group = (one[:, None], cached[:, None], slot, one, one, int(cached.max()) + 1)
        return [*host, *group[:-1]], [group], total
    groups = []
    decode = new == 1
    for prefill, members in ((False, decode), (True, ~decode)):
        if members.all():
            members = slice(None)
        elif not members.any():
            continue
        if varlen and prefill and not cached[members].any():
            arrays, group = _host_packed(new, offsets, members)
            groups.append(group)
            host.extend(arrays)
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
    sizes = [a.size for a in host]
    total = sum(sizes)
    if staging is not None and total <= staging.capacity:
        flat = staging.rehearse(host, total) if dry else staging.send(host, total)
    else:
        flat = torch.from_numpy(np.concatenate([a.ravel() for a in host]).astype(np.int64, copy=False))
        if torch.device(device).type == "cuda" and not dry:  # dry without staging: host tensors only
            flat = flat.pin_memory().to(device, non_blocking=True)
    return [chunk if a.ndim == 1 else chunk.view(a.shape) for chunk, a in zip(flat.split_with_sizes(sizes), host)]


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
        i = self._take()
        np.concatenate([a.ravel() for a in host], out=self.views[i][:total], casting="unsafe")
        out = self.buffers[i][:total].to(self.device, non_blocking=True)
        self._copied(i)
        return out

    def send_into(self, host: np.ndarray, out: torch.Tensor) -> None:
        """One int64 array into the device tensor `out` of its size (asynchronously, on the current stream)."""
        i = self._take()
        self.views[i][: host.size] = host
        out.copy_(self.buffers[i][: host.size], non_blocking=True)
        self._copied(i)

    def _take(self) -> int:
        """The next buffer, once the copy that last read it has run (16 copies ago: at once, in practice)."""
        i, self.next = self.next, (self.next + 1) % len(self.buffers)
        if self.copied[i] is not None:
            self.copied[i].synchronize()
        return i

    def _copied(self, i: int) -> None:
        if self.copied[i] is None:
            self.copied[i] = torch.cuda.Event()
        self.copied[i].record()

    def rehearse(self, host: list[np.ndarray], total: int) -> torch.Tensor:
        """`send`'s host work without the copy: the arrays into the host scratch, and the device scratch's first
        `total` elements (stale values) in place of the copy's result."""
        np.concatenate([a.ravel() for a in host], out=self.scratch[:total], casting="unsafe")
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
