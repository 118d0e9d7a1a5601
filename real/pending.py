"""A pass's sampled tokens on their way to the host, so that the host need not wait for them.

The host needs a pass's new tokens only to hand them back to the client: the next pass of the same
sequences can read them where the LM head wrote them, on the device. Waiting for them (`.tolist()` after the
LM head) held the host deaf to arrivals until the pass's last layer had run: on the H200 the largest LS
reactions (6-19 ms in serving round 7 and the prewarm A/B) were arrivals during a large prefill's last layer
whose LM head the host was waiting on (with this module: qllm_catchup's pooled p99 7.06 -> 3.96 ms, H200,
results/real/h200_defer_ab). Instead, the LM head's ids are copied to pinned memory behind an event;
each sequence holds a placeholder until the event has passed, and a pass that feeds a placeholder takes the
id from the device (`input_ids`, `fill`) after its stream has waited for that event (a device-side wait).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from real.sequence import Sequence

PLACEHOLDER = -1  # a token id not yet on the host (`Sequence.pending` says where it is)


@dataclass(eq=False)
class PendingTokens:
    """The ids one LM head sampled for `seqs` (row i for seqs[i], which holds it at `indices[i]`)."""

    device_ids: torch.Tensor  # [S] int64, where the LM head wrote them
    host: torch.Tensor  # [S] int64, pinned on a GPU: filled once `ready` has passed
    ready: torch.cuda.Event | None  # None on the CPU, where the ids exist once issued
    seqs: list[Sequence]
    indices: list[int]  # position of each sequence's placeholder in its token_ids
    resolved: bool = False

    @classmethod
    def issue(cls, ids: torch.Tensor, seqs: list[Sequence], ring: HostRing | None = None) -> PendingTokens:
        """Start the ids' copy to the host (on a GPU: into a buffer of `ring`, or one pinned for it; on the
        CPU the ids are there already) and give each sequence its placeholder; nothing here waits for the
        device."""
        host, ready = ids, None
        if ids.device.type == "cuda":
            host = ring.take(len(seqs)) if ring is not None else torch.empty(len(seqs), dtype=torch.int64,
                                                                               pin_memory=True)
            host.copy_(ids, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        pending = cls(ids, host, ready, list(seqs), [len(s.token_ids) for s in seqs])
        if ring is not None and ready is not None:
            ring.claim(pending)
        for row, seq in enumerate(seqs):
            seq.num_cached = len(seq.token_ids)
            seq.token_ids.append(PLACEHOLDER)
            seq.pending = (pending, row)
        return pending

    def poll(self) -> bool:
        """Resolve if the ids have reached the host; True once resolved."""
        if not self.resolved and (self.ready is None or self.ready.query()):
            self._fill()
        return self.resolved

    def resolve(self) -> list[int]:
        """Wait for the ids (the host blocks) and put them in place of the placeholders."""
        if not self.resolved:
            if self.ready is not None:
                self.ready.synchronize()
            self._fill()
        return [seq.token_ids[i] for seq, i in zip(self.seqs, self.indices)]

    def _fill(self) -> None:
        for seq, index, token in zip(self.seqs, self.indices, self.host.tolist()):
            seq.token_ids[index] = int(token)
            if seq.pending is not None and seq.pending[0] is self:
                seq.pending = None
        self.resolved = True


def input_ids(seqs: list[Sequence]) -> tuple[np.ndarray, list[PendingTokens]]:
    """The tokens each sequence feeds next, packed; a placeholder becomes -(1 + its row in the
    concatenation of the unresolved `PendingTokens` returned, in that order), for `fill`."""
    pendings: dict[PendingTokens, int] = {}  # -> offset of its rows
    size = 0
    chunks = []
    arrays = False
    for seq in seqs:
        if seq.num_cached == 0 and seq.prompt is not None and len(seq.prompt) == len(seq.token_ids):
            chunks.append(seq.prompt)  # a prompt, made ready before this pass (real.sequence)
            arrays = True
            continue
        new = seq.token_ids[seq.num_cached:]
        if seq.pending is not None and not seq.pending[0].resolved:
            pending, row = seq.pending
            if pending not in pendings:
                pendings[pending] = size
                size += len(pending.seqs)
            new = [*new[:-1], -(1 + pendings[pending] + row)]  # a placeholder is always the last token
        chunks.append(new)
    if arrays:
        packed = [c if isinstance(c, np.ndarray) else np.array(c, dtype=np.int64) for c in chunks]
        return np.concatenate(packed), list(pendings)
    return np.fromiter(chain.from_iterable(chunks), dtype=np.int64), list(pendings)


def fill(ids: torch.Tensor, pendings: list[PendingTokens]) -> torch.Tensor:
    """`ids` (from `input_ids`, on the device) with each placeholder replaced by its sampled id; the current
    stream first waits (on the device) for the LM heads that wrote them."""
    if not pendings:
        return ids
    tables = [on_this_stream(pending) for pending in pendings]
    table = tables[0] if len(tables) == 1 else torch.cat(tables)
    return torch.where(ids >= 0, ids, table[(-1 - ids).clamp(min=0)])


def on_this_stream(pending: PendingTokens) -> torch.Tensor:
    """The sampled ids on the device, for the current stream to read: it first waits (on the device) for the LM
    head that wrote them."""
    ids = pending.device_ids
    if ids.device.type == "cuda":
        wait_for([pending])
        ids.record_stream(torch.cuda.current_stream(ids.device))  # read here: not to be reused by its own stream before
    return ids


def wait_for(pendings: list[PendingTokens]) -> None:
    """The current stream waits (on the device, the host goes on) for the passes whose LM heads sampled `pendings`:
    what follows reuses memory those passes read (a KV slot: real.server's `slot_fences`). Nothing on the CPU."""
    for pending in pendings:
        if pending.ready is not None:
            torch.cuda.current_stream(pending.device_ids.device).wait_event(pending.ready)


@dataclass
class HostRing:
    """Pinned host buffers for `PendingTokens.host`, reused in turn: pinning a new one cost 47 µs to 3.5 ms
    on the H200's host (real.layout.PinnedStaging). A buffer is reused once the ids last copied into it are
    resolved (`count` passes later: at once, in practice)."""

    buffers: list[torch.Tensor]
    users: list[PendingTokens | None] = field(default_factory=list)
    next: int = 0

    @classmethod
    def allocate(cls, size: int, count: int = 64) -> HostRing:
        """`count` buffers of `size` ids (a batch has at most one sequence per KV slot)."""
        buffers = [torch.empty(size, dtype=torch.int64, pin_memory=True) for _ in range(count)]
        return cls(buffers, [None] * count)

    def take(self, size: int) -> torch.Tensor:
        """A pinned buffer of `size` ids, to `claim` for the `PendingTokens` that fills it."""
        if size > self.buffers[0].numel():
            raise ValueError(f"{size} ids exceed the ring's buffers of {self.buffers[0].numel()}")
        user = self.users[self.next]
        if user is not None:
            user.resolve()
        return self.buffers[self.next][:size]

    def claim(self, pending: PendingTokens) -> None:
        self.users[self.next] = pending
        self.next = (self.next + 1) % len(self.buffers)
