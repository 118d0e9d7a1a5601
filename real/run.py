"""One serving run on the real engine: trace in, the simulator's tables out (source=real)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd
import torch

from calibrate.hostspeed import probe_s
from policies import Granularity, Policy, Request, SchedulerState
from real import hostcpu, starttrace
from real import model as models
from real.devicetrail import DeviceTrail
from real.engine import Engine
from real.gcwatch import GCWatch
from real.graphs import KEY_STEP
from real.kv import KVPool
from real.lanes import PriorityLane, urgent_streams
from real.lanes import warm_up as warm_up_lanes
from real.progress import ReplayProgress, say
from real.prompts import prompt_ids
from real.server import ReplayServer
from real.stallwatch import StallWatch
from real.steplog import write_steps
from real.timeline import DeviceTimeline, every
from sim.results import requests_table, summarize
from sim.workload import WorkloadConfig, generate_trace, read_trace, to_requests, write_trace

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EngineSettings:
    """`num_slots=None` sizes the KV pool from free GPU memory (`kv_memory_fraction` of what is left
    after `kv_reserve_gib`)."""

    model: str = "tiny-mixtral"  # a preset (real.model.PRESETS) or a local checkpoint directory
    # the model's layers cut to this many (None: all): a model's per-layer timing on a GPU too small for all of
    # its weights (Mixtral-8x7B's 32 layers need an H200; 16 fit an H100), with the simulator told the same
    num_layers: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    num_slots: int | None = 64
    kv_memory_fraction: float = 0.9
    kv_reserve_gib: float = 16.0  # kept out of the KV pool: activations, CUDA graphs' pool, library workspaces
    max_len: int | None = None  # KV slot length; None: the trace's longest request, rounded up to 256
    graphs: bool | None = None  # None: the fast path on CUDA (sync-free experts, CUDA graphs), HF's loop on CPU
    priority_stream: bool = True  # a batch started while the device is busy runs on a high-priority stream (real.lanes)
    pool_prewarm_gib: float = 2.0  # per stream, cached by the allocator after the warm-up (prewarm_pools)
    # decode graphs' key lengths round up to a multiple of this (real.graphs): fewer graphs, more keys read
    graph_key_step: int = KEY_STEP
    # how the server drives the engine: not compared, so a multirun that varies them reuses the built engine
    # advances the GPU may hold while the server decides (real.timeline)
    run_ahead: int = field(default=1, compare=False)
    # an arrival also ends a stepped layer between stages (H200: reaction p99 6.4 -> 3.9 ms)
    stage_stops: bool = field(default=True, compare=False)
    # an arrival also ends the wait for a pass's last layer, before its LM head
    head_stops: bool = field(default=False, compare=False)
    # the host does not wait for a pass's tokens: a next pass reads them on the device (real.pending)
    defer_tokens: bool = field(default=True, compare=False)
    # an iteration-level policy's pass may also take the urgent stream, beside the pass still on the device
    pass_overlap: bool = field(default=False, compare=False)
    # while the host waits for the device, it rehearses a pass start this often (0: never; Engine.rehearse)
    rehearse_us: float = field(default=250.0, compare=False)
    # the rehearsal launches too: its copy, embedding and event on a stream of its own (Engine.rehearse); H100:
    # urgent starts' host time to their first kernel p50 -13 to -22%, LS reaction p99 -16 to -33% (BENCHMARKS.md)
    rehearse_launch: bool = field(default=True, compare=False)
    # an arrival during a consult (a batch's start) is decided on before the next layer is issued
    start_checks: bool = field(default=False, compare=False)
    # a pass's fresh prompts attended as one unpadded group (Engine.varlen_prefill; both are warmed up). H100,
    # Qwen3-30B-A3B, 8 pairs: tokens/s x1.00-1.15, urgent filled starts' host time p50 -40% (BENCHMARKS.md)
    varlen_prefill: bool = field(default=True, compare=False)
    # stepped attention with the pass's rotary tables made once and q, k rotated together (Engine.lean_attention:
    # the same floats in fewer host calls). H100, Qwen3-30B-A3B, fcfs, 6 pairs: a stepped prefill layer's host issue
    # 0.5 ms shorter, LS TTFT at 18 req/s 0.84 -> 0.65 s (BENCHMARKS.md, session 28)
    lean_attention: bool = field(default=True, compare=False)
    # a pure-decode batch's next pass derived on the device from its last one (Engine.carry_decode, real.carry: no
    # host arrays, no copy, no placeholder fill at its start). Experimental: 2 of 5 H100 runs with it stalled (session 22);
    # so did one without it in session 23 (BENCHMARKS.md)
    carry_decode: bool = field(default=False, compare=False)
    # a new sequence takes a finished request's KV slot while that request's last pass is still on the device, its
    # batch's stream waiting for the pass on the device instead of the host (ReplayServer.slot_fences)
    slot_fences: bool = field(default=False, compare=False)
    # a batch that gives the urgent lane up to a starting batch joins the main stream once that batch's first layer is
    # issued, not on its start path (ReplayServer.defer_joins, real.lanes.Join)
    defer_joins: bool = field(default=False, compare=False)
    # layers of batches with prompt tokens as CUDA graphs too (Engine.pass_graphs, real.passgraphs; always captured
    # with the decode graphs, so runs of one process may differ in it); None: `pass_graphs_for` the policy
    pass_graphs: bool | None = field(default=None, compare=False)
    # the serving loop's thread on this CPU alone (-1: the highest allowed; real.hostcpu); None: wherever
    host_cpu: int | None = field(default=None, compare=False)
    # stamps on each batch start's host path, written as starts.parquet (real.starttrace; a replay's)
    trace_starts: bool = field(default=False, compare=False)
    # a replay with a batch in flight and no progress for this long ends with a message and exit status 3
    # (real.stallwatch); 0: it waits forever
    stall_timeout_s: float = field(default=60.0, compare=False)
    # a stalled process stays this long after the watch's report before it ends (time for cuda-gdb to attach:
    # real.sweepwatch)
    stall_hold_s: float = field(default=0.0, compare=False)
    # an event after each piece of device work the engine issues, so that a stall's report says, per stream, where
    # the device stopped (real.devicetrail; a few µs of host time per layer, so off by default)
    device_trail: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("engine.device=cuda but no CUDA device is available")
        if self.pool_prewarm_gib < 0:
            raise ValueError(f"engine.pool_prewarm_gib must be >= 0, got {self.pool_prewarm_gib}")
        if isinstance(self.rehearse_us, bool) or not isinstance(self.rehearse_us, int | float) or self.rehearse_us < 0:
            raise ValueError(f"engine.rehearse_us must be a number >= 0, got {self.rehearse_us!r}")
        if self.host_cpu is not None and (isinstance(self.host_cpu, bool) or not isinstance(self.host_cpu, int)
                                          or self.host_cpu < -1):
            raise ValueError(f"engine.host_cpu must be a CPU number, -1 (the last) or null, got {self.host_cpu!r}")
        if isinstance(self.graph_key_step, bool) or not isinstance(self.graph_key_step, int) or self.graph_key_step < 1:
            raise ValueError(f"engine.graph_key_step must be a whole number >= 1, got {self.graph_key_step!r}")
        for name in ("stall_timeout_s", "stall_hold_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"engine.{name} must be a number of seconds >= 0, got {value!r}")
        if self.num_layers is not None and (isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int)
                                            or self.num_layers < 1):
            raise ValueError(f"engine.num_layers must be a whole number >= 1 or null, got {self.num_layers!r}")
        if self.run_ahead < 1:
            raise ValueError(f"engine.run_ahead must be >= 1, got {self.run_ahead}")
        for name in ("priority_stream", "stage_stops", "head_stops", "defer_tokens", "pass_overlap",
                     "start_checks", "trace_starts", "rehearse_launch", "varlen_prefill", "lean_attention",
                     "carry_decode", "slot_fences", "defer_joins", "device_trail"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"engine.{name} must be true or false, got {getattr(self, name)!r}")
        if self.pass_graphs is not None and not isinstance(self.pass_graphs, bool):
            raise ValueError(f"engine.pass_graphs must be true, false or null, got {self.pass_graphs!r}")


    def recorded(self, policy: Policy) -> dict:
        """The switches of how the server drove the engine for `policy`, as a run's summary.json records them
        (`real.report --by`, `real.starttrace --by` and `sim.validate` read them back); replay and HTTP serving
        alike. `pass_graphs` as it was resolved for the policy (`pass_graphs_for`)."""
        return {"pass_graphs": pass_graphs_for(policy, self), **{name: getattr(self, name) for name in (
            "graph_key_step", "run_ahead", "priority_stream", "pass_overlap", "stage_stops", "head_stops",
            "defer_tokens", "rehearse_us", "rehearse_launch", "varlen_prefill", "lean_attention", "start_checks",
            "trace_starts", "pool_prewarm_gib", "carry_decode", "slot_fences", "defer_joins", "device_trail")}}


@dataclass(frozen=True)
class ServeSpec:
    policy: Policy
    policy_name: str
    workload: WorkloadConfig
    engine: EngineSettings
    seed: int = 0
    max_batch_size: int = 32
    slo_s: float = 3.0
    trace_path: str | None = None
    progress: bool = False  # the run's stages and a bar of finished requests on stderr (real.progress)


@dataclass
class _Built:
    settings: EngineSettings
    max_len: int
    max_batch: int
    engine: Engine


_built: list[_Built] = []  # the last engine, reused by the next run of a multirun (weights take a minute)


def build_engine(settings: EngineSettings, max_len: int, max_batch: int) -> Engine:
    """The engine for a run, warmed up; the previous run's engine when the settings match."""
    if _built and (_built[0].settings, _built[0].max_len, _built[0].max_batch) == (settings, max_len, max_batch):
        pool = _built[0].engine.pool
        if pool.num_free == pool.num_slots:  # a run that failed may have left slots taken: rebuild then
            return _built[0].engine
    release_engine()
    if settings.num_slots is None and not settings.device.startswith("cuda"):
        raise ValueError("engine.num_slots=null sizes the KV pool from GPU memory: set a number on the CPU")
    model = models.build_or_load(settings.model, model_config(settings), settings.device, DTYPES[settings.dtype])
    num_slots = settings.num_slots or slots_that_fit(model.config, max_len, settings)
    pool = KVPool.allocate_for(model.config, num_slots, max_len, settings.device, DTYPES[settings.dtype])
    on_cuda = settings.device.startswith("cuda")
    fast = on_cuda if settings.graphs is None else settings.graphs
    engine = Engine(model, pool, grouped_experts=fast and on_cuda, graphs=fast, graph_key_step=settings.graph_key_step)
    engine.warm_up(max_batch)
    if on_cuda and settings.priority_stream:
        warm_up_lanes(engine, max_batch)
    if on_cuda and settings.pool_prewarm_gib > 0:
        streams = urgent_streams(engine.device) if settings.priority_stream else ()
        prewarm_pools(engine.device, settings.pool_prewarm_gib, streams)
    _built.append(_Built(settings, max_len, max_batch, engine))
    return engine


def model_config(settings: EngineSettings):
    """The config of the preset or local checkpoint `settings.model`, cut to `settings.num_layers` where set."""
    layers = {} if settings.num_layers is None else {"num_hidden_layers": settings.num_layers}
    return models.model_config(settings.model, **layers)


def pass_graphs_for(policy: Policy, settings: EngineSettings) -> bool:
    """`engine.pass_graphs`, or where it is null: on for a policy that stops between layers. Such a policy steps its
    prefill and mixed layers one at a time, each a host path of about 60 torch calls without graphs (H100,
    Qwen3-30B-A3B, qllm_catchup at 28 req/s, seeds 17-19: tokens/s x1.035-1.107 with them). An iteration-level
    policy issues whole passes back to back; with graphs its prefill passes end sooner and so admit fewer prompts
    each (fcfs: 3.1 against 4.9), more passes for the same prompts: tokens/s x0.907-0.976 (BENCHMARKS.md, session
    19)."""
    if settings.pass_graphs is not None:
        return settings.pass_graphs
    return policy.granularity >= Granularity.LAYER


def lane_for(policy: Policy, settings: EngineSettings) -> bool:
    """Whether the batches `policy` starts may take an urgent stream (real.lanes). The lane lets a batch
    started at a layer boundary go ahead of the one layer the device still holds: a preemption. An
    iteration-level policy starts a batch only at a pass's end, when the device still holds that whole pass,
    so on the urgent stream the new pass runs beside it: two batches on the GPU at once, which neither the
    policy (one running batch) nor the simulator models. On the H200 (session 10, deferred tokens) fcfs ran
    1.7-7.9 s of a run's prefill passes beside its decode passes that way, and qllm none; `pass_overlap`
    allows it, to measure what it is worth."""
    if not settings.priority_stream:
        return False
    return policy.granularity >= Granularity.LAYER or settings.pass_overlap


def prewarm_pools(device: torch.device, gib: float, streams) -> None:
    """Grow the caching allocator's pool of each stream (the current one and `streams`) by a block of `gib`,
    allocated and freed at once: the allocator keeps a freed block for its stream and splits it for later
    requests, so a replay's first batch larger than any of the warm-up's is served without a cudaMalloc.
    H200, qllm_catchup at 8 / 18 / 28 req/s, on and off, seeds 4 and 5 on two leases
    (results/real/h200_prewarm_ab, git history at d81d3dc): 2 GiB per stream took the cudaMallocs per
    replay from up to 4 to none, and LS reactions over 2 ms from 48 to 32 of 414, for 3.1-3.7 GiB more
    held by the allocator."""
    for stream in (torch.cuda.current_stream(device), *streams):
        with torch.cuda.stream(stream):
            block = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
            del block
    torch.cuda.synchronize(device)


def release_engine() -> None:
    """Drop the kept engine and free its GPU memory."""
    _built.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def slots_that_fit(config, max_len: int, settings: EngineSettings) -> int:
    """KV slots of `max_len` tokens in the free GPU memory left after the weights and the reserve."""
    free, _ = torch.cuda.mem_get_info()
    free = max(free - settings.kv_reserve_gib * 2**30, 0)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_slot = 2 * config.num_hidden_layers * max_len * config.num_key_value_heads * head_dim
    per_slot *= torch.finfo(DTYPES[settings.dtype]).bits // 8
    return max(int(free * settings.kv_memory_fraction // per_slot), 1)


@contextmanager
def watched(server: ReplayServer, settings: EngineSettings) -> Iterator[StallWatch]:
    """The serving loop under the stall watch (real.stallwatch), with the engine's device trail where
    `engine.device_trail` asks for one (GPU only): replays and the HTTP server alike. The trail is taken off after,
    since the engine may serve the next run of a sweep with its own setting."""
    engine = server.engine
    trail = engine.trail = DeviceTrail.on_cuda(engine.device) \
        if settings.device_trail and engine.device.type == "cuda" else None
    try:
        with StallWatch(lambda: len(server.steps) + server.num_consults, lambda: server.state.running is not None,
                        settings.stall_timeout_s, report=trail.report if trail else None,
                        hold_s=settings.stall_hold_s) as watch:
            yield watch
    finally:
        engine.trail = None


def make_server(engine: Engine, policy: Policy, settings: EngineSettings, state: SchedulerState,
                prompt_ids) -> ReplayServer:
    """The serving loop over `engine` as `settings` drive it (trace replay and the HTTP server alike)."""
    engine.varlen_prefill, engine.lean_attention = settings.varlen_prefill, settings.lean_attention
    engine.carry_decode, engine.carries = settings.carry_decode, []
    engine.pass_graphs = pass_graphs_for(policy, settings)
    rehearse_s = settings.rehearse_us * 1e-6
    if settings.rehearse_launch and rehearse_s > 0:
        for _ in range(4):  # the rehearsals' stream, pinned ring and allocator pool, before any timed work
            engine.rehearse(launch=True)
    timeline = DeviceTimeline(engine.device, depth=settings.run_ahead,
                              idle=every(rehearse_s, partial(engine.rehearse, launch=settings.rehearse_launch))
                              if rehearse_s > 0 else None)
    on_cuda = engine.device.type == "cuda"
    lane = PriorityLane(urgent_streams(engine.device) if on_cuda and settings.priority_stream else (),
                        enabled=lane_for(policy, settings))
    return ReplayServer(engine, policy, state, prompt_ids, timeline=timeline, lane=lane,
                        stage_stops=settings.stage_stops, head_stops=settings.head_stops,
                        defer_tokens=settings.defer_tokens, start_checks=settings.start_checks,
                        slot_fences=settings.slot_fences, defer_joins=settings.defer_joins)


def prompt_token_ids(seed: int, vocab_size: int):
    """Each request's prompt ids (real.prompts), as the serving loop asks for them."""
    def ids(request: Request) -> list[int]:
        return prompt_ids(seed, vocab_size, request.request_id, request.num_prompt_tokens)
    return ids


def serve(spec: ServeSpec, out_dir: Path) -> tuple[pd.DataFrame, dict]:
    trace = read_trace(spec.trace_path) if spec.trace_path else generate_trace(spec.workload, spec.seed)
    write_trace(trace, out_dir / "trace.csv")  # the simulator replays exactly this
    longest = int((trace.prompt_tokens + trace.output_tokens).max())
    max_len = spec.engine.max_len or -(-longest // 256) * 256
    if longest > max_len:
        raise ValueError(f"engine.max_len={max_len} is shorter than the trace's longest request ({longest} tokens)")
    say(f"building {spec.engine.model} on {spec.engine.device} (weights, KV pool, warm-up) ...", spec.progress)
    engine = build_engine(spec.engine, max_len, spec.max_batch_size)
    host_probe_s = probe_s(engine.model, engine.pool, engine.device.type)  # the host's speed (calibrate.hostspeed)
    requests = to_requests(trace)
    for request in requests:
        request.kv_unit_tokens = max_len  # one slot per request: the policy's KV budget counts slots
    state = SchedulerState(kv_capacity_tokens=engine.pool.num_free * max_len, max_batch_size=spec.max_batch_size)
    server = make_server(engine, spec.policy, spec.engine, state,
                         prompt_token_ids(spec.seed, engine.model.config.vocab_size))
    lane = server.lane
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    allocator_before = allocator_counts(engine.device)
    gc.collect()
    gc.freeze()  # the weights' and engine's objects stay out of the collector's scans
    # and no collection during the replay: round 5 (H200) had 17 gen-1 collections per run of up to 2.4 ms each,
    # as long as two layers; a CPU replay of 60 requests leaves no cyclic garbage
    gc.disable()
    placement = hostcpu.Placement.of(spec.engine.host_cpu)
    try:
        with placement.loop_thread(), GCWatch() as collections, \
                (starttrace.recording() if spec.engine.trace_starts else nullcontext()) as starts, \
                watched(server, spec.engine), \
                (ReplayProgress(lambda: len(server.outputs), lambda: len(requests) - len(server.unplaced),
                                len(requests)) if spec.progress else nullcontext()):
            outcome = server.run(requests)
    finally:
        gc.enable()
        gc.unfreeze()
    num_slots = engine.pool.num_slots
    allocator = {k: v - allocator_before[k] if k in ALLOCATOR_CALLS else v
                 for k, v in allocator_counts(engine.device).items()}
    write_steps(outcome.steps, out_dir / "steps.parquet")
    if starts is not None:
        pd.DataFrame(starts.rows).to_parquet(out_dir / "starts.parquet", index=False)
    table = requests_table(outcome.requests, "real", spec.policy_name, spec.workload.rate, spec.seed)
    summary = summarize(table, spec.slo_s, outcome.busy_s)
    summary["run"] = {"policy": spec.policy_name, "mode": "replay", "rate": spec.workload.rate, "seed": spec.seed,
                      "engine": spec.engine.model, "num_layers": engine.num_layers, "device": spec.engine.device,
                      "num_slots": num_slots, "kv_slot_tokens": max_len,
                      "num_consults": outcome.num_consults,
                      **spec.engine.recorded(spec.policy), "graphs": engine.graphs,
                      "num_graphs": engine.runner.num_graphs if engine.runner else 0, "lane": lane.enabled,
                      "urgent_batches": len(lane.claims), "slot_waits": dict(server.slot_waits),
                      "start_joins": server.start_joins,
                      "host_cpu": placement.loop, "host_probe_ms": 1e3 * host_probe_s,
                      "gc": collections.summary(),
                      "allocator": allocator}
    return table, summary


ALLOCATOR_CALLS = ("num_device_alloc", "num_device_free", "num_alloc_retries", "num_sync_all_streams")
ALLOCATOR_BYTES = ("allocated_bytes.all.peak", "reserved_bytes.all.current")


def allocator_counts(device) -> dict[str, int]:
    """The caching allocator's cudaMalloc / cudaFree calls, retries after a failed allocation and
    synchronisations of all streams: each stalls the host for up to milliseconds, so a replay should
    cause none (summary.json gets their change over the replay; empty on the CPU). Also the peak of
    allocated bytes (reset at the replay's start) and the bytes the allocator holds."""
    if torch.device(device).type != "cuda":
        return {}
    stats = torch.cuda.memory_stats(device)
    return {key: int(stats.get(key, 0)) for key in ALLOCATOR_CALLS + ALLOCATOR_BYTES}
