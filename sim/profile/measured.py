"""A profile measured on a GPU by `calibrate/` (`python -m calibrate run model=...`): medians per
grid point of a long-format table, interpolated piecewise linearly in the sizes (bilinearly over
(batch, context) and (sequences, length) for attention). Below the grid a stage keeps its smallest
measured value; above it, it grows along its last segment; both warn once per stage.

Files in the profile directory:
- stages.csv: impl, stage, x1, x2, split, repeat, time_s [, latency_s, host_s, gpu_s] (one row per
  repeat; `split` grid = interpolated, heldout = checks only; no `impl` column = one engine);
- passes.csv (optional): 1- and 2-layer decode passes, from which the per-stage and per-pass
  overheads are derived (the per-layer cost of a pass minus its stages);
- events.csv (optional): merge and pause+resume costs;
- meta.json: GPU, software versions, git revision, date."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sim.profile.base import AttentionLoad, Overheads

STAGES = {"attention_decode", "attention_prefill", "router", "expert", "experts_layer", "lm_head", "embed"}
REQUIRED = {"attention_decode", "attention_prefill", "router", "experts_layer", "lm_head"}
COLUMNS = ["stage", "x1", "x2", "split", "repeat", "time_s"]
CLOCKS = ("time_s", "latency_s", "host_s", "gpu_s")
PASS_IMPL = {"engine": "engine", "hf": "hf-grouped_mm"}  # stage set -> the passes that check it


class MeasuredProfileError(ValueError):
    """Missing or malformed profile files."""


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
            self._warn(float(np.max(x)) if np.any(x > xs[-1]) else float(np.min(x)))
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0) if len(xs) > 1 else 0.0
        return np.interp(x, xs, ys) + slope * np.maximum(np.asarray(x, dtype=float) - xs[-1], 0.0)

    def _warn(self, value: float) -> None:
        if self.stage not in self.warned:
            self.warned.add(self.stage)
            warnings.warn(f"profile stage {self.stage}: {value:g} is outside the measured grid; extrapolating",
                          stacklevel=4)


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


def curves(table: pd.DataFrame, impl: str = "engine", split: str = "grid", clock: str = "time_s") -> dict[str, Curve]:
    rows = table[(table.impl == impl) & (table.split == split)]
    medians = rows.groupby(["stage", "x1", "x2"])[clock].median()
    out = {}
    for stage in medians.index.get_level_values(0).unique():
        grid = medians.loc[stage].unstack("x2").sort_index()
        if grid.isna().any().any():  # ragged 2-D grid: fill each row's gaps from its neighbours
            grid = grid.interpolate(axis=1, limit_direction="both")
        out[stage] = Curve(stage, grid.index.to_numpy(float), grid.columns.to_numpy(float), grid.to_numpy())
    return out


@dataclass
class MeasuredProfile:
    """Stage costs of one implementation (`impl`: engine = real/'s stage functions, hf = Hugging
    Face's modules). Experts: the layer's grouped call (`experts_layer` at the layer's token count)
    shared among experts by load. `clock`: which timing column the costs come from (time_s: steady
    state of back-to-back calls, what a stage costs inside a pipelined pass). `overheads`: None =
    derived from the measured passes and events."""

    directory: Path
    top_k: int = 2
    impl: str = "engine"
    clock: str = "time_s"
    overheads: Overheads | None = None

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.table = load_table(self.directory)
        if self.clock not in self.table:
            raise MeasuredProfileError(f"{self.directory}: no {self.clock} column (clocks: {', '.join(CLOCKS)})")
        self.curves = curves(self.table, self.impl, clock=self.clock)
        missing = REQUIRED - set(self.curves)
        if missing:
            raise MeasuredProfileError(f"{self.directory}: no {self.impl} measurements for {', '.join(sorted(missing))}")
        meta = self.directory / "meta.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {}
        if self.overheads is None:
            self.overheads = measured_overheads(self)

    @property
    def name(self) -> str:
        suffix = "" if self.impl == "engine" else f"-{self.impl}"
        return f"measured/{self.directory.parent.name}/{self.directory.name}{suffix}"

    def attention_s(self, load: AttentionLoad) -> float:
        total = 0.0
        if load.num_decode_seqs:
            total += self.curves["attention_decode"](load.num_decode_seqs, load.decode_ctx_tokens / load.num_decode_seqs)
        if load.num_prefill_seqs:  # root-mean-square length: exact for the linear and the quadratic work
            length = max((load.prefill_sq_tokens / load.num_prefill_seqs) ** 0.5, 1.0)
            total += self.curves["attention_prefill"](load.num_prefill_tokens / length, length)
        return total

    def router_s(self, num_tokens: int) -> float:
        return self.curves["router"](num_tokens)

    def experts_s(self, loads: np.ndarray) -> np.ndarray:
        loads = np.asarray(loads, dtype=float)
        totals = loads.sum(axis=-1, keepdims=True)
        layer = self.curves["experts_layer"].many(np.maximum(totals / self.top_k, 1.0))  # tokens in the layer
        share = np.divide(loads, totals, out=np.zeros_like(loads), where=totals > 0)
        return layer * share

    def lm_head_s(self, num_seqs: int) -> float:
        embed = self.curves["embed"](num_seqs) if "embed" in self.curves else 0.0
        return self.curves["lm_head"](num_seqs) + embed

    def layer_s(self, batch: int, context: int) -> float:
        """Stages of one decode layer (uniform loads), no overheads."""
        attention = self.attention_s(AttentionLoad(num_decode_seqs=batch, decode_ctx_tokens=batch * context))
        return attention + self.router_s(batch) + float(self.curves["experts_layer"](batch))


def measured_overheads(profile: MeasuredProfile) -> Overheads:
    """stage_s: per-layer cost of a decode pass (2-layer minus 1-layer pass) minus the layer's stages,
    halved (two charged stages per layer); iteration_s: the 1-layer pass minus one layer, embedding
    and LM head. Medians over the measured batch sizes, floored at 0. Merge and pause+resume from
    events.csv. All zero where the files are absent."""
    stage_s = iteration_s = 0.0
    if (profile.directory / "passes.csv").exists():
        passes = load_table(profile.directory, "passes.csv", ["impl", "layers", "phase", "batch", "context", "time_s"])
        small = passes[(passes.impl == PASS_IMPL.get(profile.impl, profile.impl)) & (passes.phase == "decode")
                       & passes.layers.isin([1, 2])]
        med = small.groupby(["batch", "context", "layers"]).time_s.median().unstack("layers")
        if {1, 2} <= set(med.columns):
            layer = med[2] - med[1]
            stages = np.array([profile.layer_s(b, c) for b, c in med.index])
            ends = np.array([profile.lm_head_s(b) for b, _ in med.index])
            stage_s = max(float(np.median((layer.to_numpy() - stages) / 2)), 0.0)
            iteration_s = max(float(np.median(med[1].to_numpy() - layer.to_numpy() - ends)), 0.0)
    events = {}
    if (profile.directory / "events.csv").exists():
        table = load_table(profile.directory, "events.csv", ["event", "repeat", "time_s"])
        events = table.groupby("event").time_s.median().to_dict()
    pause = max(events.get("pause_resume", 0.0), 0.0)
    return Overheads(stage_s=stage_s, iteration_s=iteration_s, pause_s=pause / 2, resume_s=pause / 2,
                     merge_s=max(events.get("merge", 0.0), 0.0))
