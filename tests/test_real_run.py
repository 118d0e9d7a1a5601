"""`real.run.serve` end to end on the CPU (tiny Mixtral): the engine is kept between runs of one process
with every KV slot given back, and the step log and device timeline are consistent."""

from __future__ import annotations

import dataclasses
import gc
from collections import deque

import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from policies import FCFS, QLLM, Granularity  # noqa: E402
from real import run as real_run  # noqa: E402
from real.engine import Engine  # noqa: E402
from real.gcwatch import GCWatch  # noqa: E402
from real.graphs import BUCKET_SIZES  # noqa: E402
from real.kv import KVPool  # noqa: E402
from real.model import build_model, preset_config  # noqa: E402
from real.timeline import DeviceTimeline, _wait, every  # noqa: E402
from sim.workload import WorkloadConfig  # noqa: E402


def spec(rate: float) -> real_run.ServeSpec:
    workload = WorkloadConfig(rate=rate, num_requests=12, output_mode="fixed", fixed_output_tokens=3)
    return real_run.ServeSpec(QLLM(max_batch_size=4), "qllm", workload,
                              real_run.EngineSettings(num_slots=8, graphs=True), seed=1, max_batch_size=4)


def test_serve_twice_keeps_the_engine_and_logs_every_step(tmp_path):
    real_run.release_engine()
    first, _ = real_run.serve(spec(200.0), tmp_path)
    engine = real_run._built[0].engine
    table, summary = real_run.serve(spec(100.0), tmp_path)
    assert real_run._built[0].engine is engine and engine.pool.num_free == engine.pool.num_slots == 8
    assert summary["run"]["kv_slot_tokens"] % 256 == 0 and summary["run"]["graphs"]
    assert summary["run"]["gc"]["collections"] == [0, 0, 0] and gc.isenabled()  # off during the replay only
    assert summary["run"]["allocator"] == {}  # the caching allocator's counts exist on CUDA only
    assert summary["run"]["host_probe_ms"] > 0  # the host's speed before the replay (calibrate.hostspeed)
    assert summary["run"]["lane"] and not summary["run"]["pass_overlap"]  # qllm preempts: it may take the lane
    for t in (first, table):
        assert len(t) == 12 and (t.generated_tokens == 3).all()
        assert (t.arrival_s <= t.scheduled_s).all() and (t.scheduled_s <= t.first_token_s).all()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert (steps.begin_s <= steps.end_s).all() and (steps.end_s.diff().dropna() >= 0).all()
    advances, finishes = steps[steps.kind == "advance"], steps[steps.kind == "finish"]
    # a whole step advances at least one layer; one stopped between stages (engine.stage_stops) may end
    # inside the layer it began in
    assert (advances[advances.whole].from_layer < advances[advances.whole].to_layer).all()
    assert (advances.from_layer <= advances.to_layer).all()
    # every pass ends with one LM head, and the passes' tokens add up to the tokens generated
    assert (finishes.to_layer == engine.num_layers).all()
    assert finishes.num_seqs.sum() == table.generated_tokens.sum()
    # prompts (12 of them, 3 tokens each asked) are fed once each; every other pass decodes
    prefill_passes = finishes.num_prefill_seqs.sum()
    assert prefill_passes == 12 and (finishes.num_seqs - finishes.num_prefill_seqs).sum() == 12 * 2
    # each prompt's length squared is logged once, in its pass's rows: what prices an unpadded prefill group
    assert finishes.prefill_sq_tokens.sum() == (table.prompt_tokens ** 2).sum()
    assert (steps[steps.num_prefill_seqs == 0].prefill_sq_tokens == 0).all()
    real_run.release_engine()
    assert not real_run._built


@pytest.mark.parametrize("policy", [QLLM(max_batch_size=4), FCFS(max_batch_size=4)])
def test_serving_with_pass_graphs_loses_nothing(tmp_path, monkeypatch, policy):
    """engine.pass_graphs: prefill and mixed layers through the pass runner (eagerly, on the CPU); every request
    finishes once with the tokens asked, and the runner ran layers."""
    from real.passgraphs import PassRunner
    real_run.release_engine()
    base = spec(300.0)
    settings = dataclasses.replace(base.engine, pass_graphs=True)
    run = dataclasses.replace(base, policy=policy, policy_name=type(policy).__name__.lower(), engine=settings)
    layers, runner_layer = [], PassRunner.run_layer
    monkeypatch.setattr(PassRunner, "run_layer", lambda self, batch: (layers.append(batch.layout.num_tokens),
                                                                       runner_layer(self, batch)))
    table, summary = real_run.serve(run, tmp_path)
    engine = real_run._built[0].engine
    assert summary["run"]["pass_graphs"] and len(layers) >= engine.num_layers
    assert len(table) == 12 and table.request_id.is_unique and (table.generated_tokens == 3).all()
    assert engine.pool.num_free == engine.pool.num_slots
    real_run.release_engine()


def test_a_cut_model_serves_at_its_depth_and_says_so(tmp_path):
    """`engine.num_layers` cuts the preset's layers: every pass ends after that many, and summary.json records it
    (sim.validate simulates the run at that depth)."""
    real_run.release_engine()
    cut = dataclasses.replace(spec(100.0), engine=real_run.EngineSettings(num_slots=8, graphs=True, num_layers=2))
    table, summary = real_run.serve(cut, tmp_path)
    assert real_run._built[0].engine.num_layers == 2 and summary["run"]["num_layers"] == 2
    assert len(table) == 12 and (table.generated_tokens == 3).all()
    steps = pd.read_parquet(tmp_path / "steps.parquet")
    assert (steps[steps.kind == "finish"].to_layer == 2).all()
    real_run.release_engine()


@pytest.mark.parametrize("layers", [None, 2])
def test_a_local_checkpoint_serves_with_its_own_weights(tmp_path, layers):
    """`engine.model` may name a checkpoint folder: the engine serves its weights (the layers a cut keeps), and
    every request finishes with the tokens asked."""
    real_run.release_engine()
    saved = build_model(preset_config("tiny-mixtral"), "cpu", seed=3)
    saved.save_pretrained(tmp_path / "ckpt")
    run = dataclasses.replace(spec(100.0), engine=real_run.EngineSettings(model=str(tmp_path / "ckpt"), num_slots=8,
                                                                          graphs=True, num_layers=layers))
    table, summary = real_run.serve(run, tmp_path)
    served = real_run._built[0].engine.model.state_dict()
    assert summary["run"]["engine"] == str(tmp_path / "ckpt") and summary["run"]["num_layers"] == (layers or 4)
    kept = {k: v for k, v in saved.state_dict().items() if not k.startswith("model.layers.")
            or int(k.split(".")[2]) < (layers or 4)}
    assert served.keys() == kept.keys() and all(torch.equal(served[k], v) for k, v in kept.items())
    assert len(table) == 12 and table.request_id.is_unique and (table.generated_tokens == 3).all()
    real_run.release_engine()


def test_a_replay_with_progress_says_what_it_does_and_counts_every_request(tmp_path, capsys):
    """`progress`: the build announced, then a bar that ends at every request finished and started; the replay's
    results are the same twelve requests."""
    real_run.release_engine()
    table, _ = real_run.serve(dataclasses.replace(spec(100.0), progress=True), tmp_path)
    err = capsys.readouterr().err
    assert "building tiny-mixtral on cpu" in err and "12/12" in err and "started 12" in err
    assert len(table) == 12 and (table.generated_tokens == 3).all()
    real_run.serve(spec(100.0), tmp_path)
    err = capsys.readouterr().err
    assert "building" not in err and "replay" not in err  # off by default (and in every timed run)
    real_run.release_engine()


@pytest.mark.parametrize("layers", [0, -3, 1.5, True, "16"])
def test_a_bad_layer_count_is_refused(layers):
    with pytest.raises(ValueError, match="engine.num_layers must be a whole number"):
        real_run.EngineSettings(num_layers=layers)


def test_a_too_short_kv_slot_is_an_error(tmp_path):
    short = spec(100.0)
    short = real_run.ServeSpec(short.policy, "qllm", short.workload,
                               real_run.EngineSettings(num_slots=8, max_len=8), max_batch_size=4)
    with pytest.raises(ValueError, match="max_len=8"):
        real_run.serve(short, tmp_path)
    with pytest.raises(ValueError, match="run_ahead"):
        real_run.EngineSettings(run_ahead=0)
    with pytest.raises(ValueError, match="priority_stream"):
        real_run.EngineSettings(priority_stream="maybe")
    with pytest.raises(ValueError, match="pool_prewarm_gib"):
        real_run.EngineSettings(pool_prewarm_gib=-1.0)
    for bad in (-1.0, "often", True):
        with pytest.raises(ValueError, match="rehearse_us"):
            real_run.EngineSettings(rehearse_us=bad)
    for bad in (0, 2.5, "wide", True):
        with pytest.raises(ValueError, match="graph_key_step"):
            real_run.EngineSettings(graph_key_step=bad)


@pytest.mark.parametrize("policy, settings, lane", [
    (FCFS(), {}, False),  # a pass starts when the last one is issued: no layer to preempt, no second batch beside it
    (FCFS(), {"pass_overlap": True}, True),
    (QLLM(), {}, True),
    (QLLM(granularity=Granularity.EXPERT), {}, True),
    (QLLM(), {"priority_stream": False}, False),
    (FCFS(), {"priority_stream": False, "pass_overlap": True}, False),
])
def test_only_preempting_policies_take_the_urgent_stream_unless_passes_may_overlap(policy, settings, lane):
    assert real_run.lane_for(policy, real_run.EngineSettings(**settings)) is lane


@pytest.mark.parametrize("policy, setting, graphs", [
    (FCFS(), None, False), (QLLM(), None, True), (QLLM(granularity=Granularity.EXPERT), None, True),
    (FCFS(), True, True), (QLLM(), False, False)])
def test_pass_graphs_follow_the_policy_unless_set(policy, setting, graphs):
    settings = real_run.EngineSettings(pass_graphs=setting)
    assert real_run.pass_graphs_for(policy, settings) is graphs
    assert settings.recorded(policy)["pass_graphs"] is graphs  # summary.json: as resolved
    with pytest.raises(ValueError, match="pass_graphs"):
        real_run.EngineSettings(pass_graphs="yes")


def test_an_fcfs_serve_runs_without_the_lane(tmp_path):
    fcfs = dataclasses.replace(spec(100.0), policy=FCFS(max_batch_size=4), policy_name="fcfs")
    table, summary = real_run.serve(fcfs, tmp_path)
    assert not summary["run"]["lane"] and summary["run"]["urgent_batches"] == 0
    assert len(table) == 12 and (table.generated_tokens == 3).all()


def test_a_multirun_varying_only_how_the_server_drives_the_engine_reuses_it():
    settings = real_run.EngineSettings(num_slots=4)
    engine = real_run.build_engine(settings, 128, 4)
    for server_only in ({"defer_tokens": False}, {"head_stops": True}, {"stage_stops": False}, {"run_ahead": 2},
                        {"rehearse_us": 250.0},
                        {"pass_overlap": True}):
        assert real_run.build_engine(real_run.EngineSettings(num_slots=4, **server_only), 128, 4) is engine
    assert real_run.build_engine(real_run.EngineSettings(num_slots=5), 128, 4) is not engine
    real_run.release_engine()


def test_prepare_builds_every_bucket_up_to_the_batch_size():
    model = build_model(preset_config("tiny-mixtral"), seed=0)
    engine = Engine(model, KVPool.allocate_for(model.config, 4, 600, "cpu", torch.float32), graphs=True)
    assert engine.runner.prepare(max_batch=5) == 4 * 3  # sizes 1, 2, 4, 8 x keys 256, 512, 600
    assert {size for size, _ in engine.runner.buckets} == set(BUCKET_SIZES[:4])
    assert {keys for _, keys in engine.runner.buckets} == {256, 512, 600}


def test_cpu_timeline_marks_host_times_from_the_start():
    ticks = iter(range(10, 100))
    timeline = DeviceTimeline(torch.device("cpu"), clock=lambda: float(next(ticks)))
    assert timeline.start() == 10.0
    marks = [timeline.mark(), timeline.mark(throttle=True), timeline.mark()]
    assert marks == [0, 1, 2] and timeline.times_s() == [1.0, 2.0, 3.0]


class FakeEvent:
    """Done after `pending` queries; `synchronize` finishes it at once."""

    def __init__(self, pending: int) -> None:
        self.pending, self.synced = pending, False

    def query(self) -> bool:
        self.pending -= 1
        return self.pending < 0

    def synchronize(self) -> None:
        self.synced = True


@pytest.mark.parametrize("arrival_at, left", [(None, 1), (2, 3), (6, 2)])
def test_throttle_wait_ends_early_on_an_arrival(arrival_at, left):
    """Depth 1 with three advances queued: the host waits for two; an arrival (the `arrival_at`-th poll)
    ends the wait with the rest still queued, so the policy decides at once."""
    queue = deque([FakeEvent(3), FakeEvent(3), FakeEvent(3)])
    polls = iter(range(1, 100))
    _wait(queue, 1, None if arrival_at is None else lambda: next(polls) >= arrival_at)
    assert len(queue) == left


def test_throttle_without_interrupt_blocks_on_each_event():
    events = [FakeEvent(5), FakeEvent(5)]
    _wait(deque(events), 1, None)
    assert events[0].synced and not events[1].synced


def test_the_wait_calls_idle_between_polls_and_every_limits_its_rate():
    """`idle` runs after each poll that found the device busy and no arrival (the server's rehearsals), never
    after the poll that saw an arrival; `every` calls its function at most once per period."""
    idles = []
    _wait(deque([FakeEvent(6)]), 0, lambda: False, lambda: idles.append(1))
    assert len(idles) == 6  # six busy polls
    _wait(deque([FakeEvent(6)]), 0, lambda: True, lambda: idles.append(2))
    assert 2 not in idles
    now, calls = [0.0], []
    limited = every(2.0, lambda: calls.append(now[0]), clock=lambda: now[0])
    for t in (0.0, 1.0, 2.0, 2.5, 4.5):
        now[0] = t
        limited()
    assert calls == [0.0, 2.0, 4.5]


def test_gc_watch_records_each_collection_and_its_pause():
    ticks = iter([1.0, 1.5, 2.0, 2.25])
    with GCWatch(clock=lambda: next(ticks)) as watch:
        gc.collect(0)
        gc.collect(2)
    assert [g for g, _ in watch.pauses] == [0, 2]
    assert watch.summary() == {"collections": [1, 0, 1], "max_pause_ms": 500.0, "total_pause_ms": 750.0}
    assert watch._callback not in gc.callbacks


def test_hostprof_times_the_start_path_of_a_real_replay(tmp_path):
    """In a subprocess: its timers wrap module functions for the whole process."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "real.hostprof", "policy=qllm", "rate=50", "num_requests=6",
                          "workload.output_mode=fixed", "workload.fixed_output_tokens=2", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    counts = {line.split(" n=")[0].strip(): int(line.split(" n=")[1].split()[0]) for line in out.stdout.splitlines()
              if " n=" in line}
    # every start embeds once (the warm-up's starts too); how many starts one consult makes depends on timing
    assert counts["engine.start"] == counts["embed"] >= 6 and counts["consult"] >= 1 and counts["bookkeep"] >= 1
    assert 1 <= counts["engine.start [one prompt]"] <= counts["engine.start"]  # the warm-up's single prompts at least
    assert (tmp_path / "requests.parquet").exists()  # the replay itself ran and wrote its results
