"""``python run.py aux fit|predict --config ...``: the aux model's two stages, a LightningCLI each.

Each takes a ``trainer:`` section (any Lightning Trainer argument) and, at the top level of the
YAML, the arguments of its function: ``fit_aux`` (lit_susc.aux.fit) for ``fit``, ``upsample``
(lit_susc.aux.predict) for ``predict``. ``--print_config`` shows them all.
"""

from __future__ import annotations

import inspect
import sys
import warnings

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..stage_cli import check_config_files, explain
from .fit import fit_aux
from .predict import upsample

STAGES = {"fit": fit_aux, "predict": upsample}
"""Each aux command and the function that is the whole stage (it runs Lightning's own loop)."""
FILLED_IN = {"trainer", "config_text"}
"""Arguments of the stage functions that the CLI supplies rather than the YAML."""


class AuxCLI(LightningCLI):
    """The parser of one aux stage: ``trainer:`` and the stage function's arguments; builds the Trainer."""

    def __init__(self, command: str, args=None) -> None:
        self.stage = STAGES[command]
        super().__init__(
            save_config_callback=None, seed_everything_default=0, run=False,
            parser_kwargs={"prog": f"lit-susc aux {command}", "description": self.stage.__doc__,
                           "exit_on_error": False},
            trainer_defaults={"enable_checkpointing": False, "enable_model_summary": False, "max_epochs": 30,
                              "num_sanity_val_steps": 0},
            args=args, auto_configure_optimizers=False, load_from_checkpoint_support=False,
        )

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The Trainer, then the stage's own settings; the stages build their modules themselves.
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items()})
        parser.add_function_arguments(self.stage, skip=FILLED_IN, as_group=False)

    def before_instantiate_classes(self) -> None:
        config = self.config
        if config.trainer.default_root_dir is None:  # logs (metrics.csv per epoch) beside the outputs
            config.trainer.default_root_dir = config.output_dir
        if self.stage is upsample:
            config.trainer.use_distributed_sampler = False  # the stream assigns shards to ranks itself
            if config.trainer.logger is None:  # nothing to log per step; the outputs say it all
                config.trainer.logger = False


def main(argv: list[str] | None = None):
    """Entry point of ``run.py aux``: ``argv`` is what follows ``aux`` (the stage, then its options)."""
    argv = sys.argv[2:] if argv is None else list(argv)
    if not argv or argv[0] not in STAGES:
        if argv[:1] in (["-h"], ["--help"]):
            print("usage: lit-susc aux {fit,predict} --config FILE   (lit-susc aux fit --help for its options)")
            return None
        raise ValueError(f"aux needs its stage first: 'aux fit' or 'aux predict', got {' '.join(argv[:1]) or 'nothing'}")
    check_config_files(argv)
    with warnings.catch_warnings():  # LightningCLI warns when args and sys.argv both exist, as here
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            cli = AuxCLI(argv[0], args=argv[1:])
        except (ArgumentError, ValueError) as err:  # a bad option or value; a setting's own check, as jsonargparse wraps it
            raise ValueError(explain(err)) from err
    settings = {name: cli.config_init[name] for name in inspect.signature(cli.stage).parameters if name not in FILLED_IN}
    return cli.stage(cli.trainer, **settings, config_text=cli.parser.dump(cli.config, skip_none=False))
