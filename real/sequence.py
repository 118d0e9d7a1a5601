"""A sequence owns its tokens and its KV slot; everything else lives in the batch it rides in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from real.pending import PendingTokens


@dataclass(eq=False)
class Sequence:
    seq_id: int
    token_ids: list[int]
    slot: int = -1
    num_cached: int = 0  # tokens whose KV is in every layer (updated when a pass completes)
    pending: tuple[PendingTokens, int] | None = None  # the last token is still on the device: (where, row)
    # the prompt's ids as int64, made before the pass that feeds them (real.pending.input_ids packs these
    # instead of walking the list: 0.28 of 0.56 ms of a 32-prompt start on a CPU)
    prompt: np.ndarray | None = None

    @property
    def num_new(self) -> int:
        """Tokens this pass feeds: the whole prompt on prefill, one token on decode."""
        return len(self.token_ids) - self.num_cached
