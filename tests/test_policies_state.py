"""SchedulerState: applying decisions keeps every request in exactly one place; bad decisions fail."""

from __future__ import annotations

import pytest

from policies import Batch, Merge, Position, PolicyError, Priority, Request, Resume, RunBatch, SchedulerState, Stage


def make_state(kv=100) -> tuple[SchedulerState, list[Request]]:
    state = SchedulerState(kv_capacity_tokens=kv)
    requests = [Request(i, 0.0, 10, 2, Priority.BE) for i in range(3)]
    for r in requests:
        state.arrive(r)
    return state, requests


def test_run_pause_resume_cycle_keeps_requests_and_kv():
    state, (a, b, c) = make_state()
    state.apply(RunBatch((a, b)))
    assert state.num_reserved_kv_tokens == 24 and state.queues.num_waiting == 1
    state.running.position = Position(2, Stage.ATTENTION)
    t = state.apply(RunBatch((c,)))
    assert t.paused is not None and t.paused.requests == [a, b]
    assert (a.num_preemptions, c.num_preemptions) == (1, 0)
    state.complete_pass(1.0)  # c's first token
    assert c.first_token_s == 1.0 and c in state.queues.be_decode
    state.apply(Resume(t.paused.batch_id))
    assert state.running.position == Position(2, Stage.ATTENTION)


def test_merge_requires_a_reachable_position():
    state, (a, b, c) = make_state()
    state.paused.append(Batch(50, [a], Position(2, Stage.ATTENTION)))
    state.queues.remove(a)
    state.apply(RunBatch((b,)))
    with pytest.raises(PolicyError, match="cannot merge"):
        state.apply(Merge((50,)))
    state.running.position = Position(2, Stage.ATTENTION)
    state.apply(Merge((50,)))
    assert state.running.requests == [b, a] and not state.paused


def test_finished_requests_release_kv():
    state, (a, b, c) = make_state()
    state.apply(RunBatch((a,)))
    state.complete_pass(1.0)
    state.apply(RunBatch((a,)))
    assert state.complete_pass(2.0) == [a]
    assert state.num_reserved_kv_tokens == 0 and a.finish_s == 2.0


@pytest.mark.parametrize(
    "bad,message",
    [
        (lambda s, r: RunBatch(()), "no requests"),
        (lambda s, r: RunBatch((Request(99, 0.0, 1, 1),)), "not waiting"),
        (lambda s, r: Resume(123), "no paused batch"),
        (lambda s, r: Merge((1,)), "no running batch"),
    ],
)
def test_bad_decisions_are_rejected(bad, message):
    state, requests = make_state()
    with pytest.raises(PolicyError, match=message):
        state.apply(bad(state, requests))


def test_over_committing_kv_is_rejected():
    state, (a, b, c) = make_state(kv=30)
    with pytest.raises(PolicyError, match="KV"):
        state.apply(RunBatch((a, b, c)))


def test_request_larger_than_cache_is_rejected_on_arrival():
    state = SchedulerState(kv_capacity_tokens=5)
    with pytest.raises(PolicyError, match="more than the whole cache"):
        state.arrive(Request(0, 0.0, 10, 2))
