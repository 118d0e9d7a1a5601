"""Table-driven tests of Algorithm 1 (QLLM's GetNextBatch) and the preemption / merge rules."""

from __future__ import annotations

import pytest

from policies import (
    CONTINUE, FCFS, QLLM, Batch, Granularity, Merge, Position, Priority, Request, Resume, RunBatch,
    SchedulerState, Stage,
)

B = 4


def state_with(ls_prefill=0, ls_decode=0, be_prefill=0, be_decode=0, kv=10_000) -> SchedulerState:
    """Queues filled with requests; ids encode the queue (LP 0xx, LD 1xx, BP 2xx, BD 3xx)."""
    state = SchedulerState(kv_capacity_tokens=kv, max_batch_size=B)
    groups = [(ls_prefill, 0, Priority.LS, 0), (ls_decode, 100, Priority.LS, 1),
              (be_prefill, 200, Priority.BE, 0), (be_decode, 300, Priority.BE, 1)]
    for count, base, priority, generated in groups:
        for i in range(count):
            r = Request(base + i, arrival_s=float(base + i), num_prompt_tokens=10, num_output_tokens=5,
                        priority=priority, num_generated_tokens=generated)
            state.queues.push(r)
    return state


def ids(decision) -> list[int]:
    return [r.request_id for r in decision.requests]


ALGORITHM_1 = [
    # (name, queue sizes (LP, LD, BP, BD), expected request ids of the next batch)
    ("1: full LS decode batch", (1, 5, 2, 2), [100, 101, 102, 103]),
    ("2: LS prefill topped up with BE prefill", (2, 1, 3, 2), [0, 1, 200, 201]),
    ("2: LS prefill alone fills the batch", (5, 0, 3, 0), [0, 1, 2, 3]),
    ("3: LS decode topped up with BE decode", (0, 2, 3, 5), [100, 101, 300, 301]),
    ("4: BE decode before BE prefill", (0, 0, 3, 2), [300, 301]),
    ("5: BE prefill last", (0, 0, 6, 0), [200, 201, 202, 203]),
]


@pytest.mark.parametrize("name,sizes,expected", ALGORITHM_1, ids=[c[0] for c in ALGORITHM_1])
def test_next_batch(name, sizes, expected):
    decision = QLLM(max_batch_size=B).schedule(state_with(*sizes).view(0.0))
    assert isinstance(decision, RunBatch)
    assert ids(decision) == expected


BE_PREFILL_ROOM = [
    # (name, queue sizes (LP, LD, BP, BD), expected request ids of the next batch) with be_prefill_room
    ("room: BE prefills before LS decodes, up to the room", (0, 1, 5, 1), [200, 201]),
    ("room: BE prefills before BE decodes", (0, 0, 3, 2), [200, 201]),
    ("room: no room, Algorithm 1's decode batch", (0, 2, 3, 2), [100, 101, 300, 301]),
    ("room: LS prefills still come first", (1, 1, 3, 1), [0, 200, 201, 202]),
    ("room: a full LS decode batch still comes first", (0, 5, 3, 0), [100, 101, 102, 103]),
    ("room: nothing waiting to prefill, the decode batch", (0, 1, 0, 1), [100, 300]),
]


@pytest.mark.parametrize("name,sizes,expected", BE_PREFILL_ROOM, ids=[c[0] for c in BE_PREFILL_ROOM])
def test_be_prefill_room_admits_be_prefills_while_fewer_than_the_batch_decode(name, sizes, expected):
    decision = QLLM(max_batch_size=B, be_prefill_room=True).schedule(state_with(*sizes).view(0.0))
    assert ids(decision) == expected


def test_be_prefill_room_respects_the_kv_budget():
    decision = QLLM(max_batch_size=B, be_prefill_room=True).schedule(state_with(0, 1, 3, 0, kv=30).view(0.0))
    assert ids(decision) == [200, 201]  # 15 KV tokens each (10 prompt + 5 output): two fit


ROOM_MIN_FILL = [
    # (name, queue sizes (LP, LD, BP, BD), free KV tokens, expected ids) with room_min_fill=0.75, B=4
    ("min fill: two of a room of two", (0, 1, 3, 1), 10_000, [200, 201]),
    ("min fill: one of a room of two waits, the decodes run", (0, 1, 1, 1), 10_000, [100, 300]),
    ("min fill: three of a room of three", (0, 1, 3, 0), 10_000, [200, 201, 202]),
    ("min fill: the KV budget admits one of three, the decodes run", (0, 1, 3, 0), 15, [100]),
    ("min fill: nothing decodes, Algorithm 1's step 5 admits them all the same", (0, 0, 1, 0), 10_000, [200]),
]


@pytest.mark.parametrize("name,sizes,kv,expected", ROOM_MIN_FILL, ids=[c[0] for c in ROOM_MIN_FILL])
def test_room_min_fill_holds_be_prefills_back_until_they_refill_that_share_of_the_room(name, sizes, kv, expected):
    policy = QLLM(max_batch_size=B, be_prefill_room=True, room_min_fill=0.75)
    assert ids(policy.schedule(state_with(*sizes, kv=kv).view(0.0))) == expected


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_room_min_fill_outside_0_1_is_rejected(bad):
    with pytest.raises(ValueError, match="room_min_fill"):
        QLLM(room_min_fill=bad)


def test_6_nothing_to_do():
    assert QLLM().schedule(state_with().view(0.0)) == CONTINUE


def test_ls_prefill_not_topped_up_when_disabled():
    decision = QLLM(max_batch_size=B, fill_ls_prefill=False).schedule(state_with(1, 0, 3, 0).view(0.0))
    assert ids(decision) == [0]


@pytest.mark.parametrize("budget,expected", [(None, [0, 200, 201, 202]), (40, [0, 200, 201, 202]),
                                             (39, [0, 200, 201]), (20, [0, 200]), (10, [0]), (5, [0])])
def test_fill_max_tokens_caps_the_padded_be_fill(budget, expected):
    # prompts of 10 tokens: the batch pads to 10 per sequence; the LS prefill itself is never cut
    decision = QLLM(max_batch_size=B, fill_max_tokens=budget).schedule(state_with(1, 0, 3, 0).view(0.0))
    assert ids(decision) == expected


def test_fill_max_tokens_pads_to_the_longest_prompt():
    state = state_with(1, 0, 3, 0)
    state.queues.be_prefill.head(2)[1].num_prompt_tokens = 30  # request 201: the batch would pad to 30
    decision = QLLM(max_batch_size=B, fill_max_tokens=80).schedule(state.view(0.0))
    assert ids(decision) == [0, 200]  # 3 x 30 = 90 > 80


def test_prefill_admission_respects_kv():
    # each request reserves 15 KV tokens: 40 free admits two
    decision = QLLM(max_batch_size=B).schedule(state_with(0, 0, 4, 0, kv=40).view(0.0))
    assert ids(decision) == [200, 201]


def test_ls_prefill_that_does_not_fit_falls_through_to_decode():
    decision = QLLM(max_batch_size=B).schedule(state_with(1, 0, 0, 2, kv=10).view(0.0))
    assert ids(decision) == [300, 301]


def running_state(batch_sizes: tuple[int, int, int, int], running_has_ls: bool, position: Position):
    state = state_with(*batch_sizes)
    priority = Priority.LS if running_has_ls else Priority.BE
    running = [Request(900 + i, 0.0, 10, 5, priority, num_generated_tokens=1) for i in range(2)]
    state.running = Batch(99, running, position)
    return state


PREEMPTION = [
    # (name, queues, running batch has LS, expected decision type)
    ("BE batch, LS prefill waits -> preempt", (1, 0, 0, 0), False, RunBatch),
    ("BE batch, LS decode waits -> preempt", (0, 1, 0, 0), False, RunBatch),
    ("BE batch, only BE waits -> continue", (0, 0, 3, 3), False, type(CONTINUE)),
    ("LS batch, LS waits -> continue (joins next iteration)", (1, 0, 0, 0), True, type(CONTINUE)),
]


@pytest.mark.parametrize("name,sizes,has_ls,expected", PREEMPTION, ids=[c[0] for c in PREEMPTION])
def test_preemption_rule(name, sizes, has_ls, expected):
    state = running_state(sizes, has_ls, Position(3, Stage.ATTENTION))
    assert isinstance(QLLM(max_batch_size=B).schedule(state.view(0.0)), expected)


EAGER = [
    # (name, queues, running batch has LS (decoding), expected decision type) with preempt_ls_decode=True
    ("LS decode batch, LS prefill waits -> preempt", (1, 0, 0, 0), True, RunBatch),
    ("LS decode batch, only LS decode waits -> continue", (0, 1, 0, 0), True, type(CONTINUE)),
    ("BE batch, only LS decode waits -> continue", (0, 1, 0, 0), False, type(CONTINUE)),
    ("BE batch, LS prefill waits -> preempt", (1, 0, 0, 0), False, RunBatch),
]


@pytest.mark.parametrize("name,sizes,has_ls,expected", EAGER, ids=[c[0] for c in EAGER])
def test_eager_preemption_rule(name, sizes, has_ls, expected):
    state = running_state(sizes, has_ls, Position(3, Stage.ATTENTION))
    decision = QLLM(max_batch_size=B, preempt_ls_decode=True).schedule(state.view(0.0))
    assert isinstance(decision, expected)


def test_eager_never_pauses_an_ls_prefill():
    state = state_with(1, 0, 0, 0)
    prefill = [Request(950, 0.0, 10, 5, Priority.LS)]
    state.running = Batch(98, prefill, Position(2, Stage.ATTENTION))
    assert QLLM(preempt_ls_decode=True).schedule(state.view(0.0)) == CONTINUE


CATCH_UP = [
    # (layer the running LS prefill batch has reached, ls_catch_up_layers, LS prefill waits, expected)
    (0, 16, True, RunBatch),
    (15, 16, True, RunBatch),
    (16, 16, True, type(CONTINUE)),  # past the bound: the newcomer waits for the next iteration
    (3, 0, True, type(CONTINUE)),  # off by default
    (3, 16, False, type(CONTINUE)),  # only an LS prefill catches up, never decodes
]


@pytest.mark.parametrize("layer,bound,waiting,expected", CATCH_UP)
def test_ls_prefill_catch_up_rule(layer, bound, waiting, expected):
    state = state_with(1 if waiting else 0, 2, 2, 2)
    state.running = Batch(98, [Request(950, 0.0, 10, 5, Priority.LS)], Position(layer, Stage.ATTENTION))
    decision = QLLM(max_batch_size=B, ls_catch_up_layers=bound).schedule(state.view(0.0))
    assert isinstance(decision, expected)
    if expected is RunBatch:
        assert ids(decision)[0] == 0  # the waiting LS prefill leads the new batch


def test_catch_up_batch_merges_with_the_paused_ls_prefill_at_its_layer():
    """End to end on the bookkeeping: pause at layer 5, catch up, merge there, both in one batch."""
    state = state_with(0, 0, 0, 0)
    policy = QLLM(max_batch_size=B, ls_catch_up_layers=16, fill_ls_prefill=False)
    state.queues.push(Request(1, 0.0, 10, 5, Priority.LS))
    state.apply(policy.schedule(state.view(0.0)), 0.0)
    state.running.position = Position(5, Stage.ATTENTION)
    state.queues.push(Request(2, 1.0, 10, 5, Priority.LS))
    state.apply(policy.schedule(state.view(1.0)), 1.0)
    assert [b.batch_id for b in state.paused] == [0] and [r.request_id for r in state.running.requests] == [2]
    state.running.position = Position(5, Stage.ATTENTION)
    assert policy.schedule(state.view(2.0)) == Merge((0,))
    state.apply(Merge((0,)))
    assert sorted(r.request_id for r in state.running.requests) == [1, 2] and not state.paused


def test_ls_decode_batch_is_not_paused_for_other_decodes():
    """With eager preemption, an LS prefill that does not fit the KV budget must not make a running
    LS decode batch give way to a batch of decodes only."""
    state = running_state((1, 2, 0, 2), True, Position(3, Stage.ATTENTION))
    state.kv_capacity_tokens = 10  # the LS prefill needs 15
    assert QLLM(max_batch_size=B, preempt_ls_decode=True).schedule(state.view(0.0)) == CONTINUE


@pytest.mark.parametrize("reserve,expected", [(0.0, [200, 201, 202, 203]), (0.25, [200, 201]),
                                              (0.5, [200]), (0.75, [])])
def test_ls_kv_reserve_keeps_be_prefills_out_of_a_share_of_the_cache(reserve, expected):
    # 4 BE prefills of 15 KV tokens each; 80-token cache, 20 held by running requests: 60, 40, 20, 0 left to BE
    state = state_with(0, 0, 4, 0, kv=80)
    state.num_reserved_kv_tokens = 20
    decision = QLLM(max_batch_size=B, ls_kv_reserve=reserve).schedule(state.view(0.0))
    assert (ids(decision) if decision != CONTINUE else []) == expected


def test_ls_kv_reserve_does_not_keep_be_waiting_on_an_empty_cache():
    """A BE request larger than the unreserved part must still run once nothing holds memory."""
    state = state_with(0, 0, 4, 0, kv=60)
    assert ids(QLLM(max_batch_size=B, ls_kv_reserve=0.9).schedule(state.view(0.0))) == [200, 201, 202, 203]


def test_ls_kv_reserve_does_not_hold_back_ls_prefills():
    state = state_with(2, 0, 2, 0, kv=30)  # room for exactly the two LS prefills
    decision = QLLM(max_batch_size=B, ls_kv_reserve=0.5).schedule(state.view(0.0))
    assert ids(decision) == [0, 1]


@pytest.mark.parametrize("kwargs", [{"ls_catch_up_layers": -1}, {"ls_kv_reserve": 1.0}, {"ls_kv_reserve": -0.1}])
def test_bad_qllm_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        QLLM(**kwargs)


def test_merge_when_running_batch_reaches_paused_position():
    state = running_state((0, 0, 0, 0), True, Position(3, Stage.ATTENTION))
    state.paused.append(Batch(7, [Request(800, 0.0, 10, 5)], Position(3, Stage.ATTENTION)))
    state.paused.append(Batch(8, [Request(801, 0.0, 10, 5)], Position(5, Stage.ATTENTION)))
    assert QLLM().schedule(state.view(0.0)) == Merge((7,))


def test_expert_queue_merge_from_an_earlier_expert_only():
    paused = Position(2, Stage.EXPERTS, 3)
    assert Position(2, Stage.EXPERTS, 0).can_absorb(paused)
    assert Position(2, Stage.EXPERTS, 3).can_absorb(paused)
    assert not Position(2, Stage.EXPERTS, 4).can_absorb(paused)
    assert not Position(2, Stage.ATTENTION).can_absorb(paused)
    assert not Position(1, Stage.EXPERTS, 0).can_absorb(paused)


def test_idle_engine_resumes_paused_batch_when_no_ls_waits():
    state = state_with(0, 0, 2, 2)
    state.paused.append(Batch(7, [Request(800, 0.0, 10, 5)], Position(3, Stage.ATTENTION)))
    assert QLLM().schedule(state.view(0.0)) == Resume(7)


def test_idle_engine_starts_ls_batch_over_paused_one():
    state = state_with(1, 0, 0, 0)
    state.paused.append(Batch(7, [Request(800, 0.0, 10, 5)], Position(3, Stage.ATTENTION)))
    assert ids(QLLM().schedule(state.view(0.0))) == [0]


@pytest.mark.parametrize("waiting_ls_prefill", [False, True])
def test_a_paused_ls_prefill_goes_before_ls_decodes(waiting_ls_prefill):
    """A catch-up's paused LS prefill that no batch absorbed: the idle engine resumes it ahead of LS and BE decodes
    (and of an older paused BE batch); only a waiting LS prefill goes first, which will catch up with it."""
    state = state_with(1 if waiting_ls_prefill else 0, 3, 1, 2)
    state.paused.append(Batch(6, [Request(700, 0.0, 10, 5)], Position(9, Stage.ATTENTION)))
    state.paused.append(Batch(7, [Request(800, 0.0, 10, 5, Priority.LS)], Position(3, Stage.EXPERTS, 0)))
    decision = QLLM(max_batch_size=B, ls_catch_up_layers=16).schedule(state.view(0.0))
    if waiting_ls_prefill:
        assert isinstance(decision, RunBatch) and ids(decision)[0] == 0
    else:
        assert decision == Resume(7)


FCFS_CASES = [
    # (name, queue sizes, expected ids) -- arrival order decides, priority does not
    ("prefill newcomers first, oldest first", (1, 0, 2, 0), [0, 200, 201]),
    ("no room: decode the active ones", (1, 2, 0, 2), [100, 101, 300, 301]),
    ("room for one newcomer", (2, 0, 0, 3), [0]),
]


@pytest.mark.parametrize("name,sizes,expected", FCFS_CASES, ids=[c[0] for c in FCFS_CASES])
def test_fcfs(name, sizes, expected):
    decision = FCFS(max_batch_size=B).schedule(state_with(*sizes).view(0.0))
    assert ids(decision) == expected


def test_fcfs_never_preempts():
    state = running_state((3, 0, 0, 0), False, Position(0, Stage.ATTENTION))
    assert FCFS().schedule(state.view(0.0)) == CONTINUE
    assert FCFS().granularity == Granularity.ITERATION


def test_granularity_parses_config_spellings():
    assert QLLM(granularity="expert").granularity == Granularity.EXPERT
    with pytest.raises(ValueError, match="unknown granularity"):
        QLLM(granularity="token")
