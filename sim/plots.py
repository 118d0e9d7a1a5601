"""Plot helpers the notebooks share: a metric against the arrival rate, mean and band over seeds."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sim.collect import over_seeds  # noqa: E402

STYLE = {"fcfs": dict(color="tab:red", marker="o"), "qllm": dict(color="tab:blue", marker="s"),
         "qllm_expert": dict(color="tab:green", marker="^"), "qllm_eager": dict(color="tab:orange", marker="v"),
         "qllm_catchup": dict(color="tab:purple", marker="D"), "qllm_lsonly": dict(color="tab:brown", marker="P"),
         "ls_first": dict(color="tab:gray", marker="x")}


def results_dir(default: str = "paper") -> Path:
    """`$QLLM_RESULTS` if set, else `results/<default>` (a consolidated sweep from `sim.collect`)."""
    return Path(os.environ.get("QLLM_RESULTS", Path(__file__).resolve().parents[1] / "results" / default))


def figures_dir() -> Path:
    path = Path(os.environ.get("QLLM_FIGURES", Path(__file__).resolve().parents[1] / "figures"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def plot_vs_rate(ax, metrics: pd.DataFrame, value: str, priority: str, label_suffix: str = "", **line) -> None:
    """One line per (source, policy): mean over seeds with a 95% band."""
    agg = over_seeds(metrics[metrics.priority == priority], value)
    for (source, policy), part in agg.groupby(["source", "policy"]):
        style = {**STYLE.get(policy, {}), **line}
        if source != "sim":
            style["linestyle"] = "--"
        ax.plot(part.rate, part["mean"], label=f"{policy} ({source}){label_suffix}", **style)
        ax.fill_between(part.rate, part.lo, part.hi, alpha=0.2, color=style.get("color"))
    ax.set_xlabel("arrival rate (req/s)")
    ax.grid(True, alpha=0.3)


def save(fig, name: str) -> Path:
    path = figures_dir() / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
