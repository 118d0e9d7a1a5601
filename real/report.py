"""The serving benchmark table of real-engine runs: per rate and policy, means over seeds of the
paper's metrics, each policy against a baseline on the same traces, and the preemption reaction time
(LS arrival -> its first batch starts on the device) in milliseconds and in layer times.

`python -m real.report results/real/h200_round9 [--baseline fcfs] [--out table.csv] [--by SETTING]`
`python -m real.report results/real/h200_round9 --reaction [--by rehearse_us]`: where each LS request's reaction went
(from the step log), per policy (and per value of a run setting)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from sim.results import markdown, ratio_to, serving_metrics


def layer_ms(steps: pd.DataFrame) -> float:
    """Median device time of one decoder layer of any batch in the run (steps that advanced layers)."""
    advanced = steps[(steps.kind == "advance") & (steps.to_layer > steps.from_layer)]
    if "whole" in advanced:  # steps stopped between stages ran part of a layer
        advanced = advanced[advanced.whole]
    return float(((advanced.end_s - advanced.begin_s) / (advanced.to_layer - advanced.from_layer)).median() * 1e3)


def run_row(run_dir: Path, slo_s: float, by: str | None = None) -> dict:
    """One run's metrics (`by`: a setting of its summary.json's run, kept as a column of that name)."""
    requests = pd.read_parquet(run_dir / "requests.parquet")
    info = json.loads((run_dir / "summary.json").read_text())["run"]
    ls = requests[requests.priority == "LS"]
    reaction_ms = 1e3 * (ls.scheduled_s - ls.arrival_s)
    row = {"policy": info["policy"], "rate": info["rate"], "seed": info["seed"],
           **({by: str(info.get(by))} if by else {}),
           **serving_metrics(requests, slo_s),
           "reaction p50 ms": reaction_ms.median(), "reaction p99 ms": reaction_ms.quantile(0.99),
           "gc max pause ms": info.get("gc", {}).get("max_pause_ms", float("nan"))}
    steps_path = run_dir / "steps.parquet"
    if steps_path.exists():
        row["layer ms"] = layer_ms(pd.read_parquet(steps_path))
        row["reaction p50 layers"] = row["reaction p50 ms"] / row["layer ms"]
        row["reaction p99 layers"] = row["reaction p99 ms"] / row["layer ms"]
    return row


def run_dirs(root: Path) -> list[Path]:
    runs = sorted(p.parent for p in Path(root).rglob("requests.parquet") if (p.parent / "summary.json").exists())
    if not runs:
        raise SystemExit(f"error: no runs (requests.parquet + summary.json) under {root}")
    return runs


def runs_table(root: Path, slo_s: float = 3.0, by: str | None = None) -> pd.DataFrame:
    return pd.DataFrame([run_row(r, slo_s, by) for r in run_dirs(root)])


PARTS = ("reaction", "notice", "host", "device", "in-flight layers")
# the notice of a request served through real.frontend's process, split (frontend.parquet): admission in the child to
# the pipe, the pipe to the engine's first poll that found it, that poll to the consult
NOTICE_LEGS = ("child", "pipe", "loop")
FOUND = ("BE", "LS", "idle")
HOST_IN = ("start", "LM head", "other")  # where the host was when the request arrived (`reaction_parts`)


def reaction_parts(requests: pd.DataFrame, steps: pd.DataFrame, transit: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per LS request, where its reaction went (ms): `notice`, from its arrival to the consult that started its
    batch; `host`, from that consult to the issue of the batch's first advance; `device`, the rest, to its first
    stage done on the GPU; the stream `level` it ran at (real.lanes); and `in-flight layers`, the reaction over
    the layer time of the work the arrival found on the device (a layer of the advance running then; the run's
    median layer, `layer_ms`, where that was shorter or the device idle): preemption happens at layer
    boundaries, so one layer of the preempted batch is the granularity; and `found`, what the arrival found on
    the device: `BE` work (the request preempts it), `LS` work (a batch some LS request started in: the policies
    do not preempt LS for LS, so the request queues), or nothing (`idle`); and `host in`, where the host was at
    the arrival: `start` while starting a batch, from the consult that started it to the issue of its first
    advance (it hears arrivals only once that advance is issued; a decode restart's start took about one Mixtral
    layer, H100, session 33), else `LM head` when its latest step was a pass's LM head still running on the
    device, else `other`. The step log names batches, not requests: the batch's first advance is the first
    layer-0 advance issued after the arrival that begins no earlier than the request's `scheduled_s`; `held`,
    whether the policy was consulted between the arrival and that batch's consult and did not start the request
    then (it held it back: the KV slots were short; qllm_catchup preempts any BE batch at once otherwise), so that
    its reaction measures memory, not preemption. With `transit`
    (real.frontend's `frontend.parquet`), the notice is also split into `NOTICE_LEGS` (ms; NaN without it)."""
    starts = steps[(steps.kind == "advance") & (steps.from_layer == 0)]
    advances = steps[(steps.kind == "advance") & (steps.to_layer > steps.from_layer)]
    per_layer_ms = 1e3 * (advances.end_s - advances.begin_s) / (advances.to_layer - advances.from_layer)
    median_ms = layer_ms(steps)
    on_device = steps[steps.kind.isin(["advance", "finish"])]
    firsts = {}
    for q in requests[requests.priority == "LS"].itertuples():
        first = starts[(starts.issued_s >= q.arrival_s) & (starts.begin_s >= q.scheduled_s - 1e-6)]
        if not first.empty:
            firsts[q] = first.iloc[0]
    ls_batches = {step.batch_id for step in firsts.values()} if "batch_id" in steps else set()
    legs = None if transit is None else transit.set_index("request_id")
    rows = []
    for q, step in firsts.items():
        found = on_device[(on_device.begin_s <= q.arrival_s) & (on_device.end_s > q.arrival_s)]
        reaction, notice, host = q.scheduled_s - q.arrival_s, step.decided_s - q.arrival_s, step.issued_s - step.decided_s
        running = per_layer_ms[(advances.begin_s <= q.arrival_s) & (advances.end_s > q.arrival_s)]
        layer = max(running.max() if len(running) else 0.0, median_ms)
        latest = steps[steps.issued_s <= q.arrival_s].tail(1)
        at_head = not latest.empty and latest.kind.iloc[0] == "finish" and latest.end_s.iloc[0] > q.arrival_s
        in_start = ((starts.decided_s < q.arrival_s) & (starts.issued_s > q.arrival_s)).any()
        way = legs.loc[q.request_id] if legs is not None and q.request_id in legs.index else None
        split = dict.fromkeys(NOTICE_LEGS, float("nan")) if way is None else {
            "child": 1e3 * (way.sent_s - q.arrival_s), "pipe": 1e3 * (way.seen_s - way.sent_s),
            "loop": 1e3 * (step.decided_s - way.seen_s)}
        consults = steps.decided_s[(steps.decided_s > q.arrival_s) & (steps.decided_s < step.decided_s)]
        rows.append({"request_id": q.request_id, "reaction": 1e3 * reaction, "notice": 1e3 * notice, **split,
                     "host": 1e3 * host, "device": 1e3 * (reaction - notice - host),
                     "in-flight layers": 1e3 * reaction / layer, "level": int(step.level),
                     "found": "idle" if found.empty else "LS" if set(found.get("batch_id", ())) & ls_batches else "BE",
                     "host in": HOST_IN[0] if in_start else HOST_IN[1] if at_head else HOST_IN[2],
                     "held": bool(len(consults))})
    return pd.DataFrame(rows, columns=["request_id", *PARTS, *NOTICE_LEGS, "level", "found", "host in", "held"])


def reaction_table(root: Path, by: str | None = None) -> pd.DataFrame:
    """p50 / p99 of each part per run, and per policy over all its runs; runs logged before `decided_s` and
    `level` existed are left out. `by`: a setting in the runs' summary.json ("run"), e.g. `rehearse_us`:
    runs are pooled per policy and value (an A/B in one folder)."""
    parts = []
    for run in run_dirs(root):
        steps_path = run / "steps.parquet"
        steps = pd.read_parquet(steps_path) if steps_path.exists() else pd.DataFrame()
        if not {"decided_s", "level"} <= set(steps.columns):
            continue
        info = json.loads((run / "summary.json").read_text())["run"]
        transit = pd.read_parquet(run / "frontend.parquet") if (run / "frontend.parquet").exists() else None
        found = reaction_parts(pd.read_parquet(run / "requests.parquet"), steps, transit)
        label = info["policy"] if by is None else f"{info['policy']} {by}={info.get(by)}"
        parts.append(found.assign(policy=label, run=f"rate {info['rate']:g} seed {info['seed']}"))
    if not parts:
        saved = sorted(str(path) for path in root.glob("*reaction*.csv"))
        raise SystemExit(f"error: no step logs (steps.parquet with decided_s and level) under {root}: runs before "
                         "serving round 4 have none, and committed results may leave them out for size"
                         + (f"; the reaction table saved with them: {', '.join(saved)}" if saved else ""))
    table = pd.concat(parts, ignore_index=True)
    pooled = [table.assign(run="all")] + [table[table.found == f].assign(run=f"all, found {f}") for f in FOUND]
    pooled.append(table[(table.found == "BE") & ~table.held].assign(run="all, found BE, not held"))
    pooled += [table[table["host in"] == place].assign(run=f"all, host in {place}") for place in HOST_IN[:2]]
    rows = []
    for (policy, run), group in pd.concat([table, *pooled]).groupby(["policy", "run"], sort=False):
        row = {"policy": policy, "run": run, "LS": len(group), "urgent share": float((group.level > 0).mean()),
               "over 2 ms": int((group.reaction > 2).sum())}
        for part in PARTS:
            unit = "" if part.endswith("layers") else " ms"
            row[f"{part} p50{unit}"] = group[part].median()
            row[f"{part} p99{unit}"] = group[part].quantile(0.99)
        if table[list(NOTICE_LEGS)].notna().any().any():  # some run came through the front end's process
            for leg in NOTICE_LEGS:
                row[f"notice: {leg} p50 ms"] = group[leg].median()
                row[f"notice: {leg} p99 ms"] = group[leg].quantile(0.99)
        row["within one in-flight layer"] = float((group["in-flight layers"] <= 1).mean())
        rows.append(row)
    return pd.DataFrame(rows)


def compare(table: pd.DataFrame, baseline: str, by: str | None = None) -> pd.DataFrame:
    """Means over seeds, with the LS TTFT reduction and tokens/s ratio against `baseline` (per seed,
    then averaged; the lowest per-seed ratio beside it). `by`: a setting column (`run_row`); each run is compared
    with the baseline's run of the same setting, and means are per setting too."""
    is_base = table.policy == baseline
    if not is_base.any():
        raise SystemExit(f"error: no {baseline} runs to compare against")
    keys = ["rate", "seed", *([by] if by else [])]
    if table[is_base].duplicated(keys).any():
        raise SystemExit(f"error: several {baseline} runs of one rate and seed: tell them apart with --by SETTING "
                         "(a setting of their summary.json's run, e.g. pass_graphs)")
    table = table.assign(**{"LS TTFT reduction": 1 / ratio_to(table, is_base, "LS TTFT mean s", keys),
                            "tokens/s ratio": ratio_to(table, is_base, "tokens/s", keys)})
    groups = ["rate", "policy", *([by] if by else [])]
    means = table.drop(columns="seed").groupby(groups).mean()
    means["tokens/s ratio min"] = table.groupby(groups)["tokens/s ratio"].min()
    means["seeds"] = table.groupby(groups).seed.nunique()
    return means.reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", type=Path, help="folder of run folders (requests.parquet, summary.json, steps.parquet)")
    parser.add_argument("--baseline", default="fcfs")
    parser.add_argument("--slo", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=None, help="CSV of the per-run rows (with --reaction: of its table)")
    parser.add_argument("--reaction", action="store_true", help="split each LS reaction into notice / host / device")
    parser.add_argument("--by", default=None, help="pool runs per value of this setting of their summary.json's run "
                        "(e.g. rehearse_us); without --reaction, each run is compared with the baseline's of its value")
    args = parser.parse_args(argv)
    if args.reaction:
        reactions = reaction_table(args.runs, args.by)
        if args.out:
            reactions.to_csv(args.out, index=False)
        print(markdown(reactions))
        return
    table = runs_table(args.runs, args.slo, args.by)
    if args.out:
        table.to_csv(args.out, index=False)
    print(markdown(compare(table, args.baseline, args.by)))


if __name__ == "__main__":
    main()
