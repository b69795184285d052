"""Linear CKA (Kornblith et al. 2019) in feature space, streamed over blocks of rows.

For representations X [N, p] and Y [N, q] of the same N tokens, column-centred
(X_c = H X, Y_c = H Y, H = I - 1 1^T / N):

    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)

which equals the kernel form <H K H, H L H>_F / (||H K H||_F ||H L H||_F) with K = X X^T and
L = Y Y^T, but never builds an N x N matrix: only the p x p, q x p and q x q second moments and
the column sums are accumulated (float64), one block of rows at a time, and centred at the end:

    X_c^T X_c = X^T X - s_x s_x^T / N,   Y_c^T X_c = Y^T X - s_y s_x^T / N,   s = column sums

CKA lies in [0, 1]; it is invariant to orthogonal transforms and isotropic scaling of either
side (and to adding a constant row vector), and is 1 for identical inputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["CKAAccumulator", "linear_cka"]

# Rows of a block are chosen so that a float64 block holds about this many entries (32 MiB).
_BLOCK_ENTRIES = 1 << 22
# A representation whose centred spread is below this fraction of its uncentred spread (about the
# first block's mean) is constant up to rounding.
_ZERO_VARIANCE_RATIO = 1e-12


def _as_float64(name: str, A, device: torch.device | None) -> Tensor:
    A = torch.from_numpy(np.asarray(A)) if not isinstance(A, Tensor) else A
    if A.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [tokens, features], got shape {tuple(A.shape)}")
    A = A.detach().to(device=device if device is not None else A.device, dtype=torch.float64)
    if not bool(torch.isfinite(A).all()):
        raise ValueError(f"{name} contains NaN or inf values; drop or repair those tokens before computing CKA")
    return A


class CKAAccumulator:
    """The streaming second moments behind ``linear_cka``: ``update`` with row blocks of the same
    tokens in X and Y, then ``compute``.

    Y may hold several representations side by side (e.g. ground-truth and predicted
    susceptibilities); ``compute(y_columns)`` gives the CKA between X and Y[:, y_columns] from the
    one set of moments, so X^T X is accumulated once for all of them.

    Moments live on the device of the first X block (float64). Every block is shifted by the first
    block's column means before it is accumulated: CKA does not change, and the subtraction
    X^T X - s s^T / N then no longer cancels the (possibly large) mean of the activations.
    """

    def __init__(self) -> None:
        self.n = 0
        self._shift_x: Tensor | None = None
        self._shift_y: Tensor | None = None
        self._xx = self._yx = self._yy = self._sx = self._sy = None

    def update(self, X, Y) -> None:
        """Add rows: X [n, p] and Y [n, q], row i of both describing the same token (numpy or torch)."""
        X = _as_float64("X", X, self._xx.device if self._xx is not None else None)
        Y = _as_float64("Y", Y, X.device)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X and Y must describe the same tokens: X has {X.shape[0]} rows, Y has {Y.shape[0]}")
        if self._shift_x is None:
            if X.shape[0] == 0:
                return
            self._shift_x, self._shift_y = X.mean(0), Y.mean(0)
            p, q = X.shape[1], Y.shape[1]
            self._xx = X.new_zeros(p, p)
            self._yx, self._yy = X.new_zeros(q, p), X.new_zeros(q, q)
            self._sx, self._sy = X.new_zeros(p), X.new_zeros(q)
        elif X.shape[1] != self._sx.shape[0] or Y.shape[1] != self._sy.shape[0]:
            raise ValueError(f"blocks must keep their widths: got X [., {X.shape[1]}], Y [., {Y.shape[1]}] after "
                             f"X [., {self._sx.shape[0]}], Y [., {self._sy.shape[0]}]")
        X = X - self._shift_x
        Y = Y - self._shift_y
        self._xx += X.T @ X
        self._yx += Y.T @ X
        self._yy += Y.T @ Y
        self._sx += X.sum(0)
        self._sy += Y.sum(0)
        self.n += X.shape[0]

    def compute(self, y_columns: slice | None = None) -> float:
        """CKA(X, Y[:, y_columns]) over all rows seen (module docstring for the formula)."""
        if self.n < 2:
            raise ValueError(f"linear CKA needs at least 2 tokens (rows), got N={self.n}")
        cols = y_columns if y_columns is not None else slice(None)
        sy = self._sy[cols]
        if sy.shape[0] == 0:
            raise ValueError(f"y_columns={y_columns} selects no column of Y (Y has {self._sy.shape[0]})")
        cxx = self._xx - torch.outer(self._sx, self._sx) / self.n
        cyx = self._yx[cols] - torch.outer(sy, self._sx) / self.n
        cyy = self._yy[cols, cols] - torch.outer(sy, sy) / self.n
        for name, centred, raw in (("X", cxx, self._xx), ("Y", cyy, self._yy[cols, cols])):
            spread, scale = float(torch.trace(centred)), float(torch.trace(raw))
            if not spread > _ZERO_VARIANCE_RATIO * scale:
                raise ValueError(f"{name} has zero variance (every token has the same representation); CKA is "
                                 "undefined for it: drop constant representations")
        value = float(torch.linalg.matrix_norm(cyx).square()
                      / (torch.linalg.matrix_norm(cxx) * torch.linalg.matrix_norm(cyy)))
        # rounding can push the ratio a few ulps past its bounds
        return min(max(value, 0.0), 1.0)


def linear_cka(X, Y, block_size: int | None = None) -> float:
    """Linear CKA between X [N, p] and Y [N, q] (numpy or torch, any float dtype), in float64:

        CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F),  X_c, Y_c column-centred.

    Computed over blocks of ``block_size`` rows (default: about 4M entries per block), so N can be
    millions; the result does not depend on the blocking beyond rounding. Torch inputs stay on
    their device.

    Raises:
        ValueError: if X or Y is not 2-D, they have different N, N < 2, a value is NaN or inf,
            or either has zero variance.
    """
    shapes = tuple(np.shape(X)), tuple(np.shape(Y))
    for name, shape in zip("XY", shapes):
        if len(shape) != 2:
            raise ValueError(f"{name} must be a 2-D array [tokens, features], got shape {shape}")
    (n, p), (m, q) = shapes
    if n != m:
        raise ValueError(f"X and Y must describe the same tokens: X has N={n} rows, Y has N={m}")
    if n < 2:
        raise ValueError(f"linear CKA needs at least 2 tokens (rows), got N={n}")
    if block_size is None:
        block_size = max(1, _BLOCK_ENTRIES // max(p, q, 1))
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 row, got {block_size}")
    acc = CKAAccumulator()
    for a in range(0, n, block_size):
        acc.update(X[a:a + block_size], Y[a:a + block_size])
    return acc.compute()
