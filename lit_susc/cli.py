"""The command line of the sampler's stages: ``sample`` and ``bif``, each a LightningCLI."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI

from .engine import REQUIRED_CALLBACKS, bif_callbacks, run_bif, run_sampling, with_required_callbacks
from .influence import BIFResult
from .lm import LMInfluence, LMSusceptibilities, lm_influence, lm_susceptibilities
from .result import SusceptibilityResult
from .schedule import rounds
from .stage_cli import check_config_files, explain
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


def sample(trainer: L.Trainer, model: LMSusceptibilities, config_text: str | None = None) -> SusceptibilityResult:
    """Sample chi for every selected component and write the run directory."""
    trainer.callbacks[:] = with_required_callbacks(trainer.callbacks, [cls() for cls in REQUIRED_CALLBACKS])
    result = run_sampling(model, trainer, tokens=model.tokens, identity_extra=model.describe(),
                          config=model.describe(), config_text=config_text, shard_tokens=model.shard_tokens)
    if trainer.is_global_zero:
        run_dir = Path(model.run_dir).resolve()
        print(f"\nlit-susc: chi for {len(result.components)} components x {result.chi[0].numel()} tokens "
              f"written to {run_dir}")
        print(HOW_TO_READ.format(dir=run_dir, convention=result.convention))
    return result


def bif(trainer: L.Trainer, model: LMInfluence, config_text: str | None = None) -> BIFResult:
    """Bayesian influence functions of the training samples on the queries; writes the run directory."""
    trainer.callbacks[:] = with_required_callbacks(trainer.callbacks, bif_callbacks(model.n_train))
    result = run_bif(model, trainer, granularity=model.granularity, train=model.train_table,
                     query=model.query_table, identity_extra=model.describe(), config=model.describe(),
                     config_text=config_text, top_k=model.top_k)
    if trainer.is_global_zero:
        run_dir = Path(model.run_dir).resolve()
        _, n_train, n_query = result.bif.shape
        print(f"\nlit-susc: BIF of {n_train} training {result.granularity}s on {n_query} queries "
              f"({len(result.components)} component(s)) written to {run_dir}\n"
              f"  most influential per query: {run_dir / 'top_influences.md'}\n"
              f"  in Python: lit_susc.BIFResult.load(\"{run_dir}\").bif  # [components, train, query]")
    return result


COMMANDS = {"sample": (lm_susceptibilities, sample), "bif": (lm_influence, bif)}
"""Each LightningCLI command: the function that builds its module from the ``model:`` section, and what it runs."""


class SamplerCLI(LightningCLI):
    """``python run.py sample --config configs/quickstart.yaml`` (and ``bif``; ``--print_config`` works).

    The parser holds ``trainer:`` and ``model:`` (the arguments of the command's module builder);
    the CLI builds both and the caller runs the command (``main``).
    """

    def __init__(self, command: str, args=None) -> None:
        build_module, run_command = COMMANDS[command]
        super().__init__(
            model_class=build_module, save_config_callback=None, run=False,
            parser_kwargs={"prog": f"lit-susc {command}", "description": run_command.__doc__, "exit_on_error": False},
            trainer_defaults={"logger": False, "enable_checkpointing": False, "max_epochs": 1,
                              "use_distributed_sampler": False, "num_sanity_val_steps": 0,
                              "enable_model_summary": False},
            args=args, auto_configure_optimizers=False,
        )

    def before_instantiate_classes(self) -> None:
        trainer = self.config.trainer
        # Plain DDP (asked for, or Lightning's choice for "auto" on several devices) would average
        # gradients across ranks and couple independent chains.
        if isinstance(chains_strategy(trainer.strategy, trainer.devices, trainer.accelerator), IndependentChainsStrategy):
            trainer.strategy = IndependentChainsStrategy.strategy_name
        sgld = self.config.model.sgld
        # One epoch per round of targeted sampling (lit_susc.schedule); one without a target.
        trainer.max_epochs = rounds(sgld.draws, sgld.target_reliability, sgld.max_draws)
        trainer.reload_dataloaders_every_n_epochs, trainer.use_distributed_sampler = 1, False


def main(argv: list[str] | None = None):
    """``argv``: the command (``sample`` or ``bif``) and its options; returns the command's result."""
    argv = sys.argv[1:] if argv is None else list(argv)
    check_config_files(argv)
    with warnings.catch_warnings():  # LightningCLI warns when args and sys.argv both exist, as under run.py
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            cli = SamplerCLI(argv[0], args=argv[1:])
        except (ArgumentError, ValueError) as err:  # a bad option or value; a setting's own check, as jsonargparse wraps it
            raise ValueError(explain(err)) from err
    run_command = COMMANDS[argv[0]][1]
    return run_command(cli.trainer, cli.model, config_text=cli.parser.dump(cli.config, skip_none=False))
