"""The Langevin optimizer against exact identities (design.md section 2)."""

import copy
import math

import pytest
import torch
from torch import nn

from lit_susc.langevin import SGLD, RMSPropSGLD


def _model_and_grads(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    return model, lambda m: ((m(x) - y) ** 2).mean()


def test_noiseless_unit_temperature_sgld_is_sgd_with_half_the_lr():
    """Oracle: noise 0, nbeta 1, localization 0, lr = 2e gives exactly torch.optim.SGD(lr=e)."""
    model, loss = _model_and_grads()
    twin = copy.deepcopy(model)
    sgld = SGLD(model.parameters(), lr=2 * 0.05, nbeta=1.0, localization=0.0, noise_level=0.0)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.05)
    for _ in range(5):
        for m, opt in ((model, sgld), (twin, sgd)):
            opt.zero_grad()
            loss(m).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_one_step_matches_the_formula_with_localization_and_noise():
    """w <- w - lr/2 (nbeta g + gamma (w - w*)) + sqrt(lr) N(0, sigma^2), same generator draws."""
    model, loss = _model_and_grads()
    opt = SGLD(model.parameters(), lr=1e-2, nbeta=7.0, localization=3.0, noise_level=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # away from the anchor, so the localization force is non-zero
    before = [p.detach().clone() for p in model.parameters()]
    anchor = [opt.state[p]["anchor"] for p in model.parameters()]
    opt.zero_grad()
    loss(model).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(3)
    opt.step(generator=gen)
    gen = torch.Generator().manual_seed(3)
    for p, w, w0, g in zip(model.parameters(), before, anchor, grads):
        noise = torch.randn(w.shape, generator=gen) * math.sqrt(1e-2) * 0.5
        expected = w - 1e-2 / 2 * (7.0 * g + 3.0 * (w - w0)) + noise
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


def test_entries_outside_the_mask_and_unlisted_parameters_never_move():
    """After restrict({first: mask}), steps move exactly the masked entries of ``first``; every other
    parameter stays put although the loss pulls on it (its gradient is non-zero)."""
    model, loss = _model_and_grads()
    first = model[0].weight
    mask = torch.zeros_like(first, dtype=torch.bool)
    mask[1, 2:] = True
    opt = SGLD(model.parameters(), lr=1e-2, nbeta=10.0, localization=1.0)
    opt.restrict({first: mask})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        loss(model).backward()
        opt.step()
    moved = first.detach() != before["0.weight"]
    assert torch.equal(moved, mask)
    for name, p in model.named_parameters():
        if p is not first:
            assert torch.equal(p.detach(), before[name]), name
            # else staying put would not show the restriction: an unrestricted step would move it too
            assert p.grad is not None and p.grad.abs().max() > 0, name


def test_rmsprop_preconditioner_follows_the_design_formula():
    """V <- a V + (1-a) g^2, G = 1/(sqrt(V) + eps); drift * G (noise off here)."""
    model, loss = _model_and_grads()
    opt = RMSPropSGLD(model.parameters(), lr=1e-2, nbeta=5.0, localization=0.0, noise_level=0.0, alpha=0.9, eps=0.1)
    v = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        opt.zero_grad()
        loss(model).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        opt.step()
        for i, (p, w, g) in enumerate(zip(model.parameters(), before, grads)):
            v[i] = 0.9 * v[i] + 0.1 * g * g
            expected = w - 1e-2 / 2 * 5.0 * g / (v[i].sqrt() + 0.1)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_anchor_is_restored_from_a_checkpointed_state_dict(tmp_path):
    model, loss = _model_and_grads()
    w_star = [p.detach().clone() for p in model.parameters()]
    opt = SGLD(model.parameters(), lr=1e-2, nbeta=10.0, localization=1.0)
    for _ in range(3):
        opt.zero_grad()
        loss(model).backward()
        opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")

    fresh_model, _ = _model_and_grads(seed=1)  # different weights: the anchor must come from the checkpoint
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    fresh_model.load_state_dict(ckpt["model"])
    fresh = SGLD(fresh_model.parameters(), lr=1e-2, nbeta=10.0, localization=1.0)
    fresh.load_state_dict(ckpt["optimizer"])
    fresh.restore_anchor()
    for p, w in zip(fresh_model.parameters(), w_star):
        assert torch.equal(p.detach(), w)


def test_bounding_box_clamps_around_the_anchor():
    model, loss = _model_and_grads()
    opt = SGLD(model.parameters(), lr=1.0, nbeta=100.0, bounding_box=0.01)
    anchor = [opt.state[p]["anchor"] for p in model.parameters()]
    opt.zero_grad()
    loss(model).backward()
    opt.step()
    for p, w0 in zip(model.parameters(), anchor):
        assert (p.detach() - w0).abs().max() <= 0.01 + 1e-7


@pytest.mark.parametrize("kwargs", [{"lr": 0.0, "nbeta": 1.0}, {"lr": 1e-3, "nbeta": -1.0},
                                    {"lr": 1e-3, "nbeta": 1.0, "localization": -1}])
def test_invalid_hyperparameters_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SGLD(nn.Linear(2, 2).parameters(), **kwargs)
