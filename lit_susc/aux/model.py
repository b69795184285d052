"""The aux model (a one-hidden-layer encoder-decoder) and the data module that feeds it.

Inputs are features normalised with training-split statistics, x' = (x - m) / s (s = 1 where a
feature does not vary); targets are PC scores divided by a fixed scale (see ``fit.py``). Loss:

    code = relu(W_e x' + b_e),   y_hat = W_d code + b_d
    loss = mean_{b,k} (y_hat_bk - y_bk)^2 + l1 * mean_{b,j} |code_bj|        (l1_on = "code")
    loss = mean_{b,k} (y_hat_bk - y_bk)^2 + l1 * mean |[W_e, W_d]|            (l1_on = "weights")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import PearsonCorrCoef

from ..statistics import Moments


@dataclass
class AuxModelConfig:
    """Architecture and optimisation of the aux model."""

    hidden_multiplier: int = 16
    """Hidden width = hidden_multiplier x number of target PCs (the spec's 16x)."""
    hidden_size: int | None = None
    """Hidden width in units; overrides hidden_multiplier when set."""
    l1: float = 1e-3
    """Weight of the L1 penalty (on the mean |hidden code| or the mean |weight|)."""
    l1_on: Literal["code", "weights"] = "code"
    """What the L1 penalty applies to: the hidden code (sparse codes) or the weights."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""

    def __post_init__(self) -> None:
        if self.hidden_multiplier < 1 or (self.hidden_size is not None and self.hidden_size < 1):
            raise ValueError(f"model.hidden_multiplier and model.hidden_size must be >= 1, got "
                             f"{self.hidden_multiplier}, {self.hidden_size}")
        if self.l1 < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"model needs l1 >= 0, lr > 0, weight_decay >= 0; got {self.l1}, {self.lr}, "
                             f"{self.weight_decay}")


def aux_loss(pred: Tensor, target: Tensor, code: Tensor, weights: list[Tensor], l1: float, l1_on: str) -> Tensor:
    """MSE on the targets plus l1 times the mean |code| or the mean |weight| (module docstring)."""
    if l1_on == "code":
        penalty = code.abs().mean()
    else:
        penalty = torch.cat([w.abs().flatten() for w in weights]).mean()
    return F.mse_loss(pred, target) + l1 * penalty


class AuxModel(L.LightningModule):
    """Normalised features [B, n_features] -> targets [B, n_targets]; validation Pearson per target.

    After every validation epoch ``pearson`` holds the per-target Pearson correlations over the
    whole validation set (synced across ranks); they are logged as ``val/pearson_mean`` and
    ``val/pearson_pc{k}``.
    """

    def __init__(self, n_features: int, n_targets: int, config: AuxModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or AuxModelConfig()
        hidden = self.config.hidden_size or self.config.hidden_multiplier * n_targets
        self.encoder = nn.Linear(n_features, hidden)
        self.decoder = nn.Linear(hidden, n_targets)
        self.val_pearson = PearsonCorrCoef(num_outputs=n_targets)
        self.pearson: Tensor | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        code = F.relu(self.encoder(x))
        return self.decoder(code), code

    def _loss(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        pred, code = self(x)
        weights = [self.encoder.weight, self.decoder.weight]
        return aux_loss(pred, y, code, weights, self.config.l1, self.config.l1_on), pred

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, _ = self._loss(*batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        loss, pred = self._loss(x, y)
        self.log("val/loss", loss, sync_dist=True)
        if y.shape[1] == 1:  # PearsonCorrCoef(num_outputs=1) takes 1-D inputs
            pred, y = pred[:, 0], y[:, 0]
        self.val_pearson.update(pred, y)

    def on_validation_epoch_end(self) -> None:
        self.pearson = self.val_pearson.compute().reshape(-1).detach().cpu()
        self.val_pearson.reset()
        # compute() has synced the metric; sync_dist only keeps Lightning from warning about it.
        self.log("val/pearson_mean", self.pearson.mean(), prog_bar=True, sync_dist=True)
        self.log_dict({f"val/pearson_pc{k}": r for k, r in enumerate(self.pearson)}, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)


def normalization_stats(features: np.ndarray, rows: np.ndarray, chunk: int = 1 << 14) -> tuple[Tensor, Tensor]:
    """Mean m and standard deviation s (float64, s = 1 where 0) of ``features[rows]``, read in chunks
    (``statistics.Moments``)."""
    moments = Moments()
    for a in range(0, len(rows), chunk):
        moments.update(features[rows[a:a + chunk]])
    return torch.from_numpy(moments.mean()), torch.from_numpy(moments.scale())


class _Rows(Dataset):
    """Rows of (features, targets) arrays, which may be memory-mapped; fetched a batch at a time."""

    def __init__(self, features: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> None:
        self.features, self.targets, self.rows = features, targets, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        rows = np.sort(self.rows[indices])  # sorted reads of a memory map are sequential
        x = torch.from_numpy(np.ascontiguousarray(self.features[rows]))
        y = torch.from_numpy(np.ascontiguousarray(self.targets[rows]))
        return list(zip(x, y))


class AuxDataModule(L.LightningDataModule):
    """Training and validation batches of (normalised features, targets), split by a token mask.

    Args:
        features: [N, n_features] (float16/32, may be a memory map).
        targets: [N, n_targets] float32.
        is_val: [N] bool, True for validation tokens.
        feature_mean, feature_std: normalisation statistics (of the training split), [n_features].
        batch_size: tokens per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, features: np.ndarray, targets: np.ndarray, is_val: np.ndarray, feature_mean: Tensor,
                 feature_std: Tensor, batch_size: int = 256, num_workers: int = 0) -> None:
        super().__init__()
        if len(features) != len(targets) or len(features) != len(is_val):
            raise ValueError(f"features ({len(features)} rows), targets ({len(targets)}) and the split mask "
                             f"({len(is_val)}) must describe the same tokens")
        self.features, self.targets = features, targets
        self.train_rows, self.val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        self.feature_mean, self.feature_std = feature_mean.float(), feature_std.float()
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Rows(self.features, self.targets, self.train_rows), batch_size=self.batch_size,
                          shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Rows(self.features, self.targets, self.val_rows), batch_size=self.batch_size,
                          num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: tuple[Tensor, Tensor], dataloader_idx: int) -> tuple[Tensor, Tensor]:
        x, y = batch
        return (x.float() - self.feature_mean.to(x.device)) / self.feature_std.to(x.device), y.float()
