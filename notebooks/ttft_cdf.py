# %% [markdown]
# # LS TTFT distribution (not in the paper)
# Empirical CDFs of LS TTFT at a few rates, all seeds pooled.

# %%
import matplotlib.pyplot as plt
import numpy as np

from sim.collect import load_results
from sim.plots import STYLE, results_dir, save

requests, _ = load_results(results_dir())
ls = requests[requests.priority == "LS"]
rates = sorted(ls.rate.unique())
shown = [rates[0], rates[len(rates) // 2], rates[-1]]

# %%
fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.5), sharey=True)
for ax, rate in zip(np.atleast_1d(axes), shown):
    for (source, policy), part in ls[ls.rate == rate].groupby(["source", "policy"]):
        ttft = np.sort(part.ttft_s.to_numpy())
        ax.step(ttft, np.arange(1, len(ttft) + 1) / len(ttft), where="post", label=f"{policy} ({source})",
                color=STYLE.get(policy, {}).get("color"))
    ax.axvline(3.0, color="black", linestyle=":")
    ax.set_xscale("log")
    ax.set_title(f"{rate:g} req/s")
    ax.set_xlabel("LS TTFT (s)")
    ax.grid(True, alpha=0.3)
np.atleast_1d(axes)[0].set_ylabel("CDF")
np.atleast_1d(axes)[0].legend()
print(save(fig, "ttft_cdf"))
