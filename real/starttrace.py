"""Where the host's time goes from a consult to the batch start it issues (`engine.trace_starts=true`): perf_counter
stamps at fixed points of the start path, one row per consult that started a batch (`starts.parquet`), and their
table: `python -m real.starttrace RUN_DIR [RUN_DIR ...]`.

An LS request's reaction ends when its batch's embedding has run on the device (real.report): the host's part is
the consult up to the `mark` recorded after the embedding is issued. `real.report` gives that part as one number per
start; these stamps split it into `SEGMENTS`, each the time since the stamp before it:
`policy` (the policy's decision and its bookkeeping, up to the engine's part of a transition), `join` (the urgent
stream's batch, if one is no longer running, back on the main stream: real.lanes), `sequences` (a KV slot
per new request; its Sequence was made at admission; before session 24 it held `join` too, absent from older runs), `lane` (which streams are busy, the urgent stream claimed), `ids` (the new token
ids packed), `layout` (the layout's host arrays), `copy` (into the pinned ring and one host-to-device copy, the
device views), `embed` (the embedding launched), `mark` (its event recorded); after the last mark, not part of
the reaction: `consulted` (the policy asked again until it has nothing to change) and `issue` (the loop's other work
up to the first advance's issue).

A diagnostic, so a module-level recorder: the engine and the layout functions take no extra argument, and with
recording off a stamp is one global check."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

SEGMENTS = ("policy", "join", "sequences", "lane", "ids", "layout", "copy", "embed", "mark", "consulted", "issue")
REACTION_SEGMENTS = SEGMENTS[:SEGMENTS.index("mark") + 1]  # the host part of a reaction ends at the mark
SEQS_BINS = (0, 1, 4, 8, 64)


@dataclass
class Recorder:
    """Stamps of the consult in progress, and one row per consult that started a batch."""

    stamps: list[tuple[str, float]] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)


_recorder: Recorder | None = None


def stamp(point: str) -> None:
    """The host reached `point` (one of SEGMENTS) of the start path."""
    if _recorder is not None:
        _recorder.stamps.append((point, time.perf_counter()))


def begin() -> None:
    """A consult begins: earlier stamps (a rehearsal's, a consult that started nothing) are dropped."""
    if _recorder is not None:
        _recorder.stamps = [("consult", time.perf_counter())]


def end(**fields) -> None:
    """The first advance after the consult is being issued: a row (µs per segment, summed where a segment repeats,
    and `to mark us`) if the consult started a batch, with `fields` (the batch's size, stream level)."""
    if _recorder is None:
        return
    stamps, _recorder.stamps = _recorder.stamps + [("issue", time.perf_counter())], []
    points = [point for point, _ in stamps]
    if stamps[0][0] != "consult" or "mark" not in points:
        return
    row = {**fields, **{f"{s} us": 0.0 for s in SEGMENTS}}
    last_mark = max(i for i, point in enumerate(points) if point == "mark")
    for i, ((_, before), (point, at)) in enumerate(zip(stamps, stamps[1:]), start=1):
        if i > last_mark and point != "issue":
            point = "consulted"  # the policy asked again after the start: not on the reaction's path
        row[f"{point} us"] += 1e6 * (at - before)
    row["to mark us"] = 1e6 * (stamps[last_mark][1] - stamps[0][1])
    _recorder.rows.append(row)


@contextmanager
def recording() -> Iterator[Recorder]:
    """Stamps are kept inside this context (one at a time)."""
    global _recorder
    if _recorder is not None:
        raise RuntimeError("start trace already recording")
    _recorder = Recorder()
    try:
        yield _recorder
    finally:
        _recorder = None


def table(starts: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """p50 / p99 of each segment and of the time to the mark, per stream (urgent or main) and batch size, and per
    value of the column `by` first where given."""
    starts = starts.assign(stream=(starts.level > 0).map({True: "urgent", False: "main"}),
                           seqs=pd.cut(starts.num_seqs, SEQS_BINS, labels=["1", "2-4", "5-8", "9-64"]).astype(str))
    keys = [by] if by else []
    rows = []
    for values, group in starts.groupby([*keys, "stream", "seqs"], sort=True):
        *setting, stream, seqs = values
        row = {**dict(zip(keys, setting)), "stream": stream, "sequences": seqs, "starts": len(group)}
        for column in ("to mark us", *(f"{s} us" for s in SEGMENTS)):
            name = column.removesuffix(" us")
            row[f"{name} p50"] = group[column].median()
            row[f"{name} p99"] = group[column].quantile(0.99)
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    from sim.results import markdown

    parser = argparse.ArgumentParser(prog="python -m real.starttrace", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, or folders holding them")
    parser.add_argument("--out", type=Path, default=None, help="CSV of the table")
    parser.add_argument("--by", default=None, help="split the table by this engine setting of each run (its "
                                                   "summary.json's run block), e.g. varlen_prefill")
    args = parser.parse_args(argv)
    files = sorted({f for root in args.runs for f in ([root / "starts.parquet"] if (root / "starts.parquet").exists()
                                                      else root.rglob("starts.parquet"))})
    if not files:
        raise SystemExit("error: no starts.parquet under " + ", ".join(map(str, args.runs))
                         + " (runs with engine.trace_starts=true write it)")
    segments = [f"{s} us" for s in SEGMENTS]  # runs older than a segment lack its column: NaN, not 0
    frames = [pd.read_parquet(f) for f in files]
    frames = [frame.assign(**{c: float("nan") for c in segments if c not in frame}) for frame in frames]
    if args.by:
        frames = [frame.assign(**{args.by: _setting(f.parent, args.by)}) for f, frame in zip(files, frames)]
    result = table(pd.concat(frames, ignore_index=True), args.by)
    if args.out:
        result.to_csv(args.out, index=False)
    print(f"host µs per segment of batch starts, {len(files)} runs")
    print(markdown(result.round(1)))


def _setting(run: Path, key: str):
    """The run's value of engine setting `key` (its summary.json), for --by."""
    summary = run / "summary.json"
    value = json.loads(summary.read_text()).get("run", {}).get(key) if summary.exists() else None
    if value is None:
        raise SystemExit(f"error: {run} records no setting {key!r} in its summary.json")
    return value


if __name__ == "__main__":
    main()
