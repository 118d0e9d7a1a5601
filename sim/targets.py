"""Issue 6's sim-vs-real targets on |error| (p50 5%, p99 10%, tokens/s 3%) and which cells of an error table
(`sim.validate.compare` rows, columns ending in " err %") are within them."""

from __future__ import annotations

import pandas as pd

TARGETS_PCT = {"p50": 5.0, "p99": 10.0, "tokens/s": 3.0}


def target_pct(column: str) -> float:
    """The target of an error column, by the statistic its name holds."""
    return next(v for k, v in TARGETS_PCT.items() if k in column)


def cells_inside(table: pd.DataFrame) -> pd.DataFrame:
    """Per row and error column, whether the error is within that metric's target."""
    columns = [c for c in table.columns if c.endswith("err %")]
    return table[columns].abs() <= [target_pct(c) for c in columns]


def within_target(table: pd.DataFrame) -> tuple[int, int]:
    """(cells within target, cells) over the error columns."""
    inside = cells_inside(table).to_numpy()
    return int(inside.sum()), inside.size
