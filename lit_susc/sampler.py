"""The sampler LightningModule: component-restricted SGLD chains and per-draw observations.

This module only wires the chain engine (lit_susc.chains: restriction, stepping, batched chains,
the prefix cache, chain state) and the schedule (lit_susc.schedule: units, plans, minibatch
orders) to the Lightning Trainer. Work is a list of units (component, chain, round). Each unit
restores w* (or, in a later round of targeted sampling, the chain's state where its previous
round stopped), restricts the Langevin step to its component, runs the steps of its component's
``ChainPlan`` (burn-in, then ``draws`` draws ``steps_between_draws`` steps apart) on minibatches
of the sampling data, and at every draw evaluates

    L_ref(w_s)   mean per-token loss on the fixed reference batch,
    l_t(w_s)     per-token losses of every observation token,

handing them to the callbacks (which keep only streaming sums). With a loss function that
accepts cached prefixes (``loss_fn.accepts_cached_prefix``, e.g. lit_susc.lm.per_token_loss) the
batches go through a ``PrefixCache`` (lit_susc.prefix) planned from ``compute.memory_budget_gb``,
and the blocks below a component's first block run once per batch. Every unit draws its noise and
its minibatch order from generators seeded by (seed, component index, chain), so results do not
depend on how units are split across ranks or interrupted and resumed. A finished unit leaves a
``done`` marker in the run directory; a restarted run skips those units.

``burn_in: auto`` / ``steps_between_draws: auto`` run a pilot chain per component first (in
``on_fit_start``; its plan is saved under ``state/pilot/``). With ``target_reliability`` every
Lightning epoch is one round: at its end the susceptibility callback hands the components'
reliabilities to ``finish_round``, which records the components that go on under
``state/rounds/`` (the resume state) and stops the Trainer when none does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .chains import ChainEngine, LossFn
from .components import Component
from .config import ComputeConfig, SGLDConfig
from .observables import Observable, ReferenceLoss
from .prefix import PrefixCache
from .rundir import read_json, write_json
from .schedule import ChainPlan, ChainSchedule, Unit, plan_from_pilot


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


class SusceptibilitySampler(L.LightningModule):
    """Runs the (component, chain) units; callbacks turn its draws into chi, LLCs and traces.

    Chains of one component run in groups of ``compute.batch_chains``, stepped by the chain
    engine (``self.engine``, built when fitting starts: lit_susc.chains).

    ``training_step`` returns ``{"chains": [...]}``, for callbacks one dict per chain of the step
    (none when the rank is idle): ``unit``, ``step`` (in the unit's round), ``chain_step`` (in the
    chain, over its rounds), ``minibatch_loss`` (the loss the step used),
    ``draw`` (None, or a dict with ``phi``, ``ref_loss``, ``obs_losses`` [T] float64 and ``norms``,
    the step's norms of lit_susc.langevin.STEP_NORMS) and ``unit_done``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, components: dict[str, Component],
                 data: SamplingData, sgld: SGLDConfig, run_dir: str | Path, compute: ComputeConfig | None = None,
                 observable: Observable | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model, self.loss_fn, self.components, self.data, self.sgld = model, loss_fn, components, data, sgld
        self.observable = observable or ReferenceLoss()
        self.observable_star: Tensor | None = None
        self.compute = compute or ComputeConfig()
        self.engine: ChainEngine | None = None
        self.run_dir = Path(run_dir)
        self.component_names = list(components)
        self.units: list[Unit] = []  # every unit of every round so far (the callbacks reduce them all)
        self.groups: list[list[Unit]] = []  # this round's groups of chains
        self.round, self.active = 0, list(range(len(self.component_names)))
        self.pilots: dict[int, dict] = {}
        self.reliability_by_round: list[dict[str, float]] = []
        self.ref_loss_star: Tensor | None = None
        self.observation_losses_star: Tensor | None = None
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}

    # -- bookkeeping on disk ----------------------------------------------------------------

    def unit_dir(self, unit: Unit) -> Path:
        return self.run_dir / "state" / "units" / unit.key

    def is_done(self, unit: Unit) -> bool:
        return (self.unit_dir(unit) / "done.json").exists()

    def owned_units(self) -> list[Unit]:
        """Units this rank reduces at the end (all units, split round-robin over ranks)."""
        rank, world = self.global_rank, self.trainer.world_size
        return [u for u in self.units if u.index % world == rank]

    def plan(self, component_index: int, round: int | None = None) -> ChainPlan:
        """The steps of a component's chains in a round (this round by default)."""
        round = self.round if round is None else round
        pilot, sgld = self.pilots.get(component_index, {}), self.sgld
        burn_in = pilot["burn_in"] if sgld.burn_in == "auto" else sgld.burn_in
        between = pilot["steps_between_draws"] if sgld.steps_between_draws == "auto" else sgld.steps_between_draws
        first = 0 if round == 0 else burn_in + round * sgld.draws * between
        return ChainPlan(burn_in if round == 0 else 0, between, sgld.draws, first)

    def schedule(self) -> dict[str, dict]:
        """Per component: the plan its chains followed and the draws each chain holds."""
        out = {}
        for c, name in enumerate(self.component_names):
            plan, rounds = self.plan(c, 0), sum(1 for u in self.units if u.component_index == c and u.chain == 0)
            pilot = self.pilots.get(c, {})
            out[name] = {"burn_in": plan.burn_in, "steps_between_draws": plan.steps_between_draws, "rounds": rounds,
                         "draws": rounds * plan.draws, **({"burn_in_settled": pilot["settled"]} if pilot else {}),
                         **({"draw_cost": pilot["draw_cost"]} if pilot else {})}
        return out

    # -- rounds ------------------------------------------------------------------------------------

    def _round_file(self, round: int) -> Path:
        return self.run_dir / "state" / "rounds" / f"round-{round:03d}.json"

    def _round_remedy(self, round: int) -> str:
        # A decision is a function of the units' sums on disk, so deciding it again changes nothing.
        return (f"delete {self._round_file(round)} and rerun the same command: the round is decided again from the "
                "units it sampled, none of which is sampled again")

    def _pilot_remedy(self, directory: Path, component_index: int) -> str:
        # A pilot run again can choose another plan (it times the draws when draw_cost is null; a GPU
        # rounds differently), which the units sampled under the old one, and the rounds decided from
        # them, would not follow.
        state = self.run_dir / "state"
        return (f"delete {directory / f'{component_index:05d}.json'}, {state / 'units'}/{component_index:05d}-chain* "
                f"and {state / 'rounds'} and rerun the same command: the pilot chain and that component's chains "
                "are run again")

    def _load_rounds(self) -> None:
        """Rebuild the rounds decided so far (their files are the resume state) and this round's units."""
        n, chains = len(self.component_names), self.sgld.chains
        self.round, self.active, self.units, self.reliability_by_round = 0, list(range(n)), [], []
        while True:
            self.units += [Unit(self.round * n * chains + c * chains + k, c, self.component_names[c], k, self.round)
                           for c in self.active for k in range(chains)]
            if not self._round_file(self.round).exists():
                break
            decided = read_json(self._round_file(self.round), self._round_remedy(self.round))
            self.reliability_by_round.append(decided["reliability"])
            self.active, self.round = decided["continue"], self.round + 1
        size = min(self.compute.batch_chains, chains)
        mine = [u for u in self.units if u.round == self.round]
        self.groups = [mine[i:i + min(size, chains - mine[i].chain)] for i in range(len(mine))
                       if mine[i].chain % size == 0]

    def finish_round(self, reliability: dict[str, float]) -> None:
        """End this round: components below the target with draws to spare go on; stop when none does."""
        sgld, trainer = self.sgld, self.trainer
        last = self.round + 1 >= sgld.rounds
        going = [c for c in self.active
                 if not last and not (reliability[self.component_names[c]] >= sgld.target_reliability)]
        if trainer.is_global_zero:
            write_json(self._round_file(self.round), {"continue": going, "reliability": reliability})
            below = [self.component_names[c] for c in going]
            print(f"lit-susc: round {self.round + 1}: {len(self.active) - len(going)} of {len(self.active)} "
                  f"components done (target reliability {sgld.target_reliability})"
                  + (f"; {len(below)} go on: {', '.join(below[:6])}{', ...' if len(below) > 6 else ''}" if below else ""))
        trainer.strategy.barrier("lit-susc round decided")
        self._load_rounds()
        if not self.active or self.round >= sgld.rounds:
            trainer.should_stop = True

    # -- Lightning hooks ----------------------------------------------------------------------

    def configure_optimizers(self):
        return self.sgld.make_optimizer(list(self.model.parameters()))

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size
        plans = {c: self.plan(c) for c in self.active}
        pending = [[(g, units, plans[units[0].component_index]) for g, units in enumerate(self.groups)
                    if g % world == r and not all(self.is_done(u) for u in units)] for r in range(world)]
        length = max(1, max(sum(plan.steps for _, _, plan in p) for p in pending))
        schedule = ChainSchedule(pending[self.global_rank], self.data.sampling, self.sgld.seed, length)
        return DataLoader(schedule, batch_size=None, shuffle=False, num_workers=0)

    def on_fit_start(self) -> None:
        # The sampled part of the model runs in eval mode (no dropout): the posterior is over the
        # deterministic loss. Observation data stays on the device for the whole run.
        reference = self._to_device(self.data.reference)
        observation = [self._to_device(b) for b in self.data.observation]
        shapes = {tuple(tuple(x.shape) for x in tree_leaves(b)) for b in self.data.sampling}
        if self.compute.batch_chains > 1 and self.sgld.chains > 1 and len(shapes) > 1:
            raise ValueError(f"compute.batch_chains={self.compute.batch_chains} stacks the chains' minibatches, but "
                             f"the sampling minibatches come in {len(shapes)} shapes; give minibatches of one shape "
                             "(e.g. a number of sampling contexts divisible by the batch size) or batch_chains: 1")
        prefix = None
        if self.compute.prefix_cache and getattr(self.loss_fn, "accepts_cached_prefix", False):
            count = lambda batches: [b.numel() for b in batches]
            prefix = PrefixCache(self.model, self.compute.budget_bytes, {
                "observation": count(observation), "reference": count([reference]),
                "sampling": count(self.data.sampling)})
            plan = prefix.plan()
            if self.global_rank == 0:
                print(f"lit-susc: {plan}")
        self.engine = ChainEngine(self.model, self.loss_fn, self.optimizers(), self.manual_backward, self.device,
                                  reference, observation, prefix, self.compute.observation_dtype)
        with torch.no_grad():
            self.model.eval()
            self.ref_loss_star = self.engine.reference_losses()[0]
            obs = self.engine.observation_losses()[0]
        self.observation_losses_star = obs
        with torch.no_grad():
            self.observable_star = self.observable.evaluate(self.engine, self.ref_loss_star[None])[0]
        if not torch.isfinite(self.ref_loss_star):
            raise FloatingPointError(f"the reference loss at w* is {self.ref_loss_star.item()}: the trained point "
                                     "must have a finite loss (check the model weights and the data)")
        bad = (~torch.isfinite(obs)).nonzero()
        if len(bad):
            raise FloatingPointError(f"{len(bad)} observation losses at w* are not finite (first at flat index "
                                     f"{bad[0].item()}): check the model weights and the observation data")
        if self.sgld.needs_pilot:
            self._run_pilots()
        self._load_rounds()

    def on_train_epoch_start(self) -> None:
        self.model.eval()

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        if batch["group"] < 0:
            return {"chains": []}
        units, step = self.groups[batch["group"]], batch["step"]
        plan = self.plan(units[0].component_index)
        engine = self.engine
        if step == 0:
            engine.begin(self.components[units[0].component], units, self.sgld.seed, self.unit_dir)
        is_draw = plan.is_draw(step)
        norms = [{} if is_draw else None for _ in units]  # the step's norms are reported at draws
        views = [engine.view("sampling", i, data) for i, data in zip(batch["index"], batch["data"])]
        losses = engine.step(views, norms)
        draws = [None] * len(units)
        if is_draw:
            with torch.no_grad():
                ref, obs = engine.reference_losses(), engine.observation_losses()
                observed = self.observable.evaluate(engine, ref)
            draws = [{"ref_loss": ref[k], "phi": ref[k] - self.ref_loss_star, "obs_losses": obs[k], "norms": norms[k],
                      "observed": observed[k] - self.observable_star} for k in range(len(units))]
        done = step == plan.steps - 1
        return {"chains": [{"unit": unit, "step": step, "chain_step": plan.first_step + step,
                            "minibatch_loss": losses[k].detach(), "draw": draws[k], "unit_done": done}
                           for k, unit in enumerate(units)]}

    def on_train_batch_end(self, outputs: dict, batch: Any, batch_idx: int) -> None:
        # Callbacks have saved their part of the unit by now (their hooks run first).
        for k, chain in enumerate(outputs["chains"]):
            if chain["unit_done"]:
                unit = chain["unit"]
                if unit.round + 1 < self.sgld.rounds:  # a later round may continue this chain
                    self.engine.save_chain(self.unit_dir(unit), k)
                path = self.unit_dir(unit)
                path.mkdir(parents=True, exist_ok=True)
                write_json(path / "done.json", {"component": unit.component, "chain": unit.chain, "round": unit.round})

    def on_train_end(self) -> None:
        self.hand_back()

    def hand_back(self) -> None:
        """The model as it came: at w*, with its own requires_grad flags (also after a failed fit)."""
        if self._trainer is not None and self.trainer.optimizers:
            self.trainer.optimizers[0].restore_anchor()
        if self.engine is not None:
            self.engine.end()
        for name, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad[name])

    @property
    def observation_shape(self) -> tuple[int, ...] | None:
        """The shape of one draw's observation losses (known once fitting has started)."""
        return None if self.engine is None else self.engine.observation_shape

    def _run_pilots(self) -> None:
        """Measure the plan of every component this rank owns (lit_susc.schedule); all ranks read all."""
        n, world, sgld = len(self.component_names), self.trainer.world_size, self.sgld
        directory = self.run_dir / "state" / "pilot"
        mine = [c for c in range(self.global_rank, n, world) if not (directory / f"{c:05d}.json").exists()]
        show = self.global_rank == 0 and self.trainer.progress_bar_callback is not None
        for c in tqdm(mine, desc="pilot chains", unit="component", disable=not show):
            name = self.component_names[c]
            measured = self.engine.pilot(self.components[name], c, name, sgld.seed, sgld.pilot_steps,
                                         self.data.sampling, self.ref_loss_star)
            write_json(directory / f"{c:05d}.json",
                       plan_from_pilot(measured["phi"], measured["projected"], measured["draw_cost_measured"],
                                       sgld.burn_in, sgld.steps_between_draws, sgld.draw_cost,
                                       sgld.max_steps_between_draws))
        self.trainer.strategy.barrier("lit-susc pilots")
        self.pilots = {c: read_json(directory / f"{c:05d}.json", self._pilot_remedy(directory, c)) for c in range(n)}
        self.engine.end()
        if self.global_rank == 0:
            for c, pilot in self.pilots.items():
                print(f"lit-susc: {self.component_names[c]}: {pilot['reason']}")

    def _to_device(self, batch: Any) -> Any:
        return self.trainer.strategy.batch_to_device(batch, self.device) if self._trainer is not None else batch

