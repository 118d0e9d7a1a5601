"""The device trail (real.devicetrail): a stall's report names, per stream, the first piece of device work that has
not finished, the stream holding the oldest such piece first; the engine marks each piece it issues."""

from __future__ import annotations

import pytest

from real.devicetrail import DeviceTrail


class FakeEvent:
    """An event that has fired once `fired` says so (the test plays the device)."""

    def __init__(self, trail: Trail) -> None:
        self.trail, self.number = trail, -1

    def record(self) -> None:
        self.number = self.trail.made

    def query(self) -> bool:
        return self.number in self.trail.fired


class Trail(DeviceTrail):
    """A trail on fake streams: `on(stream)` picks the stream the next marks go to."""

    def __init__(self, capacity: int = 512) -> None:
        self.stream, self.fired = 0, set()
        super().__init__(lambda: FakeEvent(self), lambda: self.stream, capacity)

    def on(self, stream: int, *labels: str) -> Trail:
        self.stream = stream
        for label in labels:
            self.mark(label)
        return self


def stream_lines(report: str) -> list[str]:
    return [line.strip() for line in report.splitlines()[1:]]


@pytest.mark.parametrize("fired, expected", [
    # marks: 0 main:start, 1 main:L0, 2 urgent:start, 3 urgent:L0, 4 main:L1, 5 urgent:L1
    ({0, 1, 2, 3, 4, 5}, ["stream 0x1: all 3 finished, the last #4 L1", "stream 0x2: all 3 finished, the last #5 L1"]),
    ({0, 2, 3}, ["stream 0x1: NOT FINISHED #1 L0 (2 of 3 pending); last finished #0 start",
                 "stream 0x2: NOT FINISHED #5 L1 (1 of 3 pending); last finished #3 L0"]),
    ({0, 1, 4}, ["stream 0x2: NOT FINISHED #2 start (3 of 3 pending); last finished none kept",
                 "stream 0x1: all 3 finished, the last #4 L1"]),
], ids=["all finished", "main stuck first", "urgent stuck, main done"])
def test_the_report_names_each_streams_first_unfinished_piece_oldest_first(fired, expected):
    trail = Trail().on(1, "start", "L0").on(2, "start", "L0").on(1, "L1").on(2, "L1")
    trail.fired = fired
    report = trail.report()
    assert report.splitlines()[0] == "device trail: 6 marks, the last 6 kept"
    assert stream_lines(report) == expected


def test_the_ring_keeps_the_latest_marks_only():
    trail = Trail(capacity=4).on(1, *(f"L{i}" for i in range(10)))
    assert sorted(m.number for m in trail.marks) == [6, 7, 8, 9]
    trail.fired = {6, 7}
    assert trail.report().splitlines() == ["device trail: 10 marks, the last 4 kept",
                                           "  stream 0x1: NOT FINISHED #8 L8 (2 of 4 pending); last finished #7 L7"]


def test_the_engine_marks_each_piece_of_work_it_issues():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from policies import Granularity
    from real.engine import Engine
    from real.kv import KVPool
    from real.model import build_model, preset_config
    model = build_model(preset_config("tiny-mixtral"), "cpu", seed=1)
    engine = Engine(model, KVPool.allocate_for(model.config, 4, 64, "cpu", torch.float32))
    engine.trail = trail = Trail()
    seq = engine.add_sequence(0, [5, 6, 7])
    engine.run_pass([seq], Granularity.EXPERT)
    labels = [m.label for m in trail.marks]
    layers, experts = model.config.num_hidden_layers, model.config.num_local_experts
    assert labels[0] == "start of 1 seqs, 3 tokens" and labels[-1] == "LM head of 1 seqs"
    assert labels[1:4] == ["attention layer 0, 3 tokens", "router layer 0, 3 tokens", "experts layer 0 expert 0, 3 tokens"]
    assert len(labels) == 2 + layers * (2 + experts)  # expert level: each expert a piece of its own
    engine.trail = None
    engine.run_pass([seq], Granularity.EXPERT)
    assert trail.made == len(labels)  # no trail, no marks
