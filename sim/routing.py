"""Expert loads from top-k routing: how many tokens each expert of each layer receives."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

MAX_ENUMERATED = 20_000  # k-subsets x orderings up to which routing is drawn exactly by subset
TOKENWISE_LIMIT = 1 << 20  # passes x layers x tokens up to which uniform routing draws token by token


@dataclass
class ExpertRouter:
    """Draws per-layer expert loads. `skew` = 0 routes uniformly; > 0 gives each layer a Zipf-like
    expert popularity (rank^-skew, ranks shuffled per layer), as measured routers show.

    A token picks `top_k` distinct experts, sampled without replacement by popularity
    (Plackett-Luce). For small E and k (Mixtral: 28 pairs) the loads are drawn exactly as a
    multinomial over k-subsets, whatever the token count; otherwise as a multinomial over k*T
    expert slots (no-repeat rule relaxed; relative error ~ 1/sqrt(T)).
    """

    num_layers: int
    num_experts: int
    top_k: int
    skew: float = 0.0
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)
    _p: np.ndarray = field(init=False, repr=False)  # [L, E] expert popularity
    _subsets: np.ndarray | None = field(init=False, repr=False)  # [C, E] 0/1 incidence
    _subset_p: np.ndarray | None = field(init=False, repr=False)  # [L, C]

    def __post_init__(self) -> None:
        if self.skew < 0:
            raise ValueError(f"routing skew must be >= 0, got {self.skew}")
        self._rng = np.random.default_rng(self.seed)
        ranks = np.arange(1, self.num_experts + 1, dtype=float)
        p = np.stack([self._rng.permutation(ranks**-self.skew) for _ in range(self.num_layers)])
        self._p = p / p.sum(axis=1, keepdims=True)
        enumerable = math.comb(self.num_experts, self.top_k) * math.factorial(self.top_k) <= MAX_ENUMERATED
        self._subsets, self._subset_p = self._enumerate() if enumerable else (None, None)

    def loads(self, num_tokens: int) -> np.ndarray:
        """[L, E] token counts for a batch of `num_tokens` tokens."""
        return self.loads_many(num_tokens, 1)[0]

    def loads_many(self, num_tokens: int, num_passes: int) -> np.ndarray:
        """[P, L, E] token counts for `num_passes` independent passes of `num_tokens` tokens."""
        shape = (num_passes, self.num_layers)
        if self.skew == 0 and self._subsets is not None and num_passes * self.num_layers * num_tokens <= TOKENWISE_LIMIT:
            return self._tokenwise(num_tokens, num_passes)
        if self._subsets is not None:
            counts = self._rng.multinomial(num_tokens, self._subset_p, size=shape)  # [P, L, C]
            return counts @ self._subsets
        slots = self._rng.multinomial(self.top_k * num_tokens, self._p, size=shape)  # [P, L, E]
        return np.minimum(slots, num_tokens)

    def _tokenwise(self, num_tokens: int, num_passes: int) -> np.ndarray:
        """Uniform routing: each token draws one of the C k-subsets; one bincount for all blocks."""
        num_subsets = len(self._subsets)
        blocks = num_passes * self.num_layers
        picks = self._rng.integers(0, num_subsets, size=(blocks, num_tokens))
        picks += (np.arange(blocks) * num_subsets)[:, None]
        counts = np.bincount(picks.ravel(), minlength=blocks * num_subsets).reshape(blocks, num_subsets)
        return (counts @ self._subsets).reshape(num_passes, self.num_layers, self.num_experts)

    def _enumerate(self) -> tuple[np.ndarray, np.ndarray]:
        combos = list(itertools.combinations(range(self.num_experts), self.top_k))
        incidence = np.zeros((len(combos), self.num_experts), dtype=np.int64)
        for c, combo in enumerate(combos):
            incidence[c, list(combo)] = 1
        probs = np.array([[self._subset_probability(row, combo) for combo in combos] for row in self._p])
        return incidence, probs / probs.sum(axis=1, keepdims=True)

    @staticmethod
    def _subset_probability(p: np.ndarray, combo: tuple[int, ...]) -> float:
        total = 0.0
        for order in itertools.permutations(combo):
            prob, left = 1.0, 1.0
            for expert in order:
                prob *= p[expert] / left
                left -= p[expert]
            total += prob
        return total
