# %% [markdown]
# # Figure 4: LS and BE turnaround vs arrival rate
# Mean turnaround (arrival to last token) per class; QLLM should cut LS turnaround at some cost to BE.

# %%
import matplotlib.pyplot as plt

from sim.collect import load_results, metrics_table
from sim.plots import plot_vs_rate, results_dir, save

requests, runs = load_results(results_dir())
metrics = metrics_table(requests, runs)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, priority in zip(axes, ["LS", "BE"]):
    plot_vs_rate(ax, metrics, "turnaround_mean_s", priority)
    ax.set_yscale("log")
    ax.set_title(f"{priority} turnaround")
    ax.set_ylabel("turnaround, mean (s)")
axes[0].legend()
print(save(fig, "fig4_turnaround"))
