"""Helpers policies share to pick requests: FIFO heads that fit the batch and the KV budget."""

from __future__ import annotations

import heapq
from collections.abc import Iterable

from policies.request import Request


def admit_fifo(waiting: Iterable[Request], max_requests: int, num_free_kv_tokens: int) -> list[Request]:
    """Oldest-first prefix of `waiting` whose KV reservations fit; stops at the first misfit (no skipping)."""
    chosen: list[Request] = []
    budget = num_free_kv_tokens
    for request in waiting:
        if len(chosen) >= max_requests or request.num_kv_tokens > budget:
            break
        chosen.append(request)
        budget -= request.num_kv_tokens
    return chosen


def within_padded_tokens(chosen: list[Request], extra: list[Request], max_padded_tokens: int) -> list[Request]:
    """The longest prefix of `extra` that keeps (chosen + prefix) within `max_padded_tokens` when the
    prompts are padded to the longest one, as a batched prefill runs them."""
    longest, kept = max((r.num_prompt_tokens for r in chosen), default=0), []
    for request in extra:
        longest = max(longest, request.num_prompt_tokens)
        if (len(chosen) + len(kept) + 1) * longest > max_padded_tokens:
            break
        kept.append(request)
    return kept


def by_arrival(*queues: Iterable[Request]) -> Iterable[Request]:
    """Merge FIFO queues into one arrival-ordered stream (lazily)."""
    return heapq.merge(*queues, key=lambda r: (r.arrival_s, r.request_id))


def kv_of(requests: Iterable[Request]) -> int:
    return sum(r.num_kv_tokens for r in requests)
