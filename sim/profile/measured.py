"""A profile measured on a GPU by `python -m calibrate.measure`: medians per grid point of a
long-format table (stage, x1, x2, split, repeat, time_s), interpolated linearly over log sizes.
Outside the grid the value is extended (linearly in size above the top, flat below) with a warning."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sim.profile.base import AttentionLoad, Overheads

STAGES = {"attention_decode", "attention_prefill", "router", "expert", "experts_layer", "lm_head", "embed"}
COLUMNS = ["stage", "x1", "x2", "split", "repeat", "time_s"]


class MeasuredProfileError(ValueError):
    """Missing or malformed profile files."""


@dataclass(frozen=True)
class Curve:
    """time(x) from grid medians; 1-D (x2 unused) or 2-D on a full (x1, x2) grid."""

    stage: str
    x1: np.ndarray
    x2: np.ndarray
    table: np.ndarray  # [len(x1), len(x2)] seconds
    warned: set = field(default_factory=set, compare=False)

    def __call__(self, a: float, b: float = 0.0) -> float:
        col = [_interp(self.x1, self.table[:, j], a, self._warn) for j in range(len(self.x2))]
        return col[0] if len(self.x2) == 1 else _interp(self.x2, np.array(col), b, self._warn)

    def many(self, xs: np.ndarray) -> np.ndarray:
        """Vectorised 1-D lookup (same rule as a call)."""
        xs = np.asarray(xs, dtype=float)
        ys = self.table[:, 0]
        if xs.size and (xs.min() < self.x1[0] or xs.max() > self.x1[-1]):
            self._warn(float(xs.max() if xs.max() > self.x1[-1] else xs.min()))
        inside = np.interp(np.log(np.clip(xs, self.x1[0], self.x1[-1])), np.log(self.x1), ys)
        slope = max((ys[-1] - ys[-2]) / (self.x1[-1] - self.x1[-2]), 0.0) if len(ys) > 1 else 0.0
        return inside + slope * np.maximum(xs - self.x1[-1], 0.0)

    def _warn(self, value: float) -> None:
        if self.stage not in self.warned:
            self.warned.add(self.stage)
            warnings.warn(f"profile stage {self.stage}: {value:g} is outside the measured grid; extrapolating",
                          stacklevel=3)


def _interp(xs: np.ndarray, ys: np.ndarray, x: float, warn) -> float:
    if x < xs[0] or x > xs[-1]:
        warn(x)
    if x <= xs[0]:
        return float(ys[0])
    if x >= xs[-1]:  # work grows linearly with size past the grid
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
        return float(ys[-1] + max(slope, 0.0) * (x - xs[-1]))
    return float(np.interp(np.log(x), np.log(xs), ys))


def load_table(directory: Path) -> pd.DataFrame:
    path = Path(directory) / "stages.csv"
    if not path.exists():
        raise MeasuredProfileError(f"no profile at {path} (measure one: python -m calibrate.measure)")
    table = pd.read_csv(path)
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise MeasuredProfileError(f"{path}: missing column(s) {', '.join(missing)}")
    if table[COLUMNS].isna().any().any() or (table.time_s <= 0).any():
        raise MeasuredProfileError(f"{path}: empty or non-positive times")
    unknown = set(table.stage) - STAGES
    if unknown:
        raise MeasuredProfileError(f"{path}: unknown stage(s) {', '.join(sorted(unknown))}")
    return table


def curves(table: pd.DataFrame, split: str = "grid") -> dict[str, Curve]:
    medians = table[table.split == split].groupby(["stage", "x1", "x2"]).time_s.median()
    out = {}
    for stage in medians.index.get_level_values(0).unique():
        grid = medians.loc[stage].unstack("x2").sort_index()
        if grid.isna().any().any():  # ragged 2-D grid: fill each row's gaps from its neighbours
            grid = grid.interpolate(axis=1, limit_direction="both")
        out[stage] = Curve(stage, grid.index.to_numpy(float), grid.columns.to_numpy(float), grid.to_numpy())
    return out


@dataclass
class MeasuredProfile:
    """Stage costs of the real engine (layer granularity: all experts of a layer in one grouped
    call, whose time is shared among experts by load)."""

    directory: Path
    top_k: int = 2
    overheads: Overheads = field(default_factory=Overheads)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.curves = curves(load_table(self.directory))
        missing = {"attention_decode", "attention_prefill", "router", "experts_layer", "lm_head"} - set(self.curves)
        if missing:
            raise MeasuredProfileError(f"{self.directory}: no measurements for {', '.join(sorted(missing))}")
        meta = self.directory / "meta.json"
        self.meta = json.loads(meta.read_text()) if meta.exists() else {}

    @property
    def name(self) -> str:
        return f"measured/{self.directory.parent.name}/{self.directory.name}"

    def attention_s(self, load: AttentionLoad) -> float:
        total = 0.0
        if load.num_decode_seqs:
            total += self.curves["attention_decode"](load.num_decode_seqs, load.decode_ctx_tokens / load.num_decode_seqs)
        if load.num_prefill_seqs:
            mean_len = load.num_prefill_tokens / load.num_prefill_seqs
            total += self.curves["attention_prefill"](load.num_prefill_seqs, mean_len)
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
