"""The baseline the aux model must beat: ridge regression (scikit-learn) on the same features.

    w = argmin_w ||Y - X' w - b||^2 + alpha ||w||^2,   X' = features normalised as for the aux model,

with alpha chosen among ``alphas`` by leave-one-out error on the training split (``RidgeCV``),
then scored by per-target Pearson correlation on the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import RidgeCV
from torch import Tensor
from torchmetrics import PearsonCorrCoef


@dataclass
class RidgeConfig:
    """The ridge baseline."""

    alphas: list[float] = field(default_factory=lambda: [10.0**k for k in range(-3, 6)])
    """Candidate penalties (on the sum of squared errors), chosen by leave-one-out on the training split."""
    max_tokens: int | None = 50_000
    """Fit on at most this many training tokens (evenly strided); None: all. scikit-learn needs a
    few times max_tokens x n_features x 8 bytes (Pythia-1.4B, 4 layers: ~3 GiB per copy)."""

    def __post_init__(self) -> None:
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ValueError(f"ridge.alphas must be a non-empty list of positive numbers, got {self.alphas}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise ValueError(f"ridge.max_tokens must be >= 2 or null, got {self.max_tokens}")


def ridge_pearson(features: np.ndarray, targets: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                  feature_mean: Tensor, feature_std: Tensor, config: RidgeConfig,
                  chunk: int = 1 << 14) -> tuple[Tensor, dict]:
    """Per-target validation Pearson of the ridge baseline, and {"alpha": chosen, "train_tokens": used}."""
    mean, std = feature_mean.numpy(), feature_std.numpy()
    if config.max_tokens is not None and len(train_rows) > config.max_tokens:
        train_rows = train_rows[np.linspace(0, len(train_rows) - 1, config.max_tokens).astype(np.int64)]
    x = (features[train_rows].astype(np.float64) - mean) / std
    ridge = RidgeCV(alphas=config.alphas).fit(x, targets[train_rows])
    n_targets = targets.shape[1]
    pearson = PearsonCorrCoef(num_outputs=n_targets, sync_on_compute=False)  # this rank's data only
    for a in range(0, len(val_rows), chunk):
        rows = val_rows[a:a + chunk]
        pred = torch.from_numpy(ridge.predict((features[rows].astype(np.float64) - mean) / std).reshape(len(rows), -1))
        true = torch.from_numpy(targets[rows].astype(np.float64))
        if n_targets == 1:  # PearsonCorrCoef(num_outputs=1) takes 1-D inputs
            pred, true = pred[:, 0], true[:, 0]
        pearson.update(pred, true)
    return pearson.compute().reshape(-1).float(), {"alpha": float(ridge.alpha_), "train_tokens": len(train_rows)}
