"""Server costs the stage grids cannot see, measured on serving runs' step logs.

Between two of the engine's steps the GPU idles while the server works on the host: after a pass's
LM head it waits for the tokens, books them, asks the policy and builds the next batch's layout
(`server_pass`); when a policy switches batches mid-pass it pauses one and starts or resumes another
(`server_switch`); a merge rebuilds the running batch's layout (`server_merge`). And between the layers
of a stepped batch the server marks, throttles and loops: where such a layer is host-bound, its device
time beyond the layer the profile composes is `server_layer` (from prefill batches, whose load the log
gives). An iteration-level policy's pass is one advance that the host issues without stopping, a pass
ahead of the GPU (sim.pipeline). Its stepped layers' host issue time beyond the profile's host path is
`pass_layer` (`pass_layer_busy` while the GPU still runs earlier passes), the launch queue's depth is
`pass_queue`, and the host's work from one pass's last layer to the next pass's first is `pass_host`: all
read on the host clock, since the device times of such a pass hide the part of its issue that overlapped
the pass before it (which is also why `server_layer` comes from layer-by-layer steps only).
The engine attends a group of sequences as one padded call; `padding_charge` and
`decode_padding_charge` are the shares of that padding's price (prefill; decode, from graph-replayed decode
layers whose contexts the requests table gives) that the device pays; `graph_layer`, from the same decode layers,
is each one's device time beyond the stages the simulator composes for it, with its batch size: the simulator
then prices replayed decode layers with its medians instead of the calibration model's graph passes.
A batch started on an urgent stream (real.lanes) overlaps the queued layers of the one it paused: that switch
costs no idle time, and its negative gap counts as zero. `real.run` logs every step
with device timestamps (steps.parquet); this module turns the idle gaps into rows of a profile's
events.csv, which `sim.profile.measured` charges as the iteration, pause and merge overheads.

    python -m calibrate serving RUN_DIR [RUN_DIR ...] --profile calibrate/profiles/h200/mixtral-8x7b-bf16
    python -m calibrate serving RUN_DIR ... --profile ... --check   # prefill and decode layers: simulator vs engine

Each run is read against the profile attending as it did (its summary's varlen_prefill and lean_attention);
lean runs' per-layer host work comes out apart (`<event>_lean`), since lean attention cuts more of it than its
stages' issue times show. One calibration replaces every server row, so give it runs of each kind at once.

Calibrate on some runs and validate (`python -m sim.validate`) on others, so the check is not circular.

Hosts differ from lease to lease (each run's `host_probe_ms`, calibrate.hostspeed). `--host-scale auto` reads each
run against the profile's host path at its own host speed and puts its host-clock rows (HOST_CLOCK) on the
profile's clock; `python -m sim.validate RUNS --host-scale auto` then prices each run at its own host speed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from calibrate.check import profile_model, stepped_profile
from calibrate.hostspeed import run_scale
from sim.model import ModelSpec
from sim.pipeline import ran_ahead
from sim.profile.base import AttentionLoad
from sim.profile.derive import layer_s
from sim.profile.measured import GRAPH_LAYER, MeasuredProfile, events_file

# the serving host's own work per stepped layer, which lean attention (engine.lean_attention) cuts by more than its
# stages' issue times say (H100 Qwen3, session 28's fcfs runs: 0.56 ms beyond the lean path, 1.07 beyond varlen's):
# runs with it give these events apart, as `<event>_lean` (sim.profile.measured prices lean runs with them)
LEAN_EVENTS = ("server_layer", "pass_layer", "pass_layer_busy")
EVENTS = ("server_pass", "server_switch", "server_merge", "server_layer", "padding_charge", "decode_padding_charge",
          "pass_layer", "pass_layer_busy", "pass_host", "pass_queue", GRAPH_LAYER) + tuple(f"{e}_lean" for e in LEAN_EVENTS)
MAX_GAP_S = 0.02  # longer gaps are the server sleeping until the next arrival, not working


def gaps(steps: pd.DataFrame) -> pd.DataFrame:
    """One row (event, time_s) per idle gap between consecutive steps of one run."""
    prev, nxt = steps.iloc[:-1].reset_index(drop=True), steps.iloc[1:].reset_index(drop=True)
    gap = nxt.begin_s - prev.end_s
    event = pd.Series(pd.NA, index=gap.index, dtype="object")
    event[prev.kind == "finish"] = "server_pass"
    advance = prev.kind == "advance"
    event[advance & (nxt.batch_id != prev.batch_id)] = "server_switch"
    event[advance & (nxt.batch_id == prev.batch_id) & (nxt.num_seqs != prev.num_seqs)] = "server_merge"
    rows = pd.DataFrame({"event": event, "time_s": gap.clip(lower=0.0)})
    return rows[rows.event.notna() & (rows.time_s <= MAX_GAP_S)]


def alone(steps: pd.DataFrame) -> pd.Series:
    """Steps that no other step overlaps on the device (a batch on an urgent stream, real.lanes, shares the
    GPU with the main stream's queued layers while they run)."""
    order = steps.sort_values("begin_s", kind="stable")
    earlier_end = order.end_s.cummax().shift(1)
    next_begin = order.begin_s.shift(-1)
    return (~(earlier_end > order.begin_s) & ~(next_begin < order.end_s)).reindex(steps.index)


def prefill_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """Advances of batches that are all prefill, alone on the device (`alone`): their load is known from the
    log. Logs without `num_prefill_seqs` (H200 rounds 1-5) keep only batches never merged: a batch starts as
    all prefills or all decodes, and only a merge mixes them. (Until session 10 the main stream's layers were
    taken instead: with deferred tokens, real.pending, about 90% of LS prefills run on an urgent stream, most
    of their layers alone, and the main stream's left too few and too skewed a sample.)"""
    advance = (steps.kind == "advance") & (steps.to_layer > steps.from_layer) & alone(steps)
    if "whole" in steps:  # a step that began or ended between stages ran part of a layer
        advance &= steps.whole
    if "num_prefill_seqs" in steps:
        return steps[advance & (steps.num_prefill_seqs == steps.num_seqs)]
    first = steps.groupby("batch_id")[["num_seqs", "num_tokens"]].transform("first")
    unmerged = (steps.num_seqs == first.num_seqs) & (steps.num_tokens == first.num_tokens)
    return steps[advance & (steps.num_tokens > steps.num_seqs) & unmerged]


def step_load(step) -> AttentionLoad:
    """The attention load of an all-prefill step (a row of the log). Its squared lengths (`prefill_sq_tokens`)
    price an unpadded group; logs before session 29 lack them and take every prompt at the mean length, the
    least the sum can be (an unpadded group's device time a little under, its host time, flat in the
    lengths, the same)."""
    seqs, tokens = int(step.num_seqs), int(step.num_tokens)
    sq = getattr(step, "prefill_sq_tokens", None)
    if sq is None or pd.isna(sq):
        sq = round(tokens * tokens / max(seqs, 1))
    return AttentionLoad(seqs, tokens, int(sq), prefill_max_tokens=int(step.longest))


def prefill_layers(steps: pd.DataFrame) -> Iterator[tuple[AttentionLoad, float]]:
    """(load, device seconds per layer) of each of `prefill_steps`."""
    for step in prefill_steps(steps).itertuples():
        yield step_load(step), (step.end_s - step.begin_s) / (step.to_layer - step.from_layer)


def whole_passes(steps: pd.DataFrame) -> pd.Series:
    """Advances that run a pass from its first layer to its last in one step (an iteration-level policy's; in
    a log of one layer's steps, as the layer-by-layer ones, there are none)."""
    last = steps.to_layer.max()
    return (steps.kind == "advance") & (steps.from_layer == 0) & (steps.to_layer == last) & (last > 1)


def headed_prefill_passes(order: pd.DataFrame) -> np.ndarray:
    """Positions, in a step log in step order (a default index), of its whole prefill passes (`whole_passes`, all
    their sequences prompts) that their LM head follows: a whole pass's host issue runs to its head's issue."""
    heads = order.shift(-1)
    keep = (whole_passes(order) & (order.num_prefill_seqs > 0) & (order.num_prefill_seqs == order.num_seqs)
            & (heads.kind == "finish") & (heads.batch_id == order.batch_id))
    return np.flatnonzero(keep.to_numpy())


def layer_residuals(steps: pd.DataFrame, profile) -> pd.DataFrame:
    """`server_layer` rows: for each host-bound stepped prefill layer (`prefill_steps`, the profile's host
    path at least its GPU path) that the server stepped layer by layer (not `whole_passes`), its device time
    per layer minus the layer the profile composes. What is left is host work the stage grid cannot see
    (the server's marks, throttle and loop between layers)."""
    rows = []
    for load, per_layer_s in prefill_layers(steps[~whole_passes(steps)]):
        host, gpu = profile.layer_paths(load)
        if host >= gpu:
            rows.append({"event": "server_layer", "time_s": per_layer_s - host})
    return pd.DataFrame(rows, columns=["event", "time_s"])


IDLE_START_S = 1e-3  # a pass the GPU began within this of its issue: the GPU had no backlog to run first


def pass_rows(steps: pd.DataFrame, profile) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows from each whole stepped prefill pass (`headed_prefill_passes`), read on the host
    clock, and the passes that `busy_rows` reads. If the profile's layer is host-bound: begun by the GPU
    at once (`IDLE_START_S`), a `pass_layer` row, the host's issue time per layer (its advance's issue to
    its LM head's) minus the profile's host path; begun later (the GPU was still running earlier passes),
    a record for `busy_rows`. If GPU-bound: a `pass_queue` row, how many of its layers the GPU had still
    to run when the host had issued the last (the launch queue's depth in stepped layers: the host waits
    for it). And `pass_host` rows: from such a pass's LM head issue to the issue of the next pass when that
    is a decode pass (so requests were waiting: the host did not sleep), the host's work between passes
    (LM head, bookkeeping, the policy, the next layout and embedding); the prefill pass leaves the GPU at
    about the end of its issue, so the host does not wait on the device in that span."""
    order = steps.reset_index(drop=True)
    rows, busy = [], []
    for i in headed_prefill_passes(order):
        step, head = order.iloc[i], order.iloc[i + 1]
        load = step_load(step)
        layers = step.to_layer - step.from_layer
        issue_s, backlog_s = head.issued_s - step.issued_s, step.begin_s - step.issued_s
        host, gpu = profile.layer_paths(load)
        if host < gpu:
            per_layer = (step.end_s - step.begin_s) / layers
            rows.append({"event": "pass_queue", "time_s": (step.end_s - head.issued_s) / per_layer})
        elif backlog_s <= IDLE_START_S:
            rows.append({"event": "pass_layer", "time_s": issue_s / layers - host})
        else:
            busy.append({"layers": layers, "issue_s": issue_s, "backlog_s": backlog_s, "host_s": host})
        after = order.iloc[i + 2] if i + 2 < len(order) else None
        if (after is not None and after.kind == "advance" and after.from_layer == 0 and after.num_prefill_seqs == 0
                and after.issued_s - head.issued_s <= MAX_GAP_S):
            rows.append({"event": "pass_host", "time_s": after.issued_s - head.issued_s})
    return (pd.DataFrame(rows, columns=["event", "time_s"]),
            pd.DataFrame(busy, columns=["layers", "issue_s", "backlog_s", "host_s"]))


def busy_rows(passes: pd.DataFrame, idle_s: float) -> pd.DataFrame:
    """`pass_layer_busy` rows: for each host-bound whole pass the GPU began `backlog_s` after its issue began
    (`pass_rows`), the host's time per layer beyond the profile's while the GPU still ran earlier work. The
    layers issued after the GPU began are taken at the idle rate (host path + `idle_s`, the `pass_layer`
    median), so n = layers - (issue - backlog) / (host + idle) were issued in the backlog, at backlog / n.
    A `scale` column (the run's host speed, `collect`'s probe_scaled) puts `idle_s` on the run's clock and
    the row back on the profile's."""
    scale = passes.get("scale", 1.0)
    n = passes.layers - (passes.issue_s - passes.backlog_s) / (passes.host_s + idle_s * scale)
    keep = n >= 1
    rate = (passes.backlog_s / n - passes.host_s) / scale
    return pd.DataFrame({"event": "pass_layer_busy", "time_s": rate[keep].to_numpy()})


MIN_EXCESS_S = 0.1e-3  # padded layers whose padding costs less than this on the grid say little about it


def padding_rows(steps: pd.DataFrame, profile, host_extra: float = 0.0) -> pd.DataFrame:
    """`padding_charge` rows: for each GPU-bound stepped prefill layer with padding (`prefill_steps`; its
    GPU path over 1.05x its host path plus `host_extra`, the server's median work per layer), the share
    of the padded attention call's excess over the same sequences at their mean length that its device
    time implies, (measured - GPU path without the excess) / excess. The profile charges their median."""
    rows = []
    for load, per_layer_s in prefill_layers(steps):
        host, padded = profile.layer_paths(load, padding_charge=1.0)
        packed = profile.layer_paths(load, padding_charge=0.0)[1]
        excess = padded - packed
        if excess >= MIN_EXCESS_S and padded >= 1.05 * (host + host_extra):
            rows.append({"event": "padding_charge", "time_s": (per_layer_s - packed) / excess})
    return pd.DataFrame(rows, columns=["event", "time_s"])


MIN_DECODE_EXCESS_S = 5e-6  # decode groups whose padding the grid prices at less than this say nothing about it


def decode_loads(steps: pd.DataFrame, requests: pd.DataFrame) -> Iterator[tuple[AttentionLoad, float]]:
    """(load, device seconds per layer) of each whole decode step alone on the device whose batch the requests
    table gives: the requests between their first token and their finish when it began are exactly as many as
    its sequences, and the longest of their contexts (prompt plus the tokens generated by then, taken as
    evenly spaced) is its `longest`. That holds for an iteration-level policy's passes, where every
    decoding request is in the one batch."""
    advance = (steps.kind == "advance") & (steps.to_layer > steps.from_layer) & alone(steps) & steps.whole
    decode = steps[advance & (steps.num_prefill_seqs == 0)]
    first, finish = requests.first_token_s.to_numpy(), requests.finish_s.to_numpy()
    prompt, output = requests.prompt_tokens.to_numpy(), requests.output_tokens.to_numpy()
    for step in decode.itertuples():
        active = (first < step.begin_s) & (finish >= step.begin_s)
        if active.sum() != step.num_seqs:
            continue
        done = np.clip((step.begin_s - first[active]) / np.maximum(finish[active] - first[active], 1e-9), 0, 1)
        context = prompt[active] + 1 + done * (output[active] - 1)
        if abs(context.max() - step.longest) > 2:
            continue
        load = AttentionLoad(num_decode_seqs=int(step.num_seqs), decode_ctx_tokens=round(float(context.sum())),
                             decode_max_ctx=int(step.longest))
        yield load, (step.end_s - step.begin_s) / (step.to_layer - step.from_layer)


def decode_rows(steps: pd.DataFrame, requests: pd.DataFrame, graphs: MeasuredProfile,
                model: ModelSpec) -> pd.DataFrame:
    """`decode_padding_charge` rows: for each of `decode_loads`, the share of its padded attention's excess
    over the same sequences at their mean context that its device time implies, against the graph-replayed
    layer the simulator composes. The profile charges their median."""
    rows = []
    for load, per_layer_s in decode_loads(steps, requests):
        padded, packed = graphs.attention_s(load, decode_charge=1.0), graphs.attention_s(load, decode_charge=0.0)
        if padded - packed >= MIN_DECODE_EXCESS_S:
            layer = layer_s(graphs, model, load) - graphs.attention_s(load) + packed
            rows.append({"event": "decode_padding_charge", "time_s": (per_layer_s - layer) / (padded - packed)})
    return pd.DataFrame(rows, columns=["event", "time_s"])


def graph_layer_rows(steps: pd.DataFrame, requests: pd.DataFrame, graphs: MeasuredProfile) -> pd.DataFrame:
    """`graph_layer` rows, one per `decode_loads` layer with its batch size: its device time beyond the stages
    the simulator composes for a replayed layer (`replayed_stages_s`, no graph fix), which the calibration
    model's graph passes otherwise stand in for (sim.profile.measured)."""
    rows = [{"event": GRAPH_LAYER, "batch": load.num_decode_seqs, "time_s": per_layer_s - graphs.replayed_stages_s(load)}
            for load, per_layer_s in decode_loads(steps, requests)]
    return pd.DataFrame(rows, columns=["event", "batch", "time_s"])


GRAPH_ROWS_KEPT = 101  # per batch size: a round's qllm runs give thousands of replayed decode layers each


def thin_graph_rows(table: pd.DataFrame, keep: int = GRAPH_ROWS_KEPT) -> pd.DataFrame:
    """The table with at most `keep` `graph_layer` rows per batch size: evenly spaced ranks of its sorted times,
    the lowest, the median and the highest among them, so the profile keeps the distribution (the simulator
    charges its median) at a few kB instead of the 2 MB of one H100 round's 48,694 layers."""
    graph = table.event == GRAPH_LAYER
    if not graph.any():
        return table
    kept = [rows.sort_values("time_s").iloc[np.unique(np.linspace(0, len(rows) - 1, keep).round().astype(int))]
            for _, rows in table[graph].groupby("batch")]
    return pd.concat([table[~graph], *kept], ignore_index=True)


def collect(run_dirs: list[Path], directory: Path | None = None, probe_scaled: bool = False) -> pd.DataFrame:
    """Every run's idle gaps and, given a profile folder, what its stepped engine misses: prefill-layer
    residuals and whole passes' host work (`host_rows`, each run against the profile attending as it did:
    `attention_mode`; lean runs' per-layer work as `<event>_lean`, LEAN_EVENTS) and, for runs that replayed
    decode graphs, their decode padding charges. `probe_scaled`: each run read against the profile's host
    path x its host probe's ratio (calibrate.hostspeed.run_scale), and its HOST_CLOCK rows put back on the
    profile's clock."""
    found = [d for d in run_dirs if (d / "steps.parquet").exists()]
    if not found:
        raise SystemExit(f"error: no steps.parquet under {', '.join(map(str, run_dirs))}")
    logs = {d: pd.read_parquet(d / "steps.parquet") for d in found}
    # the idle gaps of a pass a host issued ahead (sim.pipeline) are its pipeline's: pass_host prices them
    parts = [gaps(log) for d, log in logs.items() if not (host_ahead(d) and whole_passes(log).any())]
    if directory is not None:
        modes: dict[tuple[bool, bool], list[tuple[pd.DataFrame, MeasuredProfile, float]]] = {}
        profiles: dict[tuple[bool, bool, float], MeasuredProfile] = {}
        for d, log in logs.items():
            varlen, lean = attention_mode(d)
            scale = run_scale(d, directory) if probe_scaled else 1.0
            if (varlen, lean, scale) not in profiles:
                profiles[varlen, lean, scale] = stepped_profile(directory, varlen_prefill=varlen, lean_attention=lean,
                                                                host_scale=scale)
            modes.setdefault((varlen, lean), []).append((log, profiles[varlen, lean, scale], scale))
        for (varlen, lean), group in sorted(modes.items(), key=lambda item: item[0]):
            rows = host_rows(group)
            parts.append(rows.assign(event=rows.event.map(lambda e: f"{e}_lean" if e in LEAN_EVENTS else e))
                         if lean else rows)
        parts += decode_parts(run_dirs, directory)
    table = thin_graph_rows(pd.concat(parts, ignore_index=True))
    table["repeat"] = table.groupby("event").cumcount()
    return table[["event", "repeat", "time_s"] + (["batch"] if "batch" in table else [])]


# the events the simulator scales with a run's host speed (sim.profile.measured: hardware.profile.host_scale)
HOST_CLOCK = ("server_layer", "pass_layer", "pass_layer_busy", "pass_host")


def on_profile_clock(rows: pd.DataFrame, scale: float) -> pd.DataFrame:
    """A run's rows with its HOST_CLOCK times over its host scale: what they would take on the profile's host."""
    clock = rows.event.isin(HOST_CLOCK)
    return rows.assign(time_s=rows.time_s.where(~clock, rows.time_s / scale))


def host_rows(runs: list[tuple[pd.DataFrame, MeasuredProfile, float]]) -> pd.DataFrame:
    """The stepped engine's rows from (log, profile, host scale) of runs that attended alike: `server_layer`,
    `padding_charge` and the whole passes' `pass_*` rows, each log against its profile (the stepped engine
    attending as it did, at its host scale), the host-clock rows put back on the profile's clock."""
    stepped = [(log, profile, scale) for log, profile, scale in runs if "level" in log]
    residuals = [on_profile_clock(layer_residuals(log, profile), scale) for log, profile, scale in stepped]
    server_layer = pd.concat(residuals).time_s if residuals else pd.Series(dtype=float)
    host_extra = float(server_layer.median()) if len(server_layer) else 0.0
    parts = residuals + [padding_rows(log, profile, host_extra * scale) for log, profile, scale in stepped]
    if passes := [(pass_rows(log, profile), scale) for log, profile, scale in runs if "num_prefill_seqs" in log]:
        rows = pd.concat([on_profile_clock(rows, scale) for (rows, _), scale in passes], ignore_index=True)
        idle = rows[rows.event == "pass_layer"].time_s  # busy_rows takes the others' layers at this rate
        parts.append(rows)
        if len(idle):
            busy = pd.concat([busy.assign(scale=scale) for (_, busy), scale in passes], ignore_index=True)
            parts.append(busy_rows(busy, float(idle.median())))
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["event", "time_s"])


def attention_mode(run: Path) -> tuple[bool, bool]:
    """(varlen_prefill, lean_attention) of a run, from its summary.json: how its engine attended prefill groups
    (runs from before those settings, or without a summary: padded). Lean attention needs varlen."""
    summary = run / "summary.json"
    settings = json.loads(summary.read_text())["run"] if summary.exists() else {}
    varlen = bool(settings.get("varlen_prefill"))
    return varlen, varlen and bool(settings.get("lean_attention"))


def host_ahead(run: Path) -> bool:
    """Whether the run issued whole passes ahead of the GPU (sim.pipeline.ran_ahead of its summary)."""
    summary = run / "summary.json"
    return summary.exists() and ran_ahead(json.loads(summary.read_text())["run"])


def graph_decode_logs(run_dirs: list[Path]) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(step log, requests table) of each run that replayed decode graphs (summary.json) and logged its
    prefill sequences apart: what `decode_loads` reads."""
    for run in run_dirs:
        summary, requests = run / "summary.json", run / "requests.parquet"
        if not (summary.exists() and requests.exists() and json.loads(summary.read_text())["run"].get("graphs")):
            continue
        steps = pd.read_parquet(run / "steps.parquet")
        if "num_prefill_seqs" in steps:
            yield steps, pd.read_parquet(requests)


def decode_parts(run_dirs: list[Path], directory: Path) -> list[pd.DataFrame]:
    """`decode_rows` of `graph_decode_logs`, against the profile's graph-replayed layers (no charge yet), and
    their `graph_layer_rows`, against the layers as served (the profile's decode charge)."""
    model = profile_model(directory)
    graphs = stepped_profile(directory, model=model, impl="engine-graphs")
    served = stepped_profile(directory, serving=True, model=model, impl="engine-graphs")
    return [part for steps, requests in graph_decode_logs(run_dirs)
            for part in (decode_rows(steps, requests, graphs, model), graph_layer_rows(steps, requests, served))]


def write_events(profile: Path, rows: pd.DataFrame, events: tuple[str, ...] = EVENTS) -> pd.DataFrame:
    """Replace the profile's rows of `events` (default: every server row) with `rows`' rows of them; the
    calibration's own events are kept (in events.csv, or events.csv.gz where the profile keeps them compressed)."""
    path = events_file(profile)
    if path is None:
        raise SystemExit(f"error: {profile / 'events.csv'} does not exist (not a calibration profile?)")
    kept = pd.read_csv(path)
    kept = kept[~kept.event.isin(events)]
    table = pd.concat([kept, rows[rows.event.isin(events)]], ignore_index=True)
    table.to_csv(path, index=False)
    return table


BINS = [0, 128, 256, 512, 1024, 2048, 4096, 8192, 1 << 20]


def layer_check(steps: pd.DataFrame, profile: MeasuredProfile, model: ModelSpec) -> pd.DataFrame:
    """Per prefill layer a run stepped layer by layer (`prefill_steps`, not `whole_passes`: the simulator
    prices those on two clocks, sim.pipeline): its device time and the layer the simulator composes for
    that load (uniform routing), in ms."""
    rows = [{"tokens": load.num_tokens, "seqs": load.num_seqs, "composed_ms": 1e3 * layer_s(profile, model, load),
             "measured_ms": 1e3 * per_layer_s} for load, per_layer_s in prefill_layers(steps[~whole_passes(steps)])]
    return pd.DataFrame(rows, columns=["tokens", "seqs", "composed_ms", "measured_ms"])


def check_report(run_dirs: list[Path], directory: Path) -> pd.DataFrame:
    """Median composed / measured prefill layer by token count over the runs: where the simulator's
    price of a stepped layer parts from the engine's."""
    model = profile_model(directory)
    profiles = {(varlen, lean): stepped_profile(directory, serving=True, model=model, varlen_prefill=varlen,
                                                lean_attention=lean)
                for varlen, lean in {attention_mode(d) for d in run_dirs}}
    table = pd.concat([layer_check(pd.read_parquet(d / "steps.parquet"), profiles[attention_mode(d)], model)
                       for d in run_dirs], ignore_index=True)
    if table.empty:
        raise SystemExit("error: no stepped prefill layers in these runs' step logs")
    table["ratio"] = table.composed_ms / table.measured_ms
    bins = pd.cut(table.tokens, BINS, right=True)
    return table.groupby(bins, observed=True).agg(layers=("ratio", "size"), seqs=("seqs", "median"),
                                                  measured_ms=("measured_ms", "median"),
                                                  composed_ms=("composed_ms", "median"),
                                                  composed_over_measured=("ratio", "median"))


DECODE_BINS = [0, 8, 16, 24, 32, 64, 1 << 20]


def decode_check_report(run_dirs: list[Path], directory: Path) -> pd.DataFrame:
    """Median composed / measured graph-replayed decode layer by batch size over the runs (`decode_loads`:
    the layers whose contexts the requests table gives), priced as the simulator prices it (`replayed_layer_s`:
    router and experts on the replayed bucket), with the profile's decode padding charge and graph fix."""
    model = profile_model(directory)
    graphs = stepped_profile(directory, serving=True, model=model, impl="engine-graphs")
    rows = [{"seqs": load.num_decode_seqs, "mean_context": load.decode_ctx_tokens / load.num_decode_seqs,
             "longest": load.decode_max_ctx, "measured_ms": 1e3 * per_layer_s,
             "composed_ms": 1e3 * graphs.replayed_layer_s(load)}
            for steps, requests in graph_decode_logs(run_dirs) for load, per_layer_s in decode_loads(steps, requests)]
    table = pd.DataFrame(rows, columns=["seqs", "mean_context", "longest", "measured_ms", "composed_ms"])
    if table.empty:
        return table
    table["ratio"] = table.composed_ms / table.measured_ms
    return table.groupby(pd.cut(table.seqs, DECODE_BINS), observed=True).agg(
        layers=("ratio", "size"), mean_context=("mean_context", "median"), longest=("longest", "median"),
        measured_ms=("measured_ms", "median"), composed_ms=("composed_ms", "median"),
        composed_over_measured=("ratio", "median"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m calibrate serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="real.run output folders (with steps.parquet), or parents")
    parser.add_argument("--profile", type=Path, required=True, help="profile folder whose events.csv gets the rows")
    parser.add_argument("--only", nargs="+", choices=EVENTS, default=EVENTS, metavar="EVENT",
                        help="replace only these events' rows, keep the others as they are (default: every server "
                             f"event: {', '.join(EVENTS)})")
    parser.add_argument("--host-scale", choices=["auto"], default=None,
                        help="auto: read each run against the profile's host path x its host probe's ratio "
                             "(calibrate.hostspeed) and put its host-clock rows (" + ", ".join(HOST_CLOCK) + ") on the "
                             "profile's clock: for hosts that differ from lease to lease; price with "
                             "`python -m sim.validate ... --host-scale auto`")
    parser.add_argument("--check", action="store_true",
                        help="write nothing: print the simulator's stepped prefill and replayed decode layers "
                             "against the runs'")
    args = parser.parse_args(argv)
    run_dirs = sorted({p.parent for r in args.runs for p in r.rglob("steps.parquet")})
    if not run_dirs:
        raise SystemExit(f"error: no steps.parquet under {', '.join(map(str, args.runs))}")
    if events_file(args.profile) is None:
        raise SystemExit(f"error: {args.profile / 'events.csv'} does not exist (not a calibration profile?)")
    try:
        profile_model(args.profile)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {args.profile}: its model has no config ({error.filename}); meta.json's `model` "
                         "or the folder's name (<model>-<dtype>) names it") from None
    if args.check:
        print(f"{len(run_dirs)} runs, profile {args.profile}: stepped prefill layers (medians by tokens)")
        print(check_report(run_dirs, args.profile).round(3).to_string())
        decode = decode_check_report(run_dirs, args.profile)
        if not decode.empty:
            print("graph-replayed decode layers whose contexts the requests give (medians by batch size)")
            print(decode.round(3).to_string())
        return
    rows = collect(run_dirs, args.profile, probe_scaled=args.host_scale == "auto")
    rows = rows[rows.event.isin(args.only)]
    write_events(args.profile, rows, tuple(args.only))
    for event, what in (("padding_charge", "padded GPU-bound prefill layers"),
                        ("decode_padding_charge", "graph-replayed decode layers with their contexts known")):
        shares = rows[rows.event == event].time_s
        if len(shares):
            print(f"{event}: median {shares.median():.3f} over {len(shares)} {what}")
    queue = rows[rows.event == "pass_queue"].time_s
    if len(queue):
        print(f"pass_queue: median {queue.median():.1f} layers over {len(queue)} GPU-bound whole prefill passes")
    rows = rows[~rows.event.isin(("padding_charge", "decode_padding_charge", "pass_queue"))]
    ms = rows.assign(time_ms=rows.time_s * 1e3).groupby("event").time_ms
    summary = ms.agg(n="size", mean="mean", p50="median", p90=lambda t: t.quantile(0.9))
    print(f"{len(run_dirs)} runs -> {events_file(args.profile)} (ms):")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
