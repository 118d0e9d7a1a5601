# %% [markdown]
# # SLO attainment vs arrival rate (not in the paper)
# Share of LS requests with TTFT <= 3 s; the usual serving target is 90%.

# %%
import matplotlib.pyplot as plt

from sim.collect import load_results, metrics_table
from sim.plots import plot_vs_rate, results_dir, save

requests, runs = load_results(results_dir())
metrics = metrics_table(requests, runs)

# %%
fig, ax = plt.subplots(figsize=(6, 4))
plot_vs_rate(ax, metrics, "slo_attainment", "LS")
ax.axhline(0.9, color="black", linestyle=":", label="90% target")
ax.set_ylim(-0.02, 1.02)
ax.set_ylabel("LS requests with TTFT <= 3 s")
ax.set_title("LS SLO attainment")
ax.legend()
print(save(fig, "slo_attainment"))
