"""The aux model on synthetic data with a known answer: targets = smooth function of features + noise."""

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_susc.aux.model import AuxDataModule, AuxModel, AuxModelConfig, aux_loss, normalization_stats
from lit_susc.aux.ridge import RidgeConfig, ridge_pearson
from lit_susc.aux.split import SplitConfig, document_split

N, D, DOCS, SIGMA = 20_000, 8, 400, 0.3


@pytest.fixture(scope="module")
def synthetic():
    """Features with non-zero mean and scale; three targets: odd, even and product non-linearities.

    With g the noiseless target and noise of variance SIGMA^2, no predictor's Pearson correlation
    with the noisy target can exceed the noise ceiling sqrt(var g / (var g + SIGMA^2)).
    """
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(N, D)) * 3 + 1).astype(np.float32)
    z = (x - 1) / 3
    a = rng.normal(size=(4, D)) / np.sqrt(D)
    g = np.stack([np.sin(1.5 * z @ a[0]), 2 * (z @ a[1]) ** 2, 2 * np.tanh(2 * z @ a[2]) * (z @ a[3])], 1)
    g /= g.std(0)  # the units of whitened PCs
    y = (g + SIGMA * rng.normal(size=g.shape)).astype(np.float32)
    ceiling = np.sqrt(g.var(0) / (g.var(0) + SIGMA**2))
    is_val = document_split([f"doc{i}" for i in np.repeat(np.arange(DOCS), N // DOCS)], SplitConfig(0.2))
    return x, y, is_val, ceiling


@pytest.fixture(scope="module")
def trained(synthetic):
    torch.set_num_threads(1)
    x, y, is_val, _ = synthetic
    mean, std = normalization_stats(x, np.flatnonzero(~is_val))
    data = AuxDataModule(x, y, is_val, mean, std, batch_size=256)
    model = AuxModel(D, 3, AuxModelConfig(lr=3e-3, l1=1e-4))
    L.seed_everything(0, verbose=False)
    L.Trainer(accelerator="cpu", max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0).fit(model, data)
    ridge, _ = ridge_pearson(x, y, data.train_rows, data.val_rows, mean, std, RidgeConfig())
    return model.pearson.numpy(), ridge.numpy()


def test_validation_pearson_reaches_90_percent_of_the_noise_ceiling(synthetic, trained):
    pearson, _ = trained
    assert np.all(pearson >= 0.9 * synthetic[3]), (pearson, synthetic[3])


def test_the_aux_model_beats_ridge_on_non_linear_targets(trained):
    pearson, ridge = trained
    assert np.all(pearson > ridge + 0.2), (pearson, ridge)
    assert np.all(np.abs(ridge[1:]) < 0.1)  # even and product targets: no linear signal at all


def test_hidden_width_is_16_times_the_number_of_targets_by_default():
    assert AuxModel(32, 5).encoder.out_features == 80
    assert AuxModel(32, 5, AuxModelConfig(hidden_size=7)).encoder.out_features == 7


def test_loss_is_mse_plus_l1_on_the_code_or_the_weights():
    """Oracle: the formula written out."""
    model = AuxModel(4, 2, AuxModelConfig(l1=0.5))
    x, y = torch.randn(10, 4), torch.randn(10, 2)
    pred, code = model(x)
    weights = [model.encoder.weight, model.decoder.weight]
    mse = F.mse_loss(pred, y)
    assert torch.allclose(aux_loss(pred, y, code, weights, 0.5, "code"), mse + 0.5 * code.abs().mean())
    mean_abs_weight = (weights[0].abs().sum() + weights[1].abs().sum()) / (weights[0].numel() + weights[1].numel())
    assert torch.allclose(aux_loss(pred, y, code, weights, 0.5, "weights"), mse + 0.5 * mean_abs_weight)


def test_inputs_are_normalised_with_training_split_statistics(synthetic):
    x, y, is_val, _ = synthetic
    mean, std = normalization_stats(x, np.flatnonzero(~is_val))
    assert np.allclose(mean.numpy(), x[~is_val].mean(0), atol=1e-4)
    assert np.allclose(std.numpy(), x[~is_val].std(0, ddof=1), rtol=1e-4)
    data = AuxDataModule(x, y, is_val, mean, std, batch_size=4096)
    batch = data.on_after_batch_transfer(next(iter(data.train_dataloader())), 0)[0]
    assert batch.mean(0).abs().max() < 0.1 and (batch.std(0) - 1).abs().max() < 0.1
