"""The sampler LightningModule: component-restricted SGLD chains and per-draw observations.

Work is a list of units (component, chain). Each unit restores w*, restricts the Langevin step to
its component, runs ``burn_in + draws * steps_between_draws`` steps on minibatches of the
sampling data, and after every ``steps_between_draws`` steps past burn-in evaluates

    L_ref(w_s)   mean per-token loss on the fixed reference batch,
    l_t(w_s)     per-token losses of every observation token,

handing them to the callbacks (which keep only streaming sums). With a loss function that
accepts cached prefixes (``loss_fn.accepts_cached_prefix``, e.g. lit_susc.lm.per_token_loss) the
batches go through a ``PrefixCache`` (lit_susc.prefix) planned from ``compute.memory_budget_gb``,
and the blocks below a component's first block run once per batch. Every unit draws its noise and
its minibatch order from generators seeded by (seed, component index, chain), so results do not
depend on how units are split across ranks or interrupted and resumed. A finished unit leaves a
``done`` marker in the run directory; a restarted run skips those units.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .components import Component
from .config import ComputeConfig, SGLDConfig
from .prefix import PrefixCache

LossFn = Callable[[nn.Module, Any], Tensor]
"""loss_fn(model, batch) -> per-sample losses [B] or per-token losses [B, T]."""


@dataclass
class SamplingData:
    """The three kinds of data a susceptibility run reads."""

    sampling: list[Any]
    """Minibatches for the SGLD gradients (cycled in a per-chain random order)."""
    observation: list[Any]
    """Batches whose per-sample/per-token losses are observed at every draw (chi's columns)."""
    reference: Any
    """The fixed batch defining L_ref, phi_C = L_ref(w) - L_ref(w*), and L_n."""

    def __post_init__(self) -> None:
        if not self.sampling:
            raise ValueError("sampling data is empty: give at least one minibatch for the SGLD gradients")
        if not self.observation:
            raise ValueError("observation data is empty: give at least one batch whose losses are observed")


@dataclass(frozen=True)
class Unit:
    """One chain of one component."""

    index: int
    component_index: int
    component: str
    chain: int

    @property
    def key(self) -> str:
        return f"{self.component_index:05d}-chain{self.chain:03d}"


def unit_seed(seed: int, component_index: int, chain: int, stream: int) -> int:
    """A 63-bit seed for one random stream (0: noise, 1: minibatch order) of one unit."""
    return int(np.random.SeedSequence([seed, component_index, chain, stream]).generate_state(2, np.uint64)[0] >> 1)


class ChainSchedule(Dataset):
    """Steps of this rank's pending units, in order: item i -> {unit, step, data}.

    Ranks get the same number of items (idle items, ``unit = -1``, pad the shorter ones) because
    Lightning's loop talks to all ranks at every step.
    """

    def __init__(self, units: Sequence[Unit], steps_per_chain: int, sampling: list[Any], seed: int,
                 length: int) -> None:
        self.units, self.steps, self.sampling, self.seed, self.length = list(units), steps_per_chain, sampling, seed, length
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _order(self, unit: Unit) -> np.ndarray:
        if unit.index not in self._orders:
            rng = np.random.default_rng(unit_seed(self.seed, unit.component_index, unit.chain, 1))
            n = len(self.sampling)
            reps = math.ceil(self.steps / n)
            self._orders = {unit.index: np.concatenate([rng.permutation(n) for _ in range(reps)])}
        return self._orders[unit.index]

    def __getitem__(self, i: int) -> dict:
        u, step = divmod(i, self.steps)
        if u >= len(self.units):
            return {"unit": -1, "step": step, "index": 0, "data": self.sampling[0]}
        unit = self.units[u]
        index = int(self._order(unit)[step])
        return {"unit": unit.index, "step": step, "index": index, "data": self.sampling[index]}


class SusceptibilitySampler(L.LightningModule):
    """Runs the (component, chain) units; callbacks turn its draws into chi, LLCs and traces.

    ``training_step`` returns, for callbacks: ``unit`` (Unit or None when idle), ``step``,
    ``minibatch_loss`` (the loss the step used), ``draw`` (None, or a dict with ``phi``,
    ``ref_loss`` and ``obs_losses`` [T] float64) and ``unit_done``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, components: dict[str, Component],
                 data: SamplingData, sgld: SGLDConfig, run_dir: str | Path, compute: ComputeConfig | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model, self.loss_fn, self.components, self.data, self.sgld = model, loss_fn, components, data, sgld
        self.compute = compute or ComputeConfig()
        self.prefix: PrefixCache | None = None
        self.run_dir = Path(run_dir)
        self.component_names = list(components)
        self.units = [Unit(i * sgld.chains + k, i, name, k)
                      for i, name in enumerate(self.component_names) for k in range(sgld.chains)]
        self.current: Unit | None = None
        self.ref_loss_star: Tensor | None = None
        self.observation_losses_star: Tensor | None = None
        self.observation_shape: tuple[int, ...] | None = None
        self._generator: torch.Generator | None = None
        self._params = dict(model.named_parameters())
        self._requires_grad = {n: p.requires_grad for n, p in self._params.items()}

    # -- bookkeeping on disk ----------------------------------------------------------------

    def unit_dir(self, unit: Unit) -> Path:
        return self.run_dir / "state" / "units" / unit.key

    def is_done(self, unit: Unit) -> bool:
        return (self.unit_dir(unit) / "done.json").exists()

    def owned_units(self) -> list[Unit]:
        """Units this rank reduces at the end (all units, split round-robin over ranks)."""
        rank, world = self.global_rank, self.trainer.world_size
        return [u for u in self.units if u.index % world == rank]

    # -- Lightning hooks ----------------------------------------------------------------------

    def configure_optimizers(self):
        return self.sgld.make_optimizer(list(self.model.parameters()))

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size
        pending = [[u for u in self.units if u.index % world == r and not self.is_done(u)] for r in range(world)]
        mine = pending[self.global_rank]
        length = max(1, max(len(p) for p in pending) * self.sgld.steps_per_chain)
        schedule = ChainSchedule(mine, self.sgld.steps_per_chain, self.data.sampling, self.sgld.seed, length)
        return DataLoader(schedule, batch_size=None, shuffle=False, num_workers=0)

    def on_fit_start(self) -> None:
        # The sampled part of the model runs in eval mode (no dropout): the posterior is over the
        # deterministic loss. Observation data stays on the device for the whole run.
        self._reference = self._to_device(self.data.reference)
        self._observation = [self._to_device(b) for b in self.data.observation]
        if self.compute.prefix_cache and getattr(self.loss_fn, "accepts_cached_prefix", False):
            count = lambda batches: [b.numel() for b in batches]  # noqa: E731
            self.prefix = PrefixCache(self.model, self.compute.budget_bytes, {
                "observation": count(self._observation), "reference": count([self._reference]),
                "sampling": count(self.data.sampling)})
            plan = self.prefix.plan()
            if self.global_rank == 0:
                print(f"lit-susc: {plan}")
        with torch.no_grad():
            self.model.eval()
            self.ref_loss_star = self.reference_loss()
            obs = self.observation_losses()
        self.observation_losses_star = obs.double()
        if not torch.isfinite(self.ref_loss_star):
            raise FloatingPointError(f"the reference loss at w* is {self.ref_loss_star.item()}: the trained point "
                                     "must have a finite loss (check the model weights and the data)")
        bad = (~torch.isfinite(obs)).nonzero()
        if len(bad):
            raise FloatingPointError(f"{len(bad)} observation losses at w* are not finite (first at flat index "
                                     f"{bad[0].item()}): check the model weights and the observation data")

    def on_train_epoch_start(self) -> None:
        self.model.eval()

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        if batch["unit"] < 0:
            return {"unit": None, "step": batch["step"], "minibatch_loss": None, "draw": None, "unit_done": False}
        unit, step = self.units[batch["unit"]], batch["step"]
        if step == 0:
            self._begin_unit(unit)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model, self._view("sampling", batch["index"], batch["data"])).mean()
        self.manual_backward(loss)
        opt.step(generator=self._generator)
        draw = None
        if self.sgld.is_draw(step):
            with torch.no_grad():
                ref = self.reference_loss()
                draw = {"ref_loss": ref, "phi": ref - self.ref_loss_star, "obs_losses": self.observation_losses()}
        done = step == self.sgld.steps_per_chain - 1
        return {"unit": unit, "step": step, "minibatch_loss": loss.detach(), "draw": draw, "unit_done": done}

    def on_train_batch_end(self, outputs: dict, batch: Any, batch_idx: int) -> None:
        # Callbacks have saved their part of the unit by now (their hooks run first).
        if outputs["unit_done"]:
            unit = outputs["unit"]
            path = self.unit_dir(unit)
            path.mkdir(parents=True, exist_ok=True)
            tmp = path / "done.json.tmp"
            tmp.write_text(json.dumps({"component": unit.component, "chain": unit.chain}))
            tmp.replace(path / "done.json")

    def on_train_end(self) -> None:
        # Hand the model back as it came: at w*, with its own requires_grad flags.
        self.optimizers().optimizer.restore_anchor()
        for name, p in self._params.items():
            p.requires_grad_(self._requires_grad[name])

    # -- the pieces ---------------------------------------------------------------------------

    def _begin_unit(self, unit: Unit) -> None:
        self.current = unit
        opt = self.optimizers().optimizer
        opt.restore_anchor()
        comp = self.components[unit.component]
        for name, p in self._params.items():
            p.requires_grad_(name in comp)
        opt.restrict({self._params[n]: m for n, m in comp.items()})
        if self.prefix is not None:
            self.prefix.begin(comp)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(unit_seed(self.sgld.seed, unit.component_index, unit.chain, 0))

    def _view(self, kind: str, index: int, batch: Any) -> Any:
        """The batch as the loss reads it: its cached prefix when there is one."""
        return batch if self.prefix is None else self.prefix.view(kind, index, batch)

    def reference_loss(self) -> Tensor:
        """L_ref(w): mean loss over the reference batch, float64."""
        return self.loss_fn(self.model, self._view("reference", 0, self._reference)).double().mean()

    def observation_losses(self) -> Tensor:
        """Per-sample / per-token losses of all observation batches, flattened, float64.

        With ``compute.observation_dtype: bfloat16`` the forward pass runs under autocast."""
        low = self.compute.observation_dtype == "bfloat16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=low):
            losses = [self.loss_fn(self.model, self._view("observation", i, b)) for i, b in enumerate(self._observation)]
        if self.observation_shape is None:
            self.observation_shape = (sum(x.shape[0] for x in losses), *losses[0].shape[1:])
        return torch.cat([x.reshape(-1) for x in losses]).double()

    def _to_device(self, batch: Any) -> Any:
        return self.trainer.strategy.batch_to_device(batch, self.device) if self._trainer is not None else batch
