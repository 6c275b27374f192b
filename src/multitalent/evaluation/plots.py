"""Box plots of per-head mean Dice by head group, in the style of the MultiTalent paper's Figure 2."""

from __future__ import annotations

import os

import numpy as np

from multitalent.errors import atomic_path
from multitalent.evaluation.summary import GROUP_TITLES, GROUPS


def group_dice(summary: dict, group: str) -> list[float]:
    """Mean Dice in percent of each head of ``group`` (one value per head; heads without a value skipped)."""
    heads = summary["heads"]
    return [100.0 * heads[h]["dice_mean"] for h in summary["groups"][group]["heads"]
            if heads[h]["dice_mean"] is not None]


def plot_comparison(summaries: dict[str, dict], png: str | os.PathLike, title: str | None = None) -> None:
    """One box per method per group (all heads / lesions / difficult); each point is one head's mean Dice.

    Group membership comes from each summary itself: evaluate every method with the same
    ``reference`` so that "difficult" means the same heads for all of them.
    """
    # a bare Figure renders with Agg and touches no global pyplot state (safe in servers and threads)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    methods = list(summaries)
    n = len(methods)
    width = 0.8 / max(n, 1)
    colors = colormaps["tab10"].colors
    rng = np.random.default_rng(0)  # fixed jitter: the same inputs give the same picture
    fig = Figure(figsize=(2.2 + 1.6 * len(GROUPS) * max(n, 1) ** 0.5, 4.5))
    ax = fig.subplots()
    for j, method in enumerate(methods):
        labelled = False
        for g, group in enumerate(GROUPS):
            values = group_dice(summaries[method], group)
            if not values:
                continue
            x = g + (j - (n - 1) / 2) * width
            ax.boxplot([values], positions=[x], widths=width * 0.8, patch_artist=True, showfliers=False,
                       boxprops={"facecolor": (*colors[j % 10][:3], 0.35), "edgecolor": colors[j % 10]},
                       medianprops={"color": "black"})
            jitter = rng.uniform(-width * 0.25, width * 0.25, size=len(values))
            ax.scatter(x + jitter, values, s=12, color=colors[j % 10], zorder=3,
                       label=None if labelled or not method else method)
            labelled = True
    counts = []
    for group in GROUPS:
        sizes = {summaries[m]["groups"][group]["n_heads"] for m in methods}
        counts.append(f"{GROUP_TITLES[group]}\n(n={'/'.join(str(s) for s in sorted(sizes)) if sizes else 0})")
    ax.set_xticks(range(len(GROUPS)), counts)
    ax.set_xlim(-0.6, len(GROUPS) - 0.4)
    ax.set_ylim(-2, 102)  # points at 0 or 100 stay visible
    ax.set_ylabel("mean Dice per head (%)")
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    if any(methods):
        ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def plot_boxplot(summary: dict, png: str | os.PathLike) -> None:
    """Box plot of one evaluation: one box per group, one point per head."""
    plot_comparison({"": summary}, png, title="Dice per head by group")
