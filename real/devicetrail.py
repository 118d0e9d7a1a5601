"""Where a stalled device stopped: the engine's last pieces of device work, each followed by an event.

The engine stall (BENCHMARKS.md, sessions 22-25) leaves the GPU at 100% utilisation on work that never finishes, and
the host's stack shows only the wait behind it. With `engine.device_trail`, the engine records an event on the
current stream after each piece of work it issues (a start, a layer or stage, an LM head, a rehearsal) into a ring;
the stall watch (real.stallwatch) then asks each event whether it has fired. Per stream, the first piece whose event
has not fired is where the device stopped (the work issued after it on that stream only waits); across streams, the
one that holds the oldest unfinished piece is the likely culprit. An event record costs the host a few µs, so the
trail is off by default."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class EventLike(Protocol):
    def record(self) -> None: ...

    def query(self) -> bool: ...


@dataclass
class Mark:
    number: int  # marks made before this one
    label: str
    stream: int  # the stream's handle (or any key that tells streams apart)
    event: EventLike


@dataclass
class DeviceTrail:
    new_event: Callable[[], EventLike]
    stream_key: Callable[[], int]
    capacity: int = 512
    marks: list[Mark] = field(default_factory=list)  # a ring of `capacity`: the oldest is overwritten
    made: int = 0

    @classmethod
    def on_cuda(cls, device, capacity: int = 512) -> DeviceTrail:
        import torch
        return cls(lambda: torch.cuda.Event(), lambda: torch.cuda.current_stream(device).cuda_stream, capacity)

    def mark(self, label: str) -> None:
        """An event after the work issued so far on the current stream, under `label`."""
        stream = self.stream_key()
        if len(self.marks) < self.capacity:
            self.marks.append(Mark(self.made, label, stream, self.new_event()))
        else:
            slot = self.marks[self.made % self.capacity]
            slot.number, slot.label, slot.stream = self.made, label, stream
        self.marks[self.made % self.capacity].event.record()
        self.made += 1

    def report(self) -> str:
        """Per stream (oldest unfinished work first): the last piece the device finished and the first it did not."""
        by_stream: dict[int, list[Mark]] = {}
        for mark in sorted(self.marks, key=lambda m: m.number):
            by_stream.setdefault(mark.stream, []).append(mark)
        lines = [f"device trail: {self.made} marks, the last {len(self.marks)} kept"]
        rows = []
        for stream, marks in by_stream.items():
            done = [m.event.query() for m in marks]
            pending = [m for m, d in zip(marks, done) if not d]
            finished = [m for m, d in zip(marks, done) if d]
            if not pending:
                rows.append((float("inf"), f"  stream {stream:#x}: all {len(marks)} finished, the last #{marks[-1].number} "
                                           f"{marks[-1].label}"))
                continue
            first = pending[0]
            last = f"#{finished[-1].number} {finished[-1].label}" if finished else "none kept"
            rows.append((first.number, f"  stream {stream:#x}: NOT FINISHED #{first.number} {first.label} "
                                       f"({len(pending)} of {len(marks)} pending); last finished {last}"))
        lines += [text for _, text in sorted(rows, key=lambda r: r[0])]
        return "\n".join(lines)
