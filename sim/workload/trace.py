"""The trace file format, written and read here only, so the simulator and the real engine
replay identical traces: request_id, arrival_s, prompt_tokens, output_tokens, priority (LS|BE).
CSV or parquet, by suffix."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from policies import Priority, Request

COLUMNS = {"request_id": "int64", "arrival_s": "float64", "prompt_tokens": "int64",
           "output_tokens": "int64", "priority": "object"}


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the problem."""


def write_trace(trace: pd.DataFrame, path: Path | str) -> None:
    path = Path(path)
    table = validate(trace[list(COLUMNS)].copy(), str(path))
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)


def read_trace(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TraceError(f"trace {path}: no such file")
    try:
        raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as error:  # pandas/pyarrow raise many types for a damaged file
        raise TraceError(f"trace {path}: cannot parse ({type(error).__name__}: {error})") from None
    return validate(raw, str(path))


def validate(raw: pd.DataFrame, where: str = "trace") -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise TraceError(f"{where}: missing column(s) {', '.join(missing)}")
    table = raw[list(COLUMNS)].copy()
    for column in COLUMNS:
        _check_present(table, column, where)
    for column in ("request_id", "prompt_tokens", "output_tokens", "arrival_s"):
        table[column] = _numeric(table, column, where)
    table["priority"] = table["priority"].astype(str).str.strip().str.upper()
    _check_rules(table, where)
    return table.sort_values(["arrival_s", "request_id"], kind="stable").reset_index(drop=True)


def _check_present(table: pd.DataFrame, column: str, where: str) -> None:
    empty = table[column].isna()
    if empty.any():
        raise TraceError(f"{where}: column {column} is empty at row {int(empty.idxmax())} (truncated file?)")


def _numeric(table: pd.DataFrame, column: str, where: str) -> pd.Series:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        row = int(bad.idxmax())
        raise TraceError(f"{where}: column {column} row {row}: {table[column][row]!r} is not a number")
    if COLUMNS[column] == "int64":
        fractional = values != values.round()
        if fractional.any():
            raise TraceError(f"{where}: column {column} row {int(fractional.idxmax())}: not an integer")
        return values.astype("int64")
    return values.astype("float64")


def _check_rules(table: pd.DataFrame, where: str) -> None:
    rules = [
        ("arrival_s", table["arrival_s"] < 0, "negative arrival time"),
        ("prompt_tokens", table["prompt_tokens"] < 1, "prompt_tokens must be >= 1"),
        ("output_tokens", table["output_tokens"] < 1, "output_tokens must be >= 1"),
        ("priority", ~table["priority"].isin(["LS", "BE"]), "priority must be LS or BE"),
        ("request_id", table["request_id"].duplicated(), "duplicate request_id"),
    ]
    for column, bad, message in rules:
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise TraceError(f"{where}: column {column} row {row}: {message} ({table[column].iloc[row]!r})")


def to_requests(trace: pd.DataFrame) -> list[Request]:
    return [
        Request(int(r.request_id), float(r.arrival_s), int(r.prompt_tokens), int(r.output_tokens), Priority.parse(r.priority))
        for r in trace.itertuples(index=False)
    ]
