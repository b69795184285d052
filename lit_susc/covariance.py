"""Streaming covariances of a scalar observable with per-token losses, and the estimators.

At draw s of a chain restricted to component C (design.md section 2):

    phi_s = L_ref(w_s) - L_ref(w*)           (component loss on the reference batch)
    d_s[t] = l_t(w_s) - L_ref(w_s)           (centred per-token loss of observation token t)

Only sums are kept, in float64: S, sum phi, sum phi^2, sum d[t], sum phi*d[t]; they add across
draws, chains and ranks. From them, pooled over all S draws of all chains of C:

    seed convention (the spec's estimator, the default):
        chi[t] = nbeta/S * sum_s (phi_s - mean phi)(d_s[t] - mean d[t])
               = nbeta * (sum phi*d[t] / S - (sum phi / S)(sum d[t] / S))
    baker convention (Baker et al. 2025, devinterp 2.0.1):
        chi[t] = -Cov(phi, d[t]) = -(seed value) / nbeta

and the per-chain learning coefficient lambda = nbeta * mean_s phi_s. (Both conventions are
chi = k Cov(phi, d[t]); lit_susc.statistics names them, holds k and converts between them.)

Standard error of chi (batch means of the linearised estimator). Draws of a chain are
autocorrelated, so they are not counted as independent: each chain's draws are cut into
contiguous blocks B of ``block`` draws (the last one of a chain may be shorter), and only the
block sums n_B, X_B = sum phi, Z_B[t] = sum d[t], Y_B[t] = sum phi*d[t] enter, through their
second moments summed over all K blocks of all chains. The covariance estimate c = mean_s psi_s
to first order, with psi_s = (phi_s - mu_phi)(d_s - mu_d) - c, whose block totals are

    Q_B[t] = Y_B - mu_d X_B - mu_phi Z_B + n_B (mu_phi mu_d - c)          (sum_B Q_B = 0 exactly)

and, treating blocks as independent (they are when a block is long against the autocorrelation
time; blocks of different chains are), with the pooled means mu (so that differences between
chains count as noise too):

    V_b(c) = K/(K-1) * sum_B Q_B[t]^2 / S^2

sum_B Q_B^2 expands into the 10 second moments of (n, X, Z, Y) over blocks, which are what is
kept (3 scalars, 7 vectors of T), so the SE costs no pass over stored draws. Batch means
underestimate the variance by O(tau/b) when blocks of b draws are not long against the
autocorrelation time tau (for AR(1) draws with tau = 15, b = 25 gives 0.75 of it). The lugsail
estimator (Vats and Flegal 2022) cancels that first-order term with a second set of blocks of
half the length, kept the same way; it is floored at the plain value, so it never claims less
error than batch means do:

    Var(c) = max(2 V_b - V_{b/2}, V_b),      chi_se = nbeta * sqrt(Var(c))  (baker: sqrt(Var(c)))

(the same AR(1) case: 0.97 of the variance). Blocks of one draw have no halves: Var(c) = V_1.

Reliability of a component's chi across tokens (design.md section 2): the share of its variance
over tokens that is signal,

    reliability = max(0, 1 - mean_t chi_se[t]^2 / var_t chi[t])       (var_t with 1/T)

which, for two independent runs, predicts the Pearson correlation between their chi vectors.

The Bayesian influence function (design.md section 2) is a cross-covariance of two loss vectors,
a[i] = l_i(w_s) (training samples) and b[q] = l_q(w_s) (queries), kept the same way:

    sums: S, sum a[i], sum b[q], sum a[i] b[q]
    BIF(z_i, q) = -Cov(l_i, l_q) = -(sum a[i] b[q] / S - (sum a[i] / S)(sum b[q] / S))

Covariances do not change when a constant is added to a or b, so callers may subtract the
losses at w* first: the sums then stay small and the float64 subtraction loses no digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .statistics import convention_coefficient


class StreamingSums:
    """float64 sums over draws that add across draws, chains and ranks: state / merge / from_state."""

    state_names: tuple[str, ...] = ()

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.state_names}

    def merge(self, other: StreamingSums) -> None:
        for name in self.state_names:
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))

    @classmethod
    def from_state(cls, state: dict[str, Tensor]):
        return cls(**{k: v.to(torch.float64) for k, v in state.items()})


def _zeros(*shape: int, device: torch.device | str = "cpu") -> Tensor:
    return torch.zeros(shape, dtype=torch.float64, device=device)


@dataclass
class BatchMoments(StreamingSums):
    """Second moments over contiguous blocks of ``block`` draws of the block sums n, X, Z, Y.

    ``update`` folds a draw into the open block, closed every ``block`` draws (and by
    ``close_block`` when a chain ends, before its state is saved or merged: blocks never span
    two chains). ``variance`` is the batch-means Var of the covariance (module docstring).
    """

    state_names = ("blocks", "scalar", "token")

    blocks: Tensor  # float64 scalar: number of closed blocks K
    scalar: Tensor  # float64 [3]: sum_B n^2, n X, X^2
    token: Tensor  # float64 [7, T]: sum_B n Z, n Y, X Z, X Y, Z^2, Z Y, Y^2
    block: int = 0  # draws per block (0: one block per chain); not state: it changes no sum
    _open: tuple[Tensor, Tensor, Tensor] | None = None  # X, Z, Y of the open block
    _open_n: int = 0  # its draws n

    @classmethod
    def zeros(cls, n_tokens: int, device: torch.device | str = "cpu", block: int = 0) -> BatchMoments:
        return cls(_zeros(device=device), _zeros(3, device=device), _zeros(7, n_tokens, device=device), block=block)

    def update(self, phi: Tensor, d: Tensor, phi_d: Tensor) -> None:
        if self._open is None:
            self._open = (phi.clone(), d.clone(), phi_d.clone())
        else:
            x, z, y = self._open
            x += phi
            z += d
            y += phi_d
        self._open_n += 1
        if self.block and self._open_n >= self.block:
            self.close_block()

    def close_block(self) -> None:
        """Fold the open block's second moments (a no-op when no draw is open)."""
        if self._open is None:
            return
        (x, z, y), n = self._open, float(self._open_n)
        self._open, self._open_n = None, 0
        self.blocks += 1
        self.scalar += torch.stack([torch.full_like(x, n * n), n * x, x * x])
        self.token += torch.stack([n * z, n * y, x * z, x * y, z * z, z * y, y * y])

    def merge(self, other: StreamingSums) -> None:
        self.close_block()
        other.close_block()
        super().merge(other)

    def state(self) -> dict[str, Tensor]:
        self.close_block()
        return super().state()

    def variance(self, count: Tensor, mu_phi: Tensor, mu_d: Tensor, c: Tensor) -> Tensor:
        """K/(K-1) sum_B Q_B^2 / S^2 [T], from the pooled means; NaN with fewer than 2 blocks."""
        self.close_block()
        if self.blocks < 2:
            return torch.full_like(mu_d, float("nan"))
        k = self.blocks
        a = mu_phi * mu_d - c  # the coefficient of n_B in Q_B
        nn, nx, xx = self.scalar
        nz, ny, xz, xy, zz, zy, yy = self.token
        q2 = (yy + mu_d**2 * xx + mu_phi**2 * zz + a**2 * nn
              - 2 * mu_d * xy - 2 * mu_phi * zy + 2 * a * ny
              + 2 * mu_d * mu_phi * xz - 2 * a * mu_d * nx - 2 * a * mu_phi * nz)
        return (k / (k - 1)) * q2.clamp_min(0) / count**2


@dataclass
class CovarianceSums(StreamingSums):
    """Sufficient statistics of (phi, d[t]) over draws, with the batch moments of chi_se.

    ``batches`` uses blocks of ``block`` draws, ``half_batches`` blocks of half as many (the
    lugsail correction, module docstring). Call ``close_block`` when a chain ends.
    """

    state_names = ("count", "sum_phi", "sum_phi_sq", "sum_d", "sum_phi_d")

    count: Tensor  # float64 scalar: number of draws S
    sum_phi: Tensor  # float64 scalar
    sum_phi_sq: Tensor  # float64 scalar
    sum_d: Tensor  # float64 [T]
    sum_phi_d: Tensor  # float64 [T]
    batches: BatchMoments | None = None
    half_batches: BatchMoments | None = None

    @classmethod
    def zeros(cls, n_tokens: int, device: torch.device | str = "cpu", block: int = 0) -> CovarianceSums:
        z = lambda *shape: _zeros(*shape, device=device)
        return cls(z(), z(), z(), z(n_tokens), z(n_tokens), BatchMoments.zeros(n_tokens, device, block),
                   BatchMoments.zeros(n_tokens, device, max(1, block // 2)))

    def update(self, phi: Tensor, d: Tensor) -> None:
        """Fold one draw: phi a scalar, d the [T] centred per-token losses."""
        phi, d = phi.to(torch.float64), d.to(torch.float64)
        self.count += 1
        self.sum_phi += phi
        self.sum_phi_sq += phi * phi
        self.sum_d += d
        phi_d = d * phi
        self.sum_phi_d.add_(phi_d)
        self.batches.update(phi, d, phi_d)
        self.half_batches.update(phi, d, phi_d)

    def close_block(self) -> None:
        self.batches.close_block()
        self.half_batches.close_block()

    def state(self) -> dict[str, Tensor]:
        return {**super().state(), **{f"batches.{k}": v for k, v in self.batches.state().items()},
                **{f"half_batches.{k}": v for k, v in self.half_batches.state().items()}}

    def merge(self, other: StreamingSums) -> None:
        super().merge(other)
        self.batches.merge(other.batches)
        self.half_batches.merge(other.half_batches)

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> CovarianceSums:
        own = {k: v.to(torch.float64) for k, v in state.items() if "." not in k}
        parts = {p: BatchMoments.from_state({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(p + ".")})
                 for p in ("batches", "half_batches")}
        return cls(**own, **parts)

    def covariance(self) -> Tensor:
        """Cov(phi, d[t]) with the 1/S (population) normalisation of the spec's estimator."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 draws, got {int(self.count)}")
        s = self.count
        return self.sum_phi_d / s - (self.sum_phi / s) * (self.sum_d / s)

    def covariance_variance(self) -> Tensor:
        """Var of ``covariance()`` [T]: V_b times the lugsail factor of the module docstring."""
        s = self.count
        args = (s, self.sum_phi / s, self.sum_d / s, self.covariance())
        plain = self.batches.variance(*args)
        if not self.half_batches.blocks > self.batches.blocks:  # blocks of one draw: no shorter ones
            return plain
        half = self.half_batches.variance(*args)
        return plain * (2 - half.sum() / plain.sum()).clamp_min(1.0)


def susceptibility(sums: CovarianceSums, nbeta: float, convention: str = "seed") -> Tensor:
    """chi[t] = k Cov(phi, d[t]) in the given convention (module docstring)."""
    return convention_coefficient(convention, nbeta) * sums.covariance()


def susceptibility_se(sums: CovarianceSums, nbeta: float, convention: str = "seed") -> Tensor:
    """chi_se[t] = |k| sqrt(Var(c)): the batch-means standard error of ``susceptibility`` (module docstring)."""
    return abs(convention_coefficient(convention, nbeta)) * sums.covariance_variance().sqrt()


def reliability(chi: Tensor, chi_se: Tensor) -> float:
    """max(0, 1 - mean_t chi_se^2 / var_t chi): the share of chi's variance over tokens that is signal.

    NaN when the SE is unknown (fewer than two blocks) or chi does not vary over tokens."""
    chi, chi_se = chi.reshape(-1).double(), chi_se.reshape(-1).double()
    total = chi.var(correction=0)
    if chi.numel() < 2 or not bool(total > 0) or not bool(torch.isfinite(chi_se).all()):
        return float("nan")
    return max(0.0, 1.0 - float(chi_se.square().mean() / total))


def direction_reliability(directions: Tensor, mean_se_sq: Tensor, variances: Tensor) -> Tensor:
    """max(0, 1 - sum_j v_j^2 m_j / v^T C v) [m] for the rows v of ``directions`` [m, d] in chi's
    component space, m_j = mean_t chi_se[j, t]^2 [d] and v^T C v = ``variances`` [m]: the share of
    chi's variance along v that is signal. Components are sampled by independent chains, so their
    noise is uncorrelated and adds up weighted by v_j^2."""
    noise = directions.double().square() @ mean_se_sq.double()
    return (1 - noise / variances.double()).clamp_min(0)


def default_block(draws: int) -> int:
    """Draws per batch-means block when the config leaves it open: 2 ceil(draws / 16), an even
    number (its half blocks are whole) giving each chain about 8 blocks (4 chains: 32)."""
    return 2 * math.ceil(draws / 16)


def learning_coefficient(mean_phi: float, nbeta: float) -> float:
    """lambda = nbeta * (mean over draws of L_ref(w_s) - L_ref(w*))."""
    return nbeta * mean_phi


@dataclass
class CrossCovarianceSums(StreamingSums):
    """Sufficient statistics of two loss vectors a [A] and b [B] over draws (module docstring)."""

    state_names = ("count", "sum_a", "sum_b", "sum_ab")

    count: Tensor  # float64 scalar: number of draws S
    sum_a: Tensor  # float64 [A]
    sum_b: Tensor  # float64 [B]
    sum_ab: Tensor  # float64 [A, B]

    @classmethod
    def zeros(cls, n_a: int, n_b: int, device: torch.device | str = "cpu") -> CrossCovarianceSums:
        return cls(_zeros(device=device), _zeros(n_a, device=device), _zeros(n_b, device=device),
                   _zeros(n_a, n_b, device=device))

    def update(self, a: Tensor, b: Tensor) -> None:
        """Fold one draw: a [A] and b [B] losses at the same weights."""
        a, b = a.to(torch.float64), b.to(torch.float64)
        self.count += 1
        self.sum_a += a
        self.sum_b += b
        self.sum_ab.addr_(a, b)

    def covariance(self) -> Tensor:
        """Cov(a[i], b[q]) [A, B] with the 1/S normalisation, like ``CovarianceSums.covariance``."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 draws, got {int(self.count)}")
        s = self.count
        return self.sum_ab / s - torch.outer(self.sum_a / s, self.sum_b / s)


def bayesian_influence(sums: CrossCovarianceSums) -> Tensor:
    """BIF(z_i, q) = -Cov(l_i, l_q) [train, query] over the draws (design.md section 2).

    Negative: upweighting z_i lowers the query's expected loss (z_i helps q); positive: it raises it.
    """
    return -sums.covariance()
