"""A profile measured on a GPU by `calibrate/` (`python -m calibrate run model=...`): medians per
grid point of a long-format table, interpolated piecewise linearly in the sizes (bilinearly over
(batch, context) and (sequences, length) for attention). Below the grid a stage keeps its smallest
measured value; above it, it grows along its last segment; both warn once per stage.

Files in the profile directory:
- stages.csv: impl, stage, x1, x2, split, repeat, time_s [, latency_s, host_s, gpu_s] (one row per
  repeat; `split` grid = interpolated, heldout = checks only; no `impl` column = one engine);
  `layer_decode` (a whole decode layer as the implementation steps it) gives the per-stage overhead;
- passes.csv (optional): decode passes of the calibration model (1, 2, 4 layers: the per-pass
  overhead, and the per-stage one where `layer_decode` is missing) and of the full model (checks);
- events.csv or events.csv.gz (optional): merge and pause+resume costs;
- meta.json: GPU, software versions, git revision, date."""

from __future__ import annotations

import json
import warnings
from bisect import bisect_left
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sim.profile.base import AttentionLoad, Overheads

# attention_prefill_varlen: the engine's fresh prompts unpadded (real.layout.PackedGroup, engine.varlen_prefill);
# attention_prefill_lean: the same with the pass's rotary tables made beforehand (engine.lean_attention)
STAGES = {"attention_decode", "attention_prefill", "attention_prefill_varlen", "attention_prefill_lean", "router",
          "expert", "experts_layer", "lm_head", "embed", "layer_decode", "layer_prefill"}
VARLEN = "attention_prefill_varlen"
LEAN = "attention_prefill_lean"
REQUIRED = {"attention_decode", "attention_prefill", "router", "experts_layer", "lm_head"}
COLUMNS = ["stage", "x1", "x2", "split", "repeat", "time_s"]
CLOCKS = ("time_s", "latency_s", "host_s", "gpu_s")
# real.passgraphs' largest bucket (ROW_SIZES[-1], SEQ_SIZES[-1]): larger batches with prompts run stage by stage
PASS_GRAPH_TOKENS, PASS_GRAPH_SEQS = 4096, 64
# real.graphs.BUCKET_SIZES: a replayed decode layer runs its router and experts on the whole padded bucket
DECODE_GRAPH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
# events.csv rows (with a `batch` column) of served graph-replayed decode layers' device time beyond their stages
# (calibrate.serving); a batch size needs this many of them to stand in for the calibration passes' fix
GRAPH_LAYER, MIN_GRAPH_ROWS = "graph_layer", 10
SERVED = ("engine", "engine-graphs")  # the implementations real.run serves with (calibrate.serving)
PASS_IMPL = {"engine": "engine", "engine-graphs": "engine-graphs", "hf": "hf-grouped_mm"}  # stage set -> the passes that check it


class MeasuredProfileError(ValueError):
    """Missing or malformed profile files."""


class GridWarning(UserWarning):
    """A lookup outside a stage's measured grid: below it the first point's time is used, above it the last two
    points' slope carries on. `stage` and `value` let a caller of many simulations sum them up (sim.gridnotes)."""

    def __init__(self, stage: str, value: float, above: bool):
        how = "extrapolating" if above else "using its first point"
        super().__init__(f"profile stage {stage}: {value:g} is outside the measured grid; {how}")
        self.stage, self.value, self.above = stage, value, above


@dataclass(frozen=True)
class Curve:
    """time(x1[, x2]) on a rectangular grid of medians: [len(x1), len(x2)] seconds."""

    stage: str
    x1: np.ndarray
    x2: np.ndarray
    table: np.ndarray
    warned: set = field(default_factory=set, compare=False)

    def __call__(self, a: float, b: float = 0.0) -> float:
        column = np.array([self._line(self.x1, self.table[:, j], a) for j in range(len(self.x2))])
        return float(column[0] if len(self.x2) == 1 else self._line(self.x2, column, b))

    def many(self, xs: np.ndarray) -> np.ndarray:
        """Vectorised 1-D lookup, same rule as a call."""
        return self._line(self.x1, self.table[:, 0], np.asarray(xs, dtype=float))

    def _line(self, xs: np.ndarray, ys: np.ndarray, x):
        if np.any(x < xs[0]) or np.any(x > xs[-1]):
            above = bool(np.any(x > xs[-1]))
            self._warn(float(np.max(x)) if above else float(np.min(x)), above)
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0) if len(xs) > 1 else 0.0
        return np.interp(x, xs, ys) + slope * np.maximum(np.asarray(x, dtype=float) - xs[-1], 0.0)

    def _warn(self, value: float, above: bool) -> None:
        if self.stage not in self.warned:
            self.warned.add(self.stage)
            warnings.warn(GridWarning(self.stage, value, above), stacklevel=4)


def load_table(directory: Path, name: str = "stages.csv", columns: list[str] = COLUMNS) -> pd.DataFrame:
    path = Path(directory) / name
    if not path.exists():
        raise MeasuredProfileError(f"no profile at {path} (measure one: python -m calibrate run model=...)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MeasuredProfileError(f"{path}: not a readable CSV table ({error})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MeasuredProfileError(f"{path}: missing column(s) {', '.join(missing)}")
    clocks = [c for c in CLOCKS if c in table.columns]
    if table[columns + clocks].isna().any().any():
        raise MeasuredProfileError(f"{path}: empty (NaN) cells")
    if "stage" in table and (table[clocks] <= 0).any().any():
        raise MeasuredProfileError(f"{path}: non-positive times")
    if "stage" in table:
        unknown = set(table.stage) - STAGES
        if unknown:
            raise MeasuredProfileError(f"{path}: unknown stage(s) {', '.join(sorted(unknown))}")
        if "impl" not in table:
            table["impl"] = "engine"
    return table


# Stages whose repeats fall into two modes, each in a large share of them: a point's median then jumps
# between the modes, while a pass pays their mean. The engine's `embed` (the layout's host-to-device copy
# and the gather behind it) takes about 9 or 17 us per repeat from 17 sequences on, in shares that vary
# from point to point, on the H100 and the H200 (calibrate.embeddiag); the medians' held-out error was 26%
# (H200) and 47% (H100). Their mean leaves out the top and bottom TRIM of the repeats: on the H100 single
# repeats took up to 2 ms (the host late behind the sleep kernel), which a plain mean of 100 follows.
MEAN_STAGES = frozenset({"embed"})
TRIM = 0.1


def trimmed_mean(values: pd.Series) -> float:
    """The mean of `values` without the lowest and the highest TRIM of them."""
    ordered = np.sort(values.to_numpy())
    cut = int(TRIM * len(ordered))
    return float(ordered[cut:len(ordered) - cut].mean())


def point_times(rows: pd.DataFrame, clock: str) -> pd.Series:
    """One time per (stage, x1, x2) from its repeats: the median (robust to a stray slow repeat), the
    trimmed mean for MEAN_STAGES."""
    grouped = rows.groupby(["stage", "x1", "x2"])[clock]
    medians, means = grouped.median(), grouped.agg(trimmed_mean)
    return medians.where(~medians.index.get_level_values("stage").isin(MEAN_STAGES), means)


def curves(table: pd.DataFrame, impl: str = "engine", split: str = "grid", clock: str = "time_s") -> dict[str, Curve]:
    rows = table[(table.impl == impl) & (table.split == split)]
    medians = point_times(rows, clock)
    out = {}
    for stage in medians.index.get_level_values(0).unique():
        grid = medians.loc[stage].unstack("x2").sort_index()
        if grid.isna().any().any():  # ragged 2-D grid: fill each row's gaps from its neighbours
            grid = grid.interpolate(axis=1, limit_direction="both")
        out[stage] = Curve(stage, grid.index.to_numpy(float), grid.columns.to_numpy(float), grid.to_numpy())
    return out


# The clock the pipelined profile charges each stage at (MeasuredProfile.layer_paths and lm_head_s): a stepped
# layer's GPU path from the device times, its host path from the issue times (a pure decode layer's from the
# whole `layer_decode`), embed and the LM head at their steady time. (`expert` only prices prefill padding.)
# calibrate.check pools the held-out errors of these (its row `read`).
READ = {"time_s": ("embed", "lm_head"),
        "host_s": ("attention_decode", "attention_prefill", VARLEN, "router", "expert", "experts_layer", "layer_decode"),
        "gpu_s": ("attention_decode", "attention_prefill", VARLEN, "router", "expert", "experts_layer")}


@dataclass
class MeasuredProfile:
    """Stage costs of one implementation: `impl` engine (real/'s stage functions, stage by stage),
    engine-graphs (the same engine with decode layers replayed as CUDA graphs: GPU time only; layers
    with prefill tokens are stepped as in `engine`) or hf
    (Hugging Face's modules). Experts: the layer's one call (`experts_layer` at the layer's token
    count) shared among experts by load.

    engine-graphs charges a pure decode layer the per-layer time of the measured graph passes (their
    slope between depths, which the stages' summed GPU times overestimate by up to 3%: a replayed graph
    has no gap between stages) where the profile has them; everything else is composed from the stages
    (`layer_prefill`, measured at equal prompt lengths, cannot price a ragged batch: its projections and
    experts run on the packed tokens, its attention on the padded ones).

    `clock` pipelined (default): a layer costs max(host path, GPU path), the GPU path being the stages'
    device times (a pass that never waits on the device overlaps the two). The host path of a pure
    decode layer is the measured whole layer's issue time (`layer_decode`); of other layers, the
    stages' issue times plus the engine's per-stage overhead. (Stages timed alone vary by up to 30%
    from one grid point to the next with the host's state, a whole layer much less: H200 Mixtral, HF's
    decode pass predicted within 4% at batch 1 / 8 / 32 this way, 7-20% off from the stages.) Router
    and experts are charged their device time and attention carries the rest of the layer. Where
    events.csv has `server_layer` (the serving engine's host work between stepped layers, from serving
    runs: calibrate.serving), the stepped engine adds it to every layer's host path, in expectation
    over its measured distribution (`_pipelined`). Any timing
    column (time_s, latency_s, host_s, gpu_s) instead charges each stage that column. `overheads`: None =
    derived from the measured passes and events."""

    directory: Path
    top_k: int = 2
    impl: str = "engine"
    clock: str = "pipelined"
    overheads: Overheads | None = None
    projection_share: float = 0.0  # attention projections' weights / one expert's (ModelSpec): see _attention
    serving: bool = True  # charge the serving engine's own costs (events.csv server_*: calibrate.serving)
    # the host's issue speed against the profile's: host-side costs (stages' issue times, the serving host's
    # per-layer and per-pass work) are multiplied by it (hosts of different leases differ by 10-15%)
    host_scale: float = 1.0
    # the engine attends fresh prompts unpadded (engine.varlen_prefill): a prefill group is priced at the
    # profile's attention_prefill_varlen curve for its packed tokens, without padding
    varlen_prefill: bool = False
    # with varlen_prefill, the engine makes a pass's rotary tables once (engine.lean_attention): the prefill group is
    # priced at the attention_prefill_lean curve (H100 Qwen3: 0.68x varlen's issue time, and a few small kernels
    # fewer on the device)
    lean_attention: bool = False
    # engine-graphs only: prefill and mixed layers replayed as graphs too (engine.pass_graphs, real.passgraphs): one
    # attention call over the KV pool, unpadded, and no host path, for batches within the runner's largest bucket
    pass_graphs: bool = False
    # the server's host work per stepped layer (events' server_layer), as quantiles of its distribution
    server_layer: tuple[float, ...] = field(init=False, default=())
    # share of a padded prefill attention call's excess over its packed equivalent that the device pays
    # (events' padding_charge, from serving runs: calibrate.serving); 1 = the padded grid call as measured
    padding_charge: float = field(init=False, default=1.0)
    # the same for a decode group's attention, priced at its longest context (events' decode_padding_charge)
    decode_padding_charge: float = field(init=False, default=1.0)
    # inside a whole pass (pass_paths, sim.pipeline): the serving host's work per stepped layer beyond its
    # stages (events' pass_layer; more while the GPU has a backlog) and between one pass's last layer and
    # the next's first (pass_host; None: the iteration overhead)
    pass_layer_s: float = field(init=False, default=0.0)
    pass_host_s: float | None = field(init=False, default=None)
    pass_busy_extra_s: float = field(init=False, default=0.0)  # events' pass_layer_busy - pass_layer
    pass_queue_layers: int = field(init=False, default=0)  # stepped layers the launch queue holds (events' pass_queue)

    def __post_init__(self) -> None:
        if not self.host_scale > 0:
            raise MeasuredProfileError(f"host_scale must be > 0, got {self.host_scale}")
        self._host_factor = 1.0  # the overheads below are derived from the profile's own host times
        self.directory = Path(self.directory)
        self.table = load_table(self.directory)
        graphs = self.impl == "engine-graphs"
        self.stage_impl = "engine" if graphs else self.impl
        if graphs and self.clock == "pipelined":
            self.clock = "gpu_s"  # a replayed layer has no host path to speak of
        needed = ("host_s", "gpu_s", "time_s") if self.clock == "pipelined" else (self.clock,)
        missing = [c for c in needed if c not in self.table]
        if missing:
            raise MeasuredProfileError(f"{self.directory}: no {', '.join(missing)} column "
                                       f"(clocks: pipelined, {', '.join(CLOCKS)})")
        self.clocks = {c: curves(self.table, self.stage_impl, clock=c) for c in needed}
        self.curves = self.clocks["time_s" if self.clock == "pipelined" else self.clock]
        self.device_curves = self.clocks["gpu_s" if self.clock == "pipelined" else self.clock]  # router, experts
        wanted = ({VARLEN} if self.varlen_prefill else set()) | ({LEAN} if self.lean else set())
        missing = (REQUIRED | wanted) - set(self.curves)
        if missing:
            raise MeasuredProfileError(f"{self.directory}: no {self.impl} measurements for {', '.join(sorted(missing))}"
                                       + (f" (calibrate with --stages {' '.join(sorted(wanted & missing))} and splice "
                                          "them in: python -m calibrate.splice)" if wanted & missing else ""))
        meta = self.directory / "meta.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {}
        self._stage_s = 0.0  # the engine's own work per stage (pipelined: inside the layer's host path)
        # only pure decode layers are replayed as graphs: prefill and mixed layers run stage by stage,
        # with the host path of the engine's stages
        self._stepped = MeasuredProfile(self.directory, self.top_k, "engine", serving=self.serving,
                                        projection_share=self.projection_share, host_scale=self.host_scale,
                                        varlen_prefill=self.varlen_prefill,
                                        lean_attention=self.lean_attention) if graphs else None
        self._graph_fix = _graph_layer_fix(self) if graphs else None  # before overheads: they use layer_s
        if self.overheads is None:
            self.overheads = measured_overheads(self)
        if self.clock == "pipelined":  # attention carries it, so that a layer costs exactly the pipelined total
            self.stage_overhead_s = self._stage_s
            self.overheads = replace(self.overheads, stage_s=0.0)
        else:
            self._stage_s = self.overheads.stage_s
        if self.serving and self.impl == "engine" and self.clock == "pipelined":  # server's stepped layers
            self.server_layer = _event_quantiles(self.directory, self._host_event("server_layer"))
            self.padding_charge = _event_share(self.directory, "padding_charge")
        if self.serving and self.impl in SERVED:
            self.decode_padding_charge = _event_share(self.directory, "decode_padding_charge")
            self.pass_layer_s = _event_median(self.directory, self._host_event("pass_layer")) or 0.0
            busy = _event_median(self.directory, self._host_event("pass_layer_busy"))
            self.pass_busy_extra_s = 0.0 if busy is None else busy - self.pass_layer_s
            self.pass_host_s = _event_median(self.directory, "pass_host")
            self.pass_queue_layers = round(_event_median(self.directory, "pass_queue") or 0)
        self._scale_host()

    def _host_event(self, event: str) -> str:
        """The serving host's per-layer work as runs that attended like this one measured it: lean runs log theirs
        apart (`<event>_lean`, calibrate.serving: lean attention cuts more of it than the stages' issue times
        show); without such rows, the others'."""
        lean = f"{event}_lean"
        return lean if self.lean and _event_median(self.directory, lean) is not None else event

    def _scale_host(self) -> None:
        """`host_scale` on everything measured on the host clock (the launch queue's depth is a count)."""
        self._host_factor = self.host_scale
        self.server_layer = tuple(self.host_scale * x for x in self.server_layer)
        self.pass_layer_s *= self.host_scale
        self.pass_busy_extra_s *= self.host_scale
        if self.pass_host_s is not None:
            self.pass_host_s *= self.host_scale

    @property
    def name(self) -> str:
        suffix = "" if self.impl == "engine" else f"-{self.impl}"
        return f"measured/{self.directory.parent.name}/{self.directory.name}{suffix}"

    def attention_s(self, load: AttentionLoad, decode_charge: float | None = None) -> float:
        """`decode_charge`: the share of a padded decode group's excess to charge; None = the profile's."""
        if self._stepped is not None and load.num_prefill_seqs:
            if self.replays(load):  # flash attention over the pool: each sequence at its own length
                return _attention(self.curves, load, varlen=self.varlen_prefill)  # no stepped attention: not lean
            return self._stepped.attention_s(load, decode_charge)
        decode = self.decode_padding_charge if decode_charge is None else decode_charge
        if self._graph_fix is not None and load.num_decode_seqs:
            call = _attention(self.curves, load, True, decode_charge=decode)
            return max(call + self._graph_fix(load.num_decode_seqs), 0.0)
        share = self.projection_share
        padded = self.impl in SERVED
        if self.clock != "pipelined":
            return _attention(self.curves, load, padded, share, decode_charge=decode, varlen=self.varlen_prefill,
                              lean=self.lean)
        host_path, gpu_path = self.layer_paths(load, decode_charge=decode)
        tokens = max(load.num_tokens, 1)
        others = self.router_s(tokens) + self.device_curves["experts_layer"](tokens)
        return self._pipelined(host_path, gpu_path) - others  # >= the attention's own GPU time

    def replayed_stages_s(self, load: AttentionLoad) -> float:
        """A graph-replayed decode layer as the simulator composes it before any graph fix: padded attention at
        the profile's decode charge, router and experts on the replayed bucket (`expert_tokens`)."""
        return self._replayed_s(load, _attention(self.curves, load, True, decode_charge=self.decode_padding_charge))

    def replayed_layer_s(self, load: AttentionLoad) -> float:
        """A graph-replayed decode layer as the simulator prices it (sim.plan): `replayed_stages_s` with its fix."""
        return self._replayed_s(load, self.attention_s(load))

    def _replayed_s(self, load: AttentionLoad, attention_s: float) -> float:
        tokens = max(self.expert_tokens(load), 1)
        return attention_s + self.router_s(tokens) + float(self.device_curves["experts_layer"](tokens))

    def replays(self, load: AttentionLoad) -> bool:
        """Whether a layer with prompt tokens is a graph replay (`pass_graphs`, within the largest bucket)."""
        return (self.pass_graphs and self._stepped is not None and load.num_tokens <= PASS_GRAPH_TOKENS
                and load.num_prefill_seqs + load.num_decode_seqs <= PASS_GRAPH_SEQS)

    def expert_tokens(self, load: AttentionLoad) -> int:
        """Tokens the router and experts run for a layer of this load. A decode layer replayed as a graph
        (engine-graphs) runs its padded bucket, padding rows included, and the engine picks the experts' path
        by the bucket's size (dense from E/k tokens): H100, Qwen3-30B-A3B, 10 sequences replay bucket 16, dense,
        0.77 ms per layer like 16 sequences, against 0.51 ms for 8 (session 20, results/real/h100_s19_round)."""
        n = load.num_tokens
        if self._stepped is None or load.num_prefill_seqs or not 0 < n <= DECODE_GRAPH_BUCKETS[-1]:
            return n
        return DECODE_GRAPH_BUCKETS[bisect_left(DECODE_GRAPH_BUCKETS, n)]

    @property
    def lean(self) -> bool:
        """Whether a stepped layer's prefill group is priced at the lean curve (engine.lean_attention; with unpadded
        groups only: the profile has no padded lean curve; graph replays attend over the pool, never lean)."""
        return self.varlen_prefill and self.lean_attention

    def _pipelined(self, host_path: float, gpu_path: float) -> float:
        """max(host, GPU) of a stepped layer, in expectation over the server's own per-layer work: that
        work varies (H200 round 6: median 0.18 ms, p90 0.54 ms), so a layer whose mean paths nearly tie
        pays for its slow draws (held-out sim-vs-real cells, round 6: 61 -> 62 of 81 against charging the
        median)."""
        if not self.server_layer:
            return max(host_path, gpu_path)
        return sum(max(host_path + x, gpu_path) for x in self.server_layer) / len(self.server_layer)

    def layer_paths(self, load: AttentionLoad, padding_charge: float | None = None,
                    decode_charge: float | None = None) -> tuple[float, float]:
        """Pipelined clock, one stepped layer: (host path, GPU path) in seconds, without the server's
        own per-layer work (`server_layer`); `padding_charge`, `decode_charge`: None = the profile's."""
        host, gpu = self.clocks["host_s"], self.clocks["gpu_s"]
        share, padded = self.projection_share, self.impl in SERVED
        tokens = max(load.num_tokens, 1)
        if not load.num_prefill_seqs and "layer_decode" in host:
            host_path = host["layer_decode"](load.num_decode_seqs)  # issue time does not grow with context
        else:
            host_path = (_attention(host, load, padded, share, varlen=self.varlen_prefill, lean=self.lean)
                         + host["router"](tokens)
                         + host["experts_layer"](tokens) + 2 * self._stage_s)
        charge = self.padding_charge if padding_charge is None else padding_charge
        decode = self.decode_padding_charge if decode_charge is None else decode_charge
        gpu_path = (_attention(gpu, load, padded, share, charge, decode, self.varlen_prefill, self.lean)
                    + gpu["router"](tokens)
                    + gpu["experts_layer"](tokens))
        return self._host_factor * host_path, gpu_path

    def pass_paths(self, load: AttentionLoad) -> tuple[float, float]:
        """One layer of a whole pass that the host issues without stopping (an iteration-level policy's:
        sim.pipeline): (host issue, GPU time without the experts) in seconds. A graph-replayed decode layer
        costs the host nothing to speak of; a stepped layer costs its stages' issue times plus the serving
        host's own work per layer inside such a pass (`pass_layer`, calibrate.serving), and no
        `server_layer`: the server does not stop between a whole pass's layers."""
        tokens = max(self.expert_tokens(load), 1)
        stepped = self._stepped or self
        replayed = self._stepped is not None and (not load.num_prefill_seqs or self.replays(load))
        if replayed or "host_s" not in stepped.clocks:
            return 0.0, self.attention_s(load) + self.router_s(tokens)  # no host path: a replay, or one clock
        host, gpu = stepped.layer_paths(load)
        return max(host + stepped.pass_layer_s, 0.0), gpu - stepped.device_curves["experts_layer"](tokens)

    def router_s(self, num_tokens: int) -> float:
        return self.device_curves["router"](num_tokens)

    def experts_s(self, loads: np.ndarray) -> np.ndarray:
        loads = np.asarray(loads, dtype=float)
        totals = loads.sum(axis=-1, keepdims=True)
        layer = self.device_curves["experts_layer"].many(np.maximum(totals / self.top_k, 1.0))  # tokens in the layer
        share = np.divide(loads, totals, out=np.zeros_like(loads), where=totals > 0)
        return layer * share

    def lm_head_s(self, num_seqs: int) -> float:
        embed = self.curves["embed"](num_seqs) if "embed" in self.curves else 0.0
        return self.curves["lm_head"](num_seqs) + embed

    @property
    def overheads_stage_s(self) -> float:
        return 0.0 if self.clock == "pipelined" else self._stage_s

    def layer_s(self, batch: int, context: int) -> float:
        """One decode layer (uniform loads) with its per-stage overheads."""
        attention = self.attention_s(AttentionLoad(num_decode_seqs=batch, decode_ctx_tokens=batch * context))
        return attention + self.router_s(batch) + float(self.device_curves["experts_layer"](batch)) + \
            2 * self.overheads_stage_s


def _attention(curves: dict[str, Curve], load: AttentionLoad, padded: bool = False,
               projection_share: float = 0.0, padding_charge: float = 1.0, decode_charge: float = 1.0,
               varlen: bool = False, lean: bool = False) -> float:
    """`padded` (the real engine): a group of sequences is attended as one [B, Q, K] call, Q and K being
    the group's longest (the grids were measured with equal lengths, so curve(B, longest) is the padded
    call). The stage's q/k/v/o projections, though, run on the packed tokens: with `projection_share`
    (their weights over one expert's) the padding's projection work, priced as that share of the
    measured one-expert FFN on the padding tokens, is taken back out. Otherwise, and for loads without
    their maxima, the mean context (decode) and the root-mean-square length (prefill: exact for both the
    linear and the quadratic work), as a variable-length kernel (TGI's, the paper's baseline) does.
    `padding_charge` < 1 charges only that share of the padded call's excess over the same sequences at
    their mean length (the engine's stepped prefill layers cost less than the equal-length grid says,
    the more so the more padding: H200 round 6, composed / measured 0.99 at 1-1.2x padding, 1.06 at 3-5x).
    `decode_charge` does the same for a padded decode group, priced at its longest context (H200, fcfs's full
    decode batches: a longest context of about 930 tokens against a mean of 258, and the layer 1.8-2.6% under
    the fully charged price). `varlen`: the prefill group is the engine's unpadded one (real.layout.PackedGroup),
    priced at the `attention_prefill_varlen` curve for its tokens at their root-mean-square length, or with `lean`
    at the `attention_prefill_lean` one (engine.lean_attention)."""
    total = 0.0
    if load.num_decode_seqs:
        mean = load.decode_ctx_tokens / load.num_decode_seqs
        call = curves["attention_decode"](load.num_decode_seqs, (padded and load.decode_max_ctx) or mean)
        if padded and load.decode_max_ctx and decode_charge < 1.0:
            packed = curves["attention_decode"](load.num_decode_seqs, mean)
            call = min(call, packed + decode_charge * max(call - packed, 0.0))
        total += call
    if load.num_prefill_seqs and varlen:
        length = max((load.prefill_sq_tokens / load.num_prefill_seqs) ** 0.5, 1.0)
        total += curves[LEAN if lean else VARLEN](load.num_prefill_tokens / length, length)
    elif load.num_prefill_seqs:
        if padded and load.prefill_max_tokens:
            call = curves["attention_prefill"](load.num_prefill_seqs, load.prefill_max_tokens)
            padding = load.num_prefill_seqs * load.prefill_max_tokens - load.num_prefill_tokens
            if projection_share and padding > 0 and "expert" in curves:
                expert = curves["expert"]
                excess = expert(load.num_prefill_tokens + padding) - expert(load.num_prefill_tokens)
                call = max(call - projection_share * max(excess, 0.0), 0.5 * call)
            if padding_charge < 1.0 and padding > 0:
                packed = curves["attention_prefill"](load.num_prefill_seqs, load.num_prefill_tokens / load.num_prefill_seqs)
                call = min(call, packed + padding_charge * max(call - packed, 0.0))
            total += call
        else:
            length = max((load.prefill_sq_tokens / load.num_prefill_seqs) ** 0.5, 1.0)
            total += curves["attention_prefill"](load.num_prefill_tokens / length, length)
    return total


def pass_medians(profile: MeasuredProfile) -> pd.DataFrame:
    """Median decode-pass seconds of the calibration model: rows (batch, context), columns layers."""
    if not (profile.directory / "passes.csv").exists():
        return pd.DataFrame()
    passes = load_table(profile.directory, "passes.csv", ["impl", "layers", "phase", "batch", "context", "time_s"])
    rows = passes[(passes.impl == PASS_IMPL.get(profile.impl, profile.impl)) & (passes.phase == "decode")
                  & (passes.layers <= 4)]
    return rows.groupby(["batch", "context", "layers"]).time_s.median().unstack("layers")


def measured_overheads(profile: MeasuredProfile) -> Overheads:
    """stage_s: the engine's own work per charged stage (two a layer) that the stage functions miss,
    from `layer_decode` (one whole decode layer as the engine steps it) minus the layer's stages
    (pipelined: host times; else the chosen column), median over batch sizes; without that stage,
    from the calibration passes (`_pass_stage_s`). iteration_s: a 2-layer pass minus its layers,
    embedding and LM head. Merge and pause+resume: events.csv. Floored at 0; 0 where not measured.
    Where events.csv has the serving engine's own gaps (`python -m calibrate serving`), those replace
    iteration (server_pass), pause (server_switch) and merge (server_merge) for the served impls."""
    stage_s = _layer_stage_s(profile) if "layer_decode" in profile.curves else _pass_stage_s(profile)
    profile._stage_s = stage_s
    iteration_s = 0.0
    med = pass_medians(profile)
    if 2 in med.columns:
        index = list(med.index)
        ends = np.array([profile.lm_head_s(n) for n, _ in index])
        predicted = np.array([profile.layer_s(n, c) for n, c in index])
        iteration_s = max(float(np.median(med[2].to_numpy() - 2 * predicted - ends)), 0.0)
    events = _event_costs(profile.directory)
    pause = events.get("pause_resume", 0.0)
    overheads = Overheads(stage_s=stage_s, iteration_s=iteration_s, pause_s=pause / 2, resume_s=pause / 2,
                          merge_s=max(events.get("merge", 0.0), 0.0))
    if profile.serving and profile.impl in SERVED and "server_pass" in events:  # measured on the server
        overheads = replace(overheads, iteration_s=events["server_pass"], merge_s=events.get("server_merge", 0.0),
                            pause_s=events.get("server_switch", 0.0), resume_s=0.0)
    return overheads


def _graph_layer_fix(profile: MeasuredProfile) -> Curve | None:
    """Per batch size: the calibration model's graph passes' time per layer (least-squares slope over all
    their depths, context 512: a 2-point slope of passes of a few ms moved by 0.1-0.2 ms per layer between
    runs) minus the stages' summed device times for that layer; None without graph passes. A serving profile
    whose events have served layers' fix (`_served_graph_fix`) takes that instead."""
    served = _served_graph_fix(profile.directory) if profile.serving else None
    if served is not None:
        return served
    if not (profile.directory / "passes.csv").exists():
        return None
    passes = load_table(profile.directory, "passes.csv", ["impl", "layers", "phase", "batch", "context", "time_s"])
    rows = passes[(passes.impl == "engine-graphs") & (passes.phase == "decode") & (passes.context == 512)
                  & (passes.layers <= 4)]  # the calibration model's: the full-model passes stay a check
    med = rows.groupby(["batch", "layers"]).time_s.median().unstack("layers")
    if med.shape[1] < 2:
        return None
    depths = med.columns.to_numpy(float)
    batches = med.index.to_numpy(float)
    measured = np.array([np.polyfit(depths, row, 1)[0] for row in med.to_numpy()])
    composed = np.array([_path(profile.curves, int(n), 512) for n in batches])
    fix = (measured - composed)[:, None]
    return Curve("graph_layer_fix", batches, np.array([0.0]), fix, warned={"graph_layer_fix"})


def _served_graph_fix(directory: Path) -> Curve | None:
    """Per batch size with at least MIN_GRAPH_ROWS of them: the median of the events' `graph_layer` rows, the
    device time of graph-replayed decode layers in serving runs beyond the stages the simulator composes for
    them (calibrate.serving). The calibration model's passes are 1 to 4 layers of a few ms, and their slope
    misses the served layer where a few tenths of a ms move it: H100 Mixtral, 16 layers served (session 32),
    composed 1.15x the served layer at 1-8 sequences and 0.82x at 25-32. None without such rows."""
    table = load_events(directory)
    if table is None or "batch" not in table:
        return None
    rows = table[table.event == GRAPH_LAYER].dropna(subset=["batch"])
    stats = rows.groupby("batch").time_s.agg(["median", "size"])
    stats = stats[stats["size"] >= MIN_GRAPH_ROWS]
    if stats.empty:
        return None
    return Curve("graph_layer_fix", stats.index.to_numpy(float), np.array([0.0]), stats["median"].to_numpy()[:, None],
                 warned={"graph_layer_fix"})


def events_file(directory: Path) -> Path | None:
    """A profile's events table: events.csv, or events.csv.gz (serving runs' events can run to 50k rows)."""
    for name in ("events.csv", "events.csv.gz"):
        if (Path(directory) / name).exists():
            return Path(directory) / name
    return None


def load_events(directory: Path) -> pd.DataFrame | None:
    path = events_file(directory)
    return None if path is None else load_table(directory, path.name, ["event", "repeat", "time_s"])


def _event_quantiles(directory: Path, event: str, n: int = 20) -> tuple[float, ...]:
    """`n` evenly spaced quantiles (mid-bins) of an event's measured costs: its distribution, cheaply."""
    if (table := load_events(directory)) is None:
        return ()
    times = table[table.event == event].time_s.to_numpy()
    return tuple(np.quantile(times, (np.arange(n) + 0.5) / n)) if len(times) else ()


def _event_share(directory: Path, event: str) -> float:
    """The median of an event's rows clipped to [0, 1], 1 without rows: a share of a price to charge, which
    unlike a cost (`_event_costs`) must not fall to 0 where its rows scatter."""
    median = _event_median(directory, event)
    return 1.0 if median is None else min(max(median, 0.0), 1.0)


def _event_median(directory: Path, event: str) -> float | None:
    """The plain median of an event's rows, None without rows: a correction that may be negative (the
    serving host faster than the calibration's), so not a cost (`_event_costs`) clipped at zero."""
    if (table := load_events(directory)) is None:
        return None
    rows = table[table.event == event].time_s
    return float(rows.median()) if len(rows) else None


def _event_costs(directory: Path) -> dict[str, float]:
    """Median cost of each event; 0 where it does not stand out of its own noise (median below two
    standard errors: pause+resume is a difference of two whole passes)."""
    if (table := load_events(directory)) is None:
        return {}
    stats = table.groupby("event").time_s.agg(["median", "std", "count"]).fillna(0.0)
    significant = stats["median"] > 2 * stats["std"] / np.sqrt(stats["count"])
    return stats["median"].where(significant, 0.0).clip(lower=0.0).to_dict()


def _layer_stage_s(profile: MeasuredProfile) -> float:
    """Pipelined: the host-path addition that makes max(host path, GPU path) equal the measured
    steady-state layer, (layer - host stages) / 2, over the batch sizes where the layer is not
    GPU-bound (it also covers host work slowing down while the GPU runs, which the issue times,
    taken while the GPU sleeps, miss). Other clocks: (layer - stages) / 2 on that clock."""
    if profile.impl == "engine-graphs":
        return 0.0  # a replayed layer runs no Python between its stages
    if profile.clock == "pipelined":
        host, gpu, steady = (profile.clocks[c] for c in ("host_s", "gpu_s", "time_s"))
        layers = [(steady["layer_decode"](b, 512), _path(host, b, 512), _path(gpu, b, 512))
                  for b in steady["layer_decode"].x1]
        gaps = [(x - h) / 2 for x, h, g in layers if x > 1.02 * g]
    else:
        fit = profile.curves
        gaps = [(fit["layer_decode"](b, 512) - _path(fit, b, 512)) / 2 for b in fit["layer_decode"].x1]
    return max(float(np.median(gaps)), 0.0) if gaps else 0.0


def _pass_stage_s(profile: MeasuredProfile) -> float:
    """Per-layer cost of the calibration passes at their two largest depths a < b, (F_b - F_a) / (b - a),
    minus the layer's stages (pipelined: only where the layer is host-bound), halved."""
    med = pass_medians(profile)
    depths = sorted(med.columns)[-2:]
    if len(depths) < 2:
        return 0.0
    a, b = depths
    layer = ((med[b] - med[a]) / (b - a)).to_numpy()
    bare = np.array([profile.layer_s(n, c) for n, c in med.index])
    if profile.clock == "pipelined":
        host = np.array([_path(profile.clocks["host_s"], n, c) for n, c in med.index])
        gaps = [(x - h) / 2 for x, h, g in zip(layer, host, bare) if x > 1.02 * g]
    else:
        gaps = list((layer - bare) / 2)
    return max(float(np.median(gaps)), 0.0) if gaps else 0.0


def _path(fit: dict[str, Curve], batch: int, context: int) -> float:
    """Sum of one decode layer's stages on one clock (uniform loads)."""
    load = AttentionLoad(num_decode_seqs=batch, decode_ctx_tokens=batch * context)
    return _attention(fit, load) + fit["router"](batch) + fit["experts_layer"](batch)
