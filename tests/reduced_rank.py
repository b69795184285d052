"""The reduced-rank regression of design.md section 6, shared by the learning-coefficient oracle tests.

Linear m -> h -> n network without biases, x and y independent N(0, 1), N samples; at the most
singular true parameter w* = 0 the learning coefficient is known (Aoyagi): (8, 3, 4) -> 6.0.
"""

import torch
from torch import nn

N = 1000


def loss_fn(model, batch):
    x, y = batch
    return 0.5 * ((y - model(x)) ** 2).sum(-1)


def rrr(m: int = 8, h: int = 3, out: int = 4, zero: bool = True):
    """(model at w* = 0 or at a random point, batches of 100, X, Y) of the (m, h, out) regression."""
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(N, m, generator=g), torch.randn(N, out, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(m, h, bias=False), nn.Linear(h, out, bias=False))
    if zero:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    return model, [(X[i:i + 100], Y[i:i + 100]) for i in range(0, N, 100)], X, Y
