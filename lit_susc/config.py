"""Typed configuration of a susceptibility run (the same fields in Python, YAML and outputs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from .langevin import SAMPLERS, SGLD

Convention = Literal["seed", "baker"]


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
    """gamma of the prior gamma/2 * ||w - w*||^2 that keeps chains near the trained point w*."""
    chains: int = 4
    """Independent chains per component, each started at w*."""
    draws: int = 100
    """Draws kept per chain (observables are evaluated at each)."""
    burn_in: int = 0
    """SGLD steps per chain before the first kept draw's steps."""
    steps_between_draws: int = 1
    """SGLD steps from one draw to the next (a draw is taken after each block of this many)."""
    seed: int = 0
    """Base seed; chain k of component c uses a generator seeded from (seed, c, k)."""
    sampler: Literal["sgld", "rmsprop_sgld"] = "sgld"
    """Plain SGLD or RMSProp-preconditioned SGLD (a=0.99, eps=0.1)."""
    noise_level: float = 1.0
    """Multiplier of the injected Gaussian noise (1 samples the tempered posterior)."""
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
        for name in ("chains", "draws", "steps_between_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"SGLDConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.draws < 2:
            raise ValueError("SGLDConfig.draws must be >= 2: a covariance needs at least two draws")
        if self.se_block is not None and self.se_block < 1:
            raise ValueError(f"SGLDConfig.se_block must be >= 1 or null, got {self.se_block}")
        if self.burn_in < 0:
            raise ValueError(f"SGLDConfig.burn_in must be >= 0, got {self.burn_in}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"SGLDConfig.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.convention not in ("seed", "baker"):
            raise ValueError(f"SGLDConfig.convention must be 'seed' or 'baker', got {self.convention!r}")

    @property
    def steps_per_chain(self) -> int:
        return self.burn_in + self.draws * self.steps_between_draws

    def is_draw(self, step: int) -> bool:
        """Whether the parameters after SGLD step ``step`` (0-based) are a kept draw."""
        after_burn_in = step + 1 - self.burn_in
        return after_burn_in > 0 and after_burn_in % self.steps_between_draws == 0

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
        if self.batch_chains < 1:
            raise ValueError(f"compute.batch_chains must be >= 1, got {self.batch_chains}")
        if self.memory_budget_gb < 0:
            raise ValueError(f"compute.memory_budget_gb must be >= 0, got {self.memory_budget_gb}")
        if self.observation_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"compute.observation_dtype must be 'float32' or 'bfloat16', got {self.observation_dtype!r}")

    @property
    def budget_bytes(self) -> int:
        return int(self.memory_budget_gb * 2**30)
