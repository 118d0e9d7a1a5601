"""Per-request state: the one record both engines update and every metric reads."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Priority(IntEnum):
    """Lower value = more urgent. LS = latency-sensitive, BE = best-effort."""

    LS = 0
    BE = 1

    @classmethod
    def parse(cls, value: str | int) -> Priority:
        """Accept 'LS'/'BE' (any case) or 0/1, as trace files and configs spell it."""
        if isinstance(value, str) and value.strip().upper() in cls.__members__:
            return cls[value.strip().upper()]
        return cls(int(value))


@dataclass(slots=True, eq=False)
class Request:
    """A request and its progress.

    A prefill pass produces the first output token; each decode pass one more. The engine
    (simulated or real) calls `record_token` after every pass that reaches the LM head.
    """

    request_id: int
    arrival_s: float
    num_prompt_tokens: int
    num_output_tokens: int
    priority: Priority = Priority.BE
    num_generated_tokens: int = 0
    kv_unit_tokens: int = 1  # KV allocation granularity: 1 (sim), a page, or a whole slot (real engine)
    first_scheduled_s: float | None = None  # first time it entered a running batch
    first_token_s: float | None = None
    finish_s: float | None = None
    num_preemptions: int = 0

    @property
    def is_ls(self) -> bool:
        return self.priority == Priority.LS

    @property
    def is_prefill(self) -> bool:
        return self.num_generated_tokens == 0

    @property
    def is_finished(self) -> bool:
        return self.num_generated_tokens >= self.num_output_tokens

    @property
    def num_step_tokens(self) -> int:
        """Tokens this request feeds through the model in its next pass."""
        return self.num_prompt_tokens if self.is_prefill else 1

    @property
    def num_context_tokens(self) -> int:
        """Tokens whose KV the next pass attends to (including the ones it adds)."""
        return self.num_prompt_tokens + max(self.num_generated_tokens, 0)

    @property
    def num_kv_tokens(self) -> int:
        """KV reserved for the whole life of the request (TGI-style), in whole allocation units."""
        needed = self.num_prompt_tokens + self.num_output_tokens
        return -(-needed // self.kv_unit_tokens) * self.kv_unit_tokens

    def record_token(self, now_s: float) -> None:
        if self.is_finished:
            raise RuntimeError(f"request {self.request_id} got a token past its {self.num_output_tokens}")
        self.num_generated_tokens += 1
        if self.first_token_s is None:
            self.first_token_s = now_s
        if self.is_finished:
            self.finish_s = now_s
