"""Results as tidy tables: one row per request (same schema for sim and real), and the metrics
that are plain functions over it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from policies import Request

REQUEST_COLUMNS = [
    "source", "policy", "rate", "seed", "request_id", "priority", "arrival_s", "scheduled_s", "first_token_s",
    "finish_s", "prompt_tokens", "output_tokens", "generated_tokens", "preemptions",
]


def requests_table(requests: list[Request], source: str, policy: str, rate: float, seed: int) -> pd.DataFrame:
    """One row per request; derived latencies are added by `with_latencies`."""
    rows = [
        (source, policy, rate, seed, r.request_id, r.priority.name, r.arrival_s, r.first_scheduled_s, r.first_token_s,
         r.finish_s, r.num_prompt_tokens, r.num_output_tokens, r.num_generated_tokens, r.num_preemptions)
        for r in sorted(requests, key=lambda r: r.request_id)
    ]
    return with_latencies(pd.DataFrame(rows, columns=REQUEST_COLUMNS))


def with_latencies(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out["ttft_s"] = out["first_token_s"] - out["arrival_s"]
    out["turnaround_s"] = out["finish_s"] - out["arrival_s"]
    decode_tokens = (out["generated_tokens"] - 1).where(out["generated_tokens"] > 1)
    out["tpot_s"] = (out["finish_s"] - out["first_token_s"]) / decode_tokens
    return out


def class_metrics(df: pd.DataFrame, slo_s: float) -> dict[str, float]:
    """Latency metrics of one priority class (or all requests)."""
    ttft, turn = df["ttft_s"].to_numpy(), df["turnaround_s"].to_numpy()
    q = lambda a, p: float(np.percentile(a, p)) if len(a) else float("nan")  # noqa: E731
    return {
        "num_requests": len(df),
        "ttft_mean_s": float(ttft.mean()) if len(ttft) else float("nan"),
        "ttft_p50_s": q(ttft, 50), "ttft_p90_s": q(ttft, 90), "ttft_p99_s": q(ttft, 99),
        "turnaround_mean_s": float(turn.mean()) if len(turn) else float("nan"),
        "turnaround_p50_s": q(turn, 50), "turnaround_p99_s": q(turn, 99),
        "tpot_mean_s": float(df["tpot_s"].mean()),
        "slo_attainment": float((ttft <= slo_s).mean()) if len(ttft) else float("nan"),
    }


def throughput(df: pd.DataFrame, busy_s: float) -> dict[str, float]:
    """Job completion rate per wall second (first arrival to last finish) and per GPU-busy second
    (as the paper's authors computed it), and generated tokens per wall second."""
    wall_s = float(df["finish_s"].max() - df["arrival_s"].min())
    return {
        "wall_s": wall_s,
        "busy_s": busy_s,
        "jobs_per_s": len(df) / wall_s,
        "jobs_per_busy_s": len(df) / busy_s if busy_s > 0 else float("nan"),
        "tokens_per_s": float(df["generated_tokens"].sum()) / wall_s,
    }


def summarize(df: pd.DataFrame, slo_s: float, busy_s: float) -> dict:
    classes = {"ALL": df, "LS": df[df["priority"] == "LS"], "BE": df[df["priority"] == "BE"]}
    return {
        "classes": {name: class_metrics(part, slo_s) for name, part in classes.items()},
        "throughput": throughput(df, busy_s),
        "slo_s": slo_s,
    }


def format_summary(summary: dict) -> str:
    """The printed table: one row per priority class, then throughput."""
    table = pd.DataFrame(summary["classes"]).T
    ms = ["ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "turnaround_p50_s", "turnaround_p99_s", "tpot_mean_s"]
    shown = table[["num_requests", *ms, "slo_attainment"]].copy()
    shown[ms] = shown[ms] * 1000
    shown.columns = ["n", "TTFT p50 ms", "p90", "p99", "turnaround p50 ms", "p99", "TPOT ms", "SLO att."]
    t = summary["throughput"]
    tail = (f"jobs/s (wall) {t['jobs_per_s']:.3f}   jobs/s (GPU busy) {t['jobs_per_busy_s']:.3f}   "
            f"tokens/s {t['tokens_per_s']:.1f}   wall {t['wall_s']:.1f} s   SLO: LS TTFT <= {summary['slo_s']:g} s")
    return shown.to_string(float_format=lambda v: f"{v:.1f}" if abs(v) >= 1 else f"{v:.3f}") + "\n" + tail


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (3 significant digits) without the optional `tabulate` dependency."""
    cell = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def serving_metrics(requests: pd.DataFrame, slo_s: float) -> dict[str, float]:
    """The serving benchmark's metrics of one run's requests (real.report; sim.tracecmp on simulated runs)."""
    ls, be = (class_metrics(requests[requests.priority == p], slo_s) for p in ("LS", "BE"))
    tput = throughput(requests, 0.0)
    return {"LS TTFT mean s": ls["ttft_mean_s"], "LS TTFT p99 s": ls["ttft_p99_s"],
            "LS SLO": ls["slo_attainment"],
            "LS turnaround p50 s": ls["turnaround_p50_s"], "BE turnaround p50 s": be["turnaround_p50_s"],
            "completed": float(requests.finish_s.notna().mean()), "jobs/s": tput["jobs_per_s"],
            "tokens/s": tput["tokens_per_s"]}


def ratio_to(table: pd.DataFrame, baseline: pd.Series, column: str, keys=("rate", "seed")) -> pd.Series:
    """`column` of each row over the baseline rows' value with the same `keys` (one trace: rate and seed)."""
    base = table[baseline].set_index(list(keys))[column]
    matched = base.reindex(pd.MultiIndex.from_frame(table[list(keys)])).to_numpy()
    return pd.Series(table[column].to_numpy() / matched, index=table.index)
