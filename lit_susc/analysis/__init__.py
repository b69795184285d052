"""Analyses of finished runs (spec appendix, "Leaky Activations?"): how alike two representations
of the same tokens are, globally (linear CKA) and locally (Jaccard-kNN), and the per-layer leak
check of an aux model (activations vs ground-truth and aux-predicted susceptibilities).
"""

from .cka import CKAAccumulator, linear_cka
from .leak import LeakConfig, plot_leak, run_leak_check
from .neighbours import knn_jaccard, knn_jaccard_per_token, neighbour_jaccard

__all__ = [
    "CKAAccumulator", "LeakConfig", "knn_jaccard", "knn_jaccard_per_token", "linear_cka", "neighbour_jaccard",
    "plot_leak", "run_leak_check",
]
