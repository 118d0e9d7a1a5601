"""A decode batch's next pass, derived on the device from its last one: the same sequences, one token further.

A batch that goes on decoding starts a new pass every iteration, and each start sits between the LM head of the
last pass and the first layer of the next, with the host deaf to arrivals: on the H100 a main-stream decode start
took 743 µs p50 from its consult to its first kernel (9-64 sequences, session 18's start traces: the host arrays,
one copy and its device views, the sampled ids filled in on the device, the embedding), and an LS request that
arrived meanwhile waited for it (notices of 0.4-0.8 ms: 8 of the 27 reactions over one in-flight layer to arrivals
that found BE work in sessions 19-20's H100 rounds). Of a pure-decode pass's layout only the positions (one
further) and the key count (one more) change, and its token ids are where the last pass's LM head wrote them: the
next start is one add and the embedding, no host arrays, no copy, no placeholder fill (`Engine.carry_decode`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from real.layout import AttentionGroup, Layout
from real.pending import PendingTokens, on_this_stream
from real.sequence import Sequence


@dataclass(frozen=True, eq=False)
class DecodeCarry:
    """What a pure-decode pass (one new token per sequence, one attention group) leaves for the next pass of the
    same sequences in the same order."""

    seqs: tuple[Sequence, ...]
    cached: tuple[int, ...]  # each sequence's `num_cached` once its token was sampled
    layout: Layout  # the pass's
    tokens: PendingTokens  # what its LM head sampled, row i for seqs[i]

    @classmethod
    def of(cls, seqs: list[Sequence], layout: Layout, tokens: PendingTokens) -> DecodeCarry | None:
        """The carry of a pass whose LM head just sampled `tokens`; None unless the pass was pure decode."""
        if layout.num_tokens != len(seqs) or len(layout.groups) != 1 or not isinstance(layout.groups[0], AttentionGroup):
            return None
        return cls(tuple(seqs), tuple(s.num_cached for s in seqs), layout, tokens)

    def matches(self, seqs: list[Sequence]) -> bool:
        """Whether a pass of `seqs` is this pass's next: the same sequence objects in the same order, each feeding
        just the token sampled for it (nothing fed or cached since)."""
        return len(seqs) == len(self.seqs) and all(
            seq is own and seq.num_cached == cached and len(seq.token_ids) == cached + 1
            for seq, own, cached in zip(seqs, self.seqs, self.cached))

    def next_layout(self) -> Layout:
        """The next pass's layout on the device: positions one further, one more key, the sampled ids as its
        tokens (the current stream waits for the LM head that wrote them); slots and rows are the last pass's."""
        if self.layout.positions.is_cuda:
            # allocated on the stream that started an earlier pass, now read on this one: the caching allocator
            # must not hand their memory out again before this stream is done with them (positions, and the one
            # block of slots, rows and group arrays that real.layout.to_device sent)
            stream = torch.cuda.current_stream(self.layout.positions.device)
            self.layout.positions.record_stream(stream)
            self.layout.slots.record_stream(stream)
        positions = self.layout.positions + 1
        group = self.layout.groups[0]
        groups = (replace(group, positions=positions[:, None], num_keys=group.num_keys + 1),)
        ids = on_this_stream(self.tokens)
        return replace(self.layout, positions=positions, groups=groups, token_ids=ids)
