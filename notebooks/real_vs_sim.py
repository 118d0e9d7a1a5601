# %% [markdown]
# # The real engine vs the simulator (H200 and H100: Mixtral-8x7B and Qwen3-30B-A3B, bf16)
# `python -m real run` replayed ShareGPT traces (300 requests, 32-token outputs, seeds 13 and 14) for fcfs, qllm
# and qllm_catchup at 8, 18 and 28 req/s on an H200 (CUDA-graph engine with urgent streams for preempting
# policies, stage stops, deferred tokens and rehearsed starts; serving round 12, session 13, a lease of its own);
# `python -m sim.validate` replayed the same traces in the simulator with the committed H200 profile (eighth
# calibration run, another lease), whose server costs and padding charges were fitted on round 9's seed 4
# (`python -m calibrate serving`): round 12 is a hold-out in every respect.
# Middle row: the H100 and Qwen3-30B-A3B bf16 on the final tree (session 30: lean attention on, seeds 27 and 28 on
# two leases, one run each; `results/real/h100_s30_round`), against the H100 Qwen3 profile with session 32's
# `graph_layer` rows (fitted on older rounds: 63 and 52 of 81 cells within target).
# Bottom row: the H100 and Mixtral-8x7B bf16 with its layers cut to 16 deep (`engine.num_layers=16`, session 33, seed
# 32, 12 / 30 / 48 req/s; `results/real/h100_s33_mixtral16_seed32`), against the H100 Mixtral profile, whose
# `graph_layer` rows were fitted on seed 31 (another lease): held out, 72 of 81 cells within target.
# Solid: sim, dashed: real. Reads `results/h200_serving`, `results/h100_serving` and `results/h100_mixtral16_serving`
# (or `$QLLM_RESULTS`); writes `figures/real_vs_sim.png`. Round 9's version (seeds 5 and 6, fcfs and qllm) is in git
# history at 09bea5b, round 7's (with qllm_catchup) at 6bc7efe, round 6's at eb24afc, round 5's at df7695f, round 4's
# (seeds 2-4, with qllm_eager) at f1567c2.

# %%
import matplotlib.pyplot as plt

from sim.collect import load_results, metrics_table
from sim.plots import plot_vs_rate, results_dir, save

rounds = {"H200, Mixtral-8x7B (round 12)": "h200_serving", "H100, Qwen3-30B-A3B (session 30)": "h100_serving",
          "H100, Mixtral-8x7B at 16 layers (session 33)": "h100_mixtral16_serving"}
metrics = {title: metrics_table(*load_results(results_dir(name))) for title, name in rounds.items()}

# %%
fig, grid = plt.subplots(len(rounds), 3, figsize=(16, 4.5 * len(rounds)), squeeze=False, layout="constrained")
panels = [("ttft_p50_s", "LS", "LS TTFT p50 (s)"), ("turnaround_p50_s", "BE", "BE turnaround p50 (s)"),
          ("tokens_per_s", "ALL", "generated tokens / s")]
for axes, (title, table) in zip(grid, metrics.items()):
    for ax, (value, priority, label) in zip(axes, panels):
        plot_vs_rate(ax, table, value, priority)
        ax.set_ylabel(label)
    axes[0].axhline(3.0, color="black", linestyle=":", label="SLO 3 s")
    axes[0].set_yscale("log")
    axes[0].set_title(title, loc="left")
    axes[0].legend()
print(save(fig, "real_vs_sim"))
