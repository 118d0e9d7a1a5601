"""Per-sequence KV storage: one preallocated pool per layer, one slot per sequence.

Batches are index views over slots, so pausing, merging or splitting a batch never copies a cache.
One extra slot (`scratch_slot`) is never handed out: padding rows of a CUDA-graph bucket write there."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class KVPool:
    """k[l], v[l]: [num_slots + 1, max_len, KVH, Dh] for layer l (the last slot is scratch)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    free: list[int] = field(default_factory=list)

    @classmethod
    def allocate_for(cls, config, num_slots: int, max_len: int, device, dtype) -> KVPool:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (num_slots + 1, max_len, config.num_key_value_heads, head_dim)
        layers = range(config.num_hidden_layers)
        k = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        v = [torch.zeros(shape, device=device, dtype=dtype) for _ in layers]
        return cls(k, v, free=list(range(num_slots))[::-1])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[1]

    @property
    def num_slots(self) -> int:
        """Slots that sequences can hold (the scratch slot excluded)."""
        return self.k[0].shape[0] - 1

    @property
    def scratch_slot(self) -> int:
        return self.k[0].shape[0] - 1

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token takes over all layers (what admission control budgets)."""
        return 2 * sum(t[0, 0].numel() * t.element_size() for t in self.k)

    def can_allocate(self) -> bool:
        return bool(self.free)

    def acquire(self) -> int:
        if not self.free:
            raise RuntimeError("KV pool exhausted: no free sequence slot")
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)
