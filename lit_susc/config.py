"""Typed configuration of a susceptibility run (the same fields in Python, YAML and outputs)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Literal

from .langevin import SAMPLERS, SGLD
from .schedule import rounds
from .statistics import CONVENTIONS, Convention


def _is_number(value) -> bool:
    """A finite real number (bool is not one: YAML's yes/no must not pass as 1/0)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_number(name: str, value, *, low: float, strict: bool = False, integer: bool = False,
                 optional: bool = False, auto: bool = False, high: float | None = None, why: str = "") -> None:
    """Raise ValueError unless ``value`` is a finite number (a whole one with ``integer``) at or above
    ``low`` (above it with ``strict``) and at most ``high`` (when given), or None with ``optional``;
    the message names the setting ``name`` (as the YAML spells it) and the range it accepts."""
    if optional and value is None:
        return
    kind = "a whole number" if integer else "a finite number"
    ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool)) if integer else _is_number(value)
    if not (ok and (value > low if strict else value >= low) and (high is None or value <= high)):
        accepted = f"{kind} {'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "") + \
                   (" or null" if optional else "") + (" or 'auto'" if auto else "")
        raise ValueError(f"{name} must be {accepted}, got {value!r}" + (f": {why}" if why else ""))

@dataclass
class SGLDConfig:
    """How the local posterior is sampled and how chi is reported.

    The defaults are the small-model settings of Baker et al. 2025 (design.md section 4) with
    fewer draws; Gordon et al. 2026 used rmsprop_sgld, lr=1e-5, nbeta=10, localization=300,
    chains=4, draws=100, steps_between_draws=160 on Pythia-1.4B.
    """

    lr: float = 1e-3
    """Step size epsilon (drift lr/2 times the force, noise std sqrt(lr) * noise_level)."""
    nbeta: float = 30.0
    """n * beta: inverse temperature times effective dataset size (devinterp's rule: B / ln B)."""
    localization: float = 300.0
    """gamma of the prior gamma/2 * ||w - w*||^2 that keeps chains near the trained point w*
    (>= 0; 0: no localization)."""
    chains: int = 4
    """Independent chains per component, each started at w*."""
    draws: int = 100
    """Draws kept per chain (observables are evaluated at each)."""
    burn_in: int | Literal["auto"] = 0
    """SGLD steps per chain before the first kept draw's steps; 'auto': measured on a pilot chain
    (MSER-5 on its phi trace; lit_susc.schedule), recorded per component."""
    steps_between_draws: int | Literal["auto"] = 1
    """SGLD steps from one draw to the next (a draw is taken after each block of this many);
    'auto': the value that maximises effective draws per second, from the pilot chain's
    autocorrelations and the cost of a draw (lit_susc.schedule), recorded per component."""
    pilot_steps: int = 200
    """Steps of the pilot chain that 'auto' measures (one extra chain per component, not in chi);
    it must span several autocorrelation times."""
    max_steps_between_draws: int = 32
    """The largest steps_between_draws that 'auto' may choose."""
    draw_cost: float | None = None
    """Cost of one draw (the reference and observation passes) in SGLD steps, for
    steps_between_draws 'auto'; null: measured by timing the pilot (then the choice can differ
    between machines, and ranks use rank 0's measurement)."""
    target_reliability: float | None = None
    """If set (0 < r < 1): chains are extended in rounds of ``draws`` draws until the component's
    estimated reliability reaches it or its chains hold ``max_draws`` draws (lit_susc.schedule)."""
    max_draws: int | None = None
    """Most draws per chain with target_reliability (a multiple of ``draws``; null: 8 x draws)."""
    seed: int = 0
    """Base seed; chain k of component c uses a generator seeded from (seed, c, k)."""
    sampler: Literal["sgld", "rmsprop_sgld"] = "sgld"
    """Plain SGLD or RMSProp-preconditioned SGLD (a=0.99, eps=0.1)."""
    noise_level: float = 1.0
    """Multiplier of the injected Gaussian noise (> 0; 1 samples the tempered posterior, 0 would be
    gradient descent, which samples nothing)."""
    weight_decay: float = 0.0
    """Coefficient of an extra L2 force weight_decay * w."""
    bounding_box: float | None = None
    """If set, entries are clamped to [w* - b, w* + b] after each step."""
    convention: Convention = "seed"
    """'seed': nbeta * Cov(phi, l - L_n) (the spec); 'baker': -Cov(phi, l - L_n) (devinterp)."""
    se_block: int | None = None
    """Draws per batch-means block of chi_se (contiguous draws of one chain; lit_susc.covariance);
    null: ceil(draws / 8), about 8 blocks per chain. Blocks must be long against the
    autocorrelation time of the draws, or chi_se comes out too small."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field outside its range (NaN and inf included), so a bad
        setting fails before a run writes anything (construction and ``dataclasses.replace`` call it;
        the engine calls it again before it claims a directory, as fields can be set afterwards)."""
        for name in ("lr", "nbeta"):
            check_number(f"sgld.{name}", getattr(self, name), low=0, strict=True)
        check_number("sgld.noise_level", self.noise_level, low=0, strict=True, why="0 is gradient descent, which samples nothing")
        for name in ("localization", "weight_decay"):  # 0 turns the force off
            check_number(f"sgld.{name}", getattr(self, name), low=0)
        check_number("sgld.draw_cost", self.draw_cost, low=0, optional=True)
        check_number("sgld.bounding_box", self.bounding_box, low=0, strict=True, optional=True)
        for name in ("chains", "pilot_steps", "max_steps_between_draws"):
            check_number(f"sgld.{name}", getattr(self, name), low=1, integer=True)
        check_number("sgld.draws", self.draws, low=2, integer=True, why="a covariance needs at least two draws")
        check_number("sgld.seed", self.seed, low=0, integer=True)
        check_number("sgld.se_block", self.se_block, low=1, integer=True, optional=True)
        check_number("sgld.max_draws", self.max_draws, low=1, integer=True, optional=True)
        if self.burn_in != "auto":
            check_number("sgld.burn_in", self.burn_in, low=0, integer=True, auto=True)
        if self.steps_between_draws != "auto":
            check_number("sgld.steps_between_draws", self.steps_between_draws, low=1, integer=True, auto=True)
        target = self.target_reliability
        if target is not None and not (_is_number(target) and 0 < target < 1):
            raise ValueError(f"sgld.target_reliability must be a number in (0, 1) or null, got {target!r}")
        if self.max_draws is not None and (self.max_draws < self.draws or self.max_draws % self.draws):
            raise ValueError(f"sgld.max_draws must be a multiple of draws ({self.draws}) or null, got "
                             f"{self.max_draws}: each round adds draws draws")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sgld.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"sgld.convention must be one of {CONVENTIONS}, got {self.convention!r}")

    @property
    def needs_pilot(self) -> bool:
        """Whether a pilot chain measures the burn-in or the thinning."""
        return self.burn_in == "auto" or self.steps_between_draws == "auto"

    @property
    def rounds(self) -> int:
        """Rounds of ``draws`` draws a chain may take (1 without target_reliability)."""
        return rounds(self.draws, self.target_reliability, self.max_draws)

    def make_optimizer(self, params) -> SGLD:
        return SAMPLERS[self.sampler](
            params, lr=self.lr, nbeta=self.nbeta, localization=self.localization,
            noise_level=self.noise_level, weight_decay=self.weight_decay,
            bounding_box=self.bounding_box,
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ComputeConfig:
    """How a run uses memory and precision: never what it estimates (beyond floating-point noise)."""

    memory_budget_gb: float = 2.0
    """Device memory per rank for the prefix caches (observation batches first, then the reference
    batch, then the SGLD minibatches); the run prints what it chose to cache."""
    prefix_cache: bool = True
    """Reuse the residual stream entering a component's first block instead of recomputing the
    blocks below it, and the output of that block's branch the component leaves alone (a head's
    block's MLP, an MLP's block's attention); GPT-NeoX with a loss that accepts cached prefixes,
    otherwise ignored."""
    batch_chains: int = 1
    """Chains of one component stepped together as one batched forward/backward (torch.func.vmap
    over stacked copies of the component's weights): fills a device that one small chain leaves
    idle. Results equal running the chains one at a time."""
    observation_dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the per-draw observation forward pass (bfloat16: autocast; the per-token losses
    are still computed from float32 logits and accumulated in float64). L_ref stays float32."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field outside its range (as ``SGLDConfig.validate``)."""
        check_number("compute.memory_budget_gb", self.memory_budget_gb, low=0)
        check_number("compute.batch_chains", self.batch_chains, low=1, integer=True)
        if not isinstance(self.prefix_cache, bool):
            raise ValueError(f"compute.prefix_cache must be true or false, got {self.prefix_cache!r}")
        if self.observation_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute.observation_dtype must be 'float32' or 'bfloat16', got {self.observation_dtype!r}")

    @property
    def budget_bytes(self) -> int:
        return int(self.memory_budget_gb * 2**30)
