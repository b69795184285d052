"""The per-PC validation Pearson bar chart (the spec's figure), aux model beside the ridge baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from ..figures import Figure, save_png


def plot_pearson(aux: Tensor, ridge: Tensor, path: str | Path, ceiling: Tensor | None = None) -> Path:
    """Bars of per-PC Pearson correlation, aux and ridge side by side, with their means as lines,
    and each PC's noise ceiling sqrt(reliability) as a black tick (no predictor can reach above it)."""
    k = np.arange(1, len(aux) + 1)
    fig = Figure(figsize=(max(6.0, 0.12 * len(aux) + 2), 3.5))
    ax = fig.subplots()
    ax.bar(k - 0.2, aux.numpy(), width=0.4, label=f"aux model (mean {aux.mean():.3f})", color="tab:blue")
    ax.bar(k + 0.2, ridge.numpy(), width=0.4, label=f"ridge (mean {ridge.mean():.3f})", color="tab:gray")
    ax.axhline(float(aux.mean()), color="tab:blue", lw=0.8, ls="--")
    ax.axhline(float(ridge.mean()), color="tab:gray", lw=0.8, ls="--")
    if ceiling is not None:
        ax.scatter(k, ceiling.numpy(), marker="_", s=120, color="black", zorder=3,
                   label=f"noise ceiling sqrt(reliability) (mean {ceiling.mean():.3f})")
    ax.set_xlabel("principal component")
    ax.set_ylabel("validation Pearson r")
    ax.set_ylim(min(0.0, float(min(aux.min(), ridge.min())) - 0.05), 1.0)
    ax.set_title("Aux model accuracy per PC (held-out documents)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)
