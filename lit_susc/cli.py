"""The command line of the sampler's stages: LightningCLI subcommands ``sample`` and ``bif``."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningCLI

from .engine import REQUIRED_CALLBACKS, bif_callbacks, run_bif, run_sampling, with_required_callbacks
from .influence import BIFResult
from .lm import LMInfluence, LMSusceptibilities
from .result import SusceptibilityResult
from .schedule import rounds
from .strategy import IndependentChainsStrategy, chains_strategy

HOW_TO_READ = """\
Read them in Python:
    from lit_susc import SusceptibilityResult
    res = SusceptibilityResult.load("{dir}")
    res.chi          # float64 [components, contexts, tokens-1], {convention} convention
    res.components   # row names, e.g. 'layers.0.heads.1'
    res.tokens       # pyarrow table: doc_id, document, position, token_id, token, ...
    res.llc          # per-component learning coefficients (mean, std, per_chain)
or lazily, shard by shard: lit_susc.read_chi("{dir}", start, stop)."""


class SusceptibilityTrainer(L.Trainer):
    """A Lightning Trainer with lit-susc's subcommands as methods."""

    def sample(self, model: LMSusceptibilities, config_text: str | None = None) -> SusceptibilityResult:
        """Sample chi for every selected component and write the run directory."""
        self.callbacks[:] = with_required_callbacks(self.callbacks, [cls() for cls in REQUIRED_CALLBACKS])
        result = run_sampling(model, self, tokens=model.tokens, identity_extra=model.describe(),
                              config=model.describe(), config_text=config_text, shard_tokens=model.shard_tokens)
        if self.is_global_zero:
            run_dir = Path(model.run_dir).resolve()
            print(f"\nlit-susc: chi for {len(result.components)} components x {result.chi[0].numel()} tokens "
                  f"written to {run_dir}")
            print(HOW_TO_READ.format(dir=run_dir, convention=result.convention))
        return result


    def bif(self, model: LMInfluence, config_text: str | None = None) -> BIFResult:
        """Bayesian influence functions of the training samples on the queries; writes the run directory."""
        self.callbacks[:] = with_required_callbacks(self.callbacks, bif_callbacks(model.n_train))
        result = run_bif(model, self, granularity=model.data_config.granularity, train=model.train_table,
                         query=model.query_table, identity_extra=model.describe(), config=model.describe(),
                         config_text=config_text, top_k=model.top_k)
        if self.is_global_zero:
            run_dir = Path(model.run_dir).resolve()
            _, n_train, n_query = result.bif.shape
            print(f"\nlit-susc: BIF of {n_train} training {result.granularity}s on {n_query} queries "
                  f"({len(result.components)} component(s)) written to {run_dir}\n"
                  f"  most influential per query: {run_dir / 'top_influences.md'}\n"
                  f"  in Python: lit_susc.BIFResult.load(\"{run_dir}\").bif  # [components, train, query]")
        return result


class LitSuscCLI(LightningCLI):
    """``python run.py sample --config configs/quickstart.yaml`` (``--print_config`` works)."""

    MODEL = LMSusceptibilities
    SUBCOMMAND = "sample"

    def __init__(self, args=None) -> None:
        super().__init__(
            model_class=self.MODEL, trainer_class=SusceptibilityTrainer, save_config_callback=None,
            trainer_defaults={"logger": False, "enable_checkpointing": False, "max_epochs": 1,
                              "use_distributed_sampler": False, "num_sanity_val_steps": 0,
                              "enable_model_summary": False},
            args=args, auto_configure_optimizers=False,
        )

    @classmethod
    def subcommands(cls) -> dict[str, set[str]]:
        return {cls.SUBCOMMAND: {"model", "config_text"}}

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer
        # Plain DDP (asked for, or Lightning's choice for "auto" on several devices) would average
        # gradients across ranks and couple independent chains.
        if isinstance(chains_strategy(trainer.strategy, trainer.devices, trainer.accelerator), IndependentChainsStrategy):
            trainer.strategy = IndependentChainsStrategy.strategy_name
        sgld = self.config[self.subcommand].model.sgld
        # One epoch per round of targeted sampling (lit_susc.schedule); one without a target.
        trainer.max_epochs = rounds(sgld.draws, sgld.target_reliability, sgld.max_draws)
        trainer.reload_dataloaders_every_n_epochs, trainer.use_distributed_sampler = 1, False

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        kwargs["config_text"] = self._subcommand_parsers[subcommand].dump(self.config[subcommand], skip_none=False)
        return kwargs


class InfluenceCLI(LitSuscCLI):
    """``python run.py bif --config configs/bif_quickstart.yaml`` (``--print_config`` works)."""

    MODEL = LMInfluence
    SUBCOMMAND = "bif"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    with warnings.catch_warnings():  # LightningCLI warns when args and sys.argv both exist, as under run.py
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        (InfluenceCLI if argv[:1] == ["bif"] else LitSuscCLI)(args=argv)
