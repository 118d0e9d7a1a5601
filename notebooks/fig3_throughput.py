# %% [markdown]
# # Figure 3: job completion rate vs arrival rate
# Finished jobs per GPU-busy second (as the paper's authors computed it) and per wall second.

# %%
import matplotlib.pyplot as plt

from sim.collect import load_results, metrics_table
from sim.plots import plot_vs_rate, results_dir, save

requests, runs = load_results(results_dir())
metrics = metrics_table(requests, runs)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, value, title in zip(axes, ["jobs_per_busy_s", "jobs_per_s"], ["per GPU-busy second", "per wall second"]):
    plot_vs_rate(ax, metrics, value, "ALL")
    ax.set_title(f"job completion rate, {title}")
axes[0].set_ylabel("jobs / s")
axes[0].legend()
print(save(fig, "fig3_throughput"))
