"""``python run.py aux fit|predict --config ...``: LightningCLI subcommands for the aux model.

Both subcommands take a ``trainer:`` section (any Lightning Trainer argument) and their own
settings at the top level of the YAML (``--print_config`` shows them all).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .bundle import AuxBundle
from .fit import FeatureConfig, fit_aux
from .model import AuxModelConfig
from .pca import TargetConfig
from .predict import StreamConfig, upsample
from .ridge import RidgeConfig
from .split import SplitConfig


class AuxTrainer(L.Trainer):
    """A Lightning Trainer whose ``fit`` and ``predict`` are the aux stages; each runs Lightning's own loop."""

    def fit(self, sample_dir: str, output_dir: str = "runs/aux", features: FeatureConfig | None = None,
            targets: TargetConfig | None = None, split: SplitConfig | None = None,
            model: AuxModelConfig | None = None, batch_size: int = 256, num_workers: int = 0,
            ridge: RidgeConfig | None = None, trust_remote_code: bool = False,
            config_text: str | None = None) -> AuxBundle:
        """Train an aux model on a finished susceptibility run.

        Args:
            sample_dir: directory of a finished ``sample`` run (chi, tokens.parquet, run.json).
            output_dir: where the aux model, its PCA, normalisation, aux.json and pearson.png go.
            features: residual-stream layers and their collection.
            targets: PCs of chi kept as targets, standardisation, whitening.
            split: validation documents.
            model: aux model architecture and optimiser.
            batch_size: tokens per training batch.
            num_workers: DataLoader worker processes.
            ridge: the ridge baseline.
            trust_remote_code: allow model code from the hub for the base model.
            config_text: the resolved config, saved as config.yaml (filled in by the CLI).
        """
        return fit_aux(self, sample_dir, output_dir, features=features, targets=targets, split=split,
                       model=model, batch_size=batch_size, num_workers=num_workers, ridge=ridge,
                       trust_remote_code=trust_remote_code, config_text=config_text)

    def predict(self, aux_dir: str, output_dir: str = "runs/aux-predict", data: StreamConfig | None = None,
                base_model: str | None = None, revision: str | None = None, trust_remote_code: bool = False,
                config_text: str | None = None) -> Path:
        """Predict susceptibilities of any number of tokens with a fitted aux model.

        Args:
            aux_dir: output_dir of ``aux fit``.
            output_dir: where the predicted shards go (resumable).
            data: text source, context length, batching and sharding.
            base_model: load the base model from here (e.g. a local copy); default: the one in aux.json.
            revision: hub revision of ``base_model``.
            trust_remote_code: allow model code from the hub for the base model.
            config_text: the resolved config, saved as config.yaml (filled in by the CLI).
        """
        return upsample(self, aux_dir, output_dir, data=data, base_model=base_model, revision=revision,
                        trust_remote_code=trust_remote_code, config_text=config_text)


class AuxCLI(LightningCLI):
    """``aux fit --config ...`` and ``aux predict --config ...`` (``--print_config`` works)."""

    def __init__(self, args=None) -> None:
        super().__init__(
            trainer_class=AuxTrainer, save_config_callback=None, seed_everything_default=0,
            trainer_defaults={"enable_checkpointing": False, "enable_model_summary": False, "max_epochs": 30,
                              "num_sanity_val_steps": 0},
            args=args, auto_configure_optimizers=False, load_from_checkpoint_support=False,
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {"fit": {"config_text"}, "predict": {"config_text"}}

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Only the Trainer: the stages build their own modules from their settings.
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        parser.set_defaults({f"trainer.{k}": v for k, v in self.trainer_defaults.items()})

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.trainer.default_root_dir is None:  # logs (metrics.csv per epoch) beside the outputs
            config.trainer.default_root_dir = config.output_dir
        if self.subcommand == "predict":
            config.trainer.use_distributed_sampler = False  # the stream assigns shards to ranks itself
            if config.trainer.logger is None:  # nothing to log per step; the outputs say it all
                config.trainer.logger = False

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = {k: v for k, v in self.config_init[subcommand].items()
                  if k in self._subcommand_method_arguments[subcommand]}
        kwargs["config_text"] = self._subcommand_parsers[subcommand].dump(self.config[subcommand], skip_none=False)
        return kwargs


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``run.py aux``: ``argv`` is what follows ``aux`` on the command line."""
    with warnings.catch_warnings():  # LightningCLI warns when args and sys.argv both exist, as here
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        AuxCLI(args=sys.argv[2:] if argv is None else argv)
