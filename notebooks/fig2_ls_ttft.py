# %% [markdown]
# # Figure 2: LS time to first token vs arrival rate
# The paper's Fig. 2: mean LS TTFT (log scale) for FCFS and QLLM, with the 3 s SLO. Mean over seeds, 95% band.
# Reads the consolidated sweep in `$QLLM_RESULTS` (default `results/paper`); writes `figures/fig2_ls_ttft.png`.

# %%
import matplotlib.pyplot as plt

from sim.collect import load_results, metrics_table
from sim.plots import plot_vs_rate, results_dir, save

requests, runs = load_results(results_dir())
metrics = metrics_table(requests, runs)

# %%
fig, ax = plt.subplots(figsize=(6, 4))
plot_vs_rate(ax, metrics, "ttft_mean_s", "LS")
ax.axhline(3.0, color="black", linestyle=":", label="SLO 3 s")
ax.set_yscale("log")
ax.set_ylabel("LS TTFT, mean (s)")
ax.set_title("LS time to first token")
ax.legend()
print(save(fig, "fig2_ls_ttft"))
