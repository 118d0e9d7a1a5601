"""The paper's four FIFO queues: LS/BE x prefill/decode."""

from __future__ import annotations

from collections.abc import Iterator

from policies.request import Request


class Queue:
    """An insertion-ordered set of requests: FIFO iteration, O(1) removal of any member."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: dict[int, Request] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._items.values())

    def __bool__(self) -> bool:
        return bool(self._items)

    def head(self, n: int) -> list[Request]:
        """The first `n` requests, oldest first."""
        out: list[Request] = []
        for request in self._items.values():
            if len(out) >= n:
                break
            out.append(request)
        return out

    def push(self, request: Request) -> None:
        self._items[request.request_id] = request

    def remove(self, request: Request) -> None:
        del self._items[request.request_id]

    def __contains__(self, request: Request) -> bool:
        return request.request_id in self._items


class Queues:
    """Waiting requests, by priority class and phase."""

    __slots__ = ("ls_prefill", "ls_decode", "be_prefill", "be_decode")

    def __init__(self) -> None:
        self.ls_prefill = Queue()
        self.ls_decode = Queue()
        self.be_prefill = Queue()
        self.be_decode = Queue()

    def queue_for(self, request: Request) -> Queue:
        decoding = request.num_generated_tokens > 0
        if request.priority == 0:  # Priority.LS; compared as int on this hot path
            return self.ls_decode if decoding else self.ls_prefill
        return self.be_decode if decoding else self.be_prefill

    def push(self, request: Request) -> None:
        self.queue_for(request).push(request)

    def remove(self, request: Request) -> None:
        self.queue_for(request).remove(request)

    @property
    def num_waiting(self) -> int:
        return len(self.ls_prefill) + len(self.ls_decode) + len(self.be_prefill) + len(self.be_decode)

    @property
    def has_ls(self) -> bool:
        return bool(self.ls_prefill) or bool(self.ls_decode)
