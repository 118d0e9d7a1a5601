"""The trace file format, written and read here only, so the simulator and the real engine replay
identical traces. Columns: request_id:int, arrival_s:float, prompt_tokens:int, output_tokens:int,
priority:str ('LS'|'BE'). CSV (.csv) or parquet (.parquet, .pq), by suffix. Extra columns are dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from policies import Priority, Request
from sim.workload.config import WorkloadConfig

COLUMNS = ("request_id", "arrival_s", "prompt_tokens", "output_tokens", "priority")
INT_COLUMNS = ("request_id", "prompt_tokens", "output_tokens")
PRIORITIES = ("LS", "BE")
CSV_SUFFIXES, PARQUET_SUFFIXES = (".csv",), (".parquet", ".pq")
# floats must read back bit-identical to what write_trace wrote: pandas 3 does by default, 2.x on request
CSV_READ_OPTIONS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the problem, the column and the row."""


def write_trace(trace: pd.DataFrame, path: Path | str) -> None:
    """Validate, then write atomically (a crash never leaves a half-written trace behind)."""
    path = Path(path)
    table = validate(trace, str(path))
    tmp = path.with_name(f".{path.name}.tmp")
    if _format(path) == "parquet":
        table.to_parquet(tmp, index=False)
    else:
        table.to_csv(tmp, index=False)
    os.replace(tmp, path)


def read_trace(path: Path | str) -> pd.DataFrame:
    """The validated trace, sorted by (arrival_s, request_id). Raises TraceError."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"trace {path}: no such file")
    try:
        if _format(path) == "parquet":
            raw = pd.read_parquet(path)
        else:
            raw = pd.read_csv(path, **CSV_READ_OPTIONS)
    except TraceError:
        raise
    except Exception as error:  # noqa: BLE001 (pandas and pyarrow raise many types for a damaged file)
        problem = f"{type(error).__name__}: {error}"
        raise TraceError(f"trace {path}: cannot parse, truncated or garbled? ({problem})") from None
    return validate(raw, str(path))


def trace_rate(path: Path | str) -> float | None:
    """The arrival rate a trace file stands for: the rate of the run that wrote it (the `summary.json` beside it,
    as `sim run` and `real run` leave them), else its arrivals per second; None if it cannot be read (the replay
    then reports why). A replay of a file logs this, not the config's default rate, unless `rate=` is given."""
    path = Path(path)
    try:
        return float(json.loads((path.parent / "summary.json").read_text())["run"]["rate"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        arrivals = read_trace(path).arrival_s
    except TraceError:
        return None
    span = float(arrivals.max() - arrivals.min()) if len(arrivals) > 1 else 0.0
    return (len(arrivals) - 1) / span if span > 0 else None


def replayed_workload(workload: WorkloadConfig, trace: str | None, overrides: Sequence[str]) -> WorkloadConfig:
    """The workload a run records: replaying a trace file without `rate=` among the command's `overrides`, at the
    trace's rate (`trace_rate`), not the config's default; the tables and `sim.validate` match runs by it."""
    if trace is None or any(o.lstrip("+~").split("=", 1)[0] == "rate" for o in overrides):
        return workload
    rate = trace_rate(trace)
    return workload if rate is None else replace(workload, rate=rate)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES + PARQUET_SUFFIXES:
        return "parquet" if suffix in PARQUET_SUFFIXES else "csv"
    known = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
    raise TraceError(f"trace {path}: unknown suffix {path.suffix!r}, use one of {known}")


def validate(raw: pd.DataFrame, where: str = "trace") -> pd.DataFrame:
    """The trace's five columns, coerced to their dtypes, checked, sorted by arrival.
    Row numbers in messages count data rows from 0, in the order given (before sorting)."""
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise TraceError(f"{where}: missing column(s) {', '.join(missing)}")
    table = raw[list(COLUMNS)].reset_index(drop=True)
    for column in COLUMNS:
        missing_value = "missing value (NaN or empty cell; truncated file?)"
        _fail_where(table, column, table[column].isna(), where, missing_value)
    table = table.assign(**{c: _numeric(table, c, where) for c in COLUMNS if c != "priority"})
    table["priority"] = table["priority"].astype(str).str.strip().str.upper()
    _check_rules(table, where)
    return table.sort_values(["arrival_s", "request_id"], kind="stable").reset_index(drop=True)


def _numeric(table: pd.DataFrame, column: str, where: str) -> pd.Series:
    values = pd.to_numeric(table[column], errors="coerce")
    _fail_where(table, column, values.isna(), where, "not a number")
    if column not in INT_COLUMNS:
        return values.astype("float64")
    _fail_where(table, column, values != np.round(values), where, "not an integer")
    return values.astype("int64")


def _check_rules(table: pd.DataFrame, where: str) -> None:
    rules = [
        ("arrival_s", ~np.isfinite(table["arrival_s"]), "arrival time is not finite"),
        ("arrival_s", table["arrival_s"] < 0, "negative arrival time"),
        ("prompt_tokens", table["prompt_tokens"] < 1, "prompt_tokens must be >= 1"),
        ("output_tokens", table["output_tokens"] < 1, "output_tokens must be >= 1"),
        ("priority", ~table["priority"].isin(PRIORITIES), "priority must be LS or BE"),
        ("request_id", table["request_id"].duplicated(), "duplicate request_id"),
    ]
    for column, bad, problem in rules:
        _fail_where(table, column, bad, where, problem)


def _fail_where(table: pd.DataFrame, column: str, bad: pd.Series, where: str, problem: str) -> None:
    """Raise naming the problem, the column and the first offending row, if any row is bad."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        row = int(bad.argmax())
        value = table[column].iloc[row]
        raise TraceError(f"{where}: column {column}, row {row}: {problem} (value {value!r})")


def to_requests(trace: pd.DataFrame) -> list[Request]:
    """Fresh `policies.Request` objects in arrival order (the trace is validated first)."""
    table = validate(trace)
    return [
        Request(int(r.request_id), float(r.arrival_s), int(r.prompt_tokens), int(r.output_tokens),
                priority=Priority.parse(r.priority))
        for r in table.itertuples(index=False)
    ]
