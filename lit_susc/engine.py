"""Running a sampler: the run's identity, the Trainer, resume, the outputs (their directory: lit_susc.rundir)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow as pa
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from callbacks.diagnostics import ChainDivergedError, DiagnosticsCallback
from callbacks.influence import BIFCallback
from callbacks.llc import LLCCallback
from callbacks.progress import ChainProgressBar
from callbacks.susceptibility import SusceptibilityCallback

from .config import check_number
from .diagnostics import diagnostics_table, warn_unconverged
from .influence import BIFResult
from .observables import ReferenceLoss
from .result import SusceptibilityResult
from .rundir import claim, tensor_digest, weights_digest, write_parquet, write_text
from .sampler import SusceptibilitySampler
from .strategy import chains_strategy

REQUIRED_CALLBACKS = (SusceptibilityCallback, LLCCallback, DiagnosticsCallback)
RUN_FILE = "run.json"
"""The run's identity (``run_identity``), written when the run claims its directory."""
RUN_ENTRIES = ("config.yaml", "state", "tiny_lm", "lightning_logs", "wandb")
"""What a run directory may hold before its run.json: the config, and what a run writes beside its outputs."""
RUN_STATE = "state"
"""Where a run keeps its partial work (units, pilot plans, rounds): what a run that replaces it deletes."""
DIVERGED_FILE = "state/diverged.json"
"""Written when a chain diverges: the run cannot finish with its settings (its seeds are fixed, so the
same chain diverges again), and a run with corrected settings may replace it."""


def _batch_tensors(batch: Any):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for k in sorted(batch):
            yield from _batch_tensors(batch[k])
    elif isinstance(batch, (list, tuple)):
        for b in batch:
            yield from _batch_tensors(b)


def run_identity(module: SusceptibilitySampler, extra: dict | None = None) -> dict:
    """What makes two runs the same run: sampler settings, components, model and data digests."""
    data = module.data
    return {
        "sgld": module.sgld.to_dict(),
        "components": module.component_names,
        "model_digest": weights_digest(module.model, named=False),
        "data_digest": tensor_digest([*_batch_tensors(data.sampling), *_batch_tensors(data.observation),
                                      *_batch_tensors(data.reference)]),
        # Low precision changes the estimate beyond float32 noise: a run must not mix the two.
        **({"observation_dtype": module.compute.observation_dtype}
           if module.compute.observation_dtype != "float32" else {}),
        # The default observable (L_n) is left out, so the identities of runs from before it existed hold.
        **({} if type(module.observable) is ReferenceLoss else module.observable.describe()),
        **(extra or {}),
    }


def with_required_callbacks(callbacks: list | None, required: list[L.Callback] | None = None) -> list:
    """The user's callbacks plus the ones a run needs (default: a susceptibility run's), unless present;
    Lightning's default progress bars become the one that names component, chain and draw."""
    callbacks = [ChainProgressBar() if type(c) in (TQDMProgressBar, RichProgressBar) else c for c in callbacks or []]
    for callback in required if required is not None else [cls() for cls in REQUIRED_CALLBACKS]:
        if not any(isinstance(c, type(callback)) for c in callbacks):
            callbacks.append(callback)
    return callbacks


def make_trainer(trainer: dict | None, run_dir: Path, required: list[L.Callback] | None = None,
                 rounds: int = 1) -> L.Trainer:
    """A Trainer for sampling: one epoch over the schedule per round (``SGLDConfig.rounds``), no
    checkpoints, our strategy for DDP."""
    kwargs = {"accelerator": "auto", "devices": 1, "logger": False, "enable_model_summary": False}
    kwargs.update(trainer or {})
    kwargs.update(
        max_epochs=rounds, reload_dataloaders_every_n_epochs=1, enable_checkpointing=False, use_distributed_sampler=False,
        num_sanity_val_steps=0, default_root_dir=str(run_dir),
        callbacks=with_required_callbacks(
            [*(kwargs.get("callbacks") or []), *([ChainProgressBar()] if kwargs.get("enable_progress_bar", True) else [])],
            required),
        strategy=chains_strategy(kwargs.get("strategy", "auto"), kwargs.get("devices", 1),
                                 kwargs.get("accelerator", "auto")),
    )
    return L.Trainer(**kwargs)


def _callback(trainer: L.Trainer, cls):
    return next(c for c in trainer.callbacks if isinstance(c, cls))


def _left_nothing_to_keep(run_dir: Path) -> str | None:
    """What the unfinished run in ``run_dir`` left, when a run with other settings may replace it
    (``rundir.claim``'s ``replaceable``): it diverged, or no unit finished; None when finished units
    would be lost."""
    if (run_dir / DIVERGED_FILE).exists():
        return "diverged (its chains cannot finish with those settings)"
    # A unit is finished once its done.json exists (SusceptibilitySampler.is_done).
    if not any((run_dir / RUN_STATE / "units").glob("*/done.json")):
        return "had finished no unit"
    return None


def fit_in_run_dir(module: SusceptibilitySampler, trainer: L.Trainer, required: tuple[type, ...],
                   identity_extra: dict | None = None, config_text: str | None = None) -> bool:
    """Check the run directory, then fit (or resume); False when it already held this finished run."""
    run_dir = module.run_dir
    missing = [cls.__name__ for cls in required if not any(isinstance(c, cls) for c in trainer.callbacks)]
    if missing:
        raise ValueError(f"the Trainer lacks the callbacks this run needs: {', '.join(missing)}")
    # A config's fields can be set after it was built (and checked): check them before anything is written.
    module.sgld.validate()
    module.compute.validate()
    # Other ranks exist only once rank 0 has checked the directory and entered fit.
    state = (claim(run_dir, run_identity(module, identity_extra), record=RUN_FILE, other="the results of another run",
                   known=RUN_ENTRIES, replaceable=_left_nothing_to_keep, scratch=(RUN_STATE,))
             if trainer.is_global_zero else "resume")
    if state == "finished":
        print(f"lit-susc: {run_dir} already holds this run's finished results; nothing to do.")
        return False
    if state == "resume" and trainer.is_global_zero:
        # The same settings again (say with a more tolerant DiagnosticsCallback): no longer known to diverge.
        (run_dir / DIVERGED_FILE).unlink(missing_ok=True)
    if config_text is not None and trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(config_text)
    try:
        trainer.fit(module)
    except BaseException as err:
        if isinstance(err, ChainDivergedError):  # only its existence is read: no checksum
            write_text(run_dir / DIVERGED_FILE, json.dumps({"error": str(err)}))
        module.hand_back()  # Lightning skips on_train_end when a run raises (a diverging chain)
        raise
    return True


def _fit_and_write(module: SusceptibilitySampler, trainer: L.Trainer, required: tuple[type, ...],
                   identity_extra: dict | None, config_text: str | None, write, load):
    """The one path of a run: claim the directory and fit (or resume; or skip when finished), then
    ``write()`` the outputs on rank 0 (returning the result) while the other ranks wait, and return
    the result (``load(run_dir)`` where this process did not build it)."""
    if not fit_in_run_dir(module, trainer, required, identity_extra, config_text):
        return load(module.run_dir)
    result = write() if trainer.is_global_zero else None
    trainer.strategy.barrier("lit-susc outputs written")
    return result if result is not None else load(module.run_dir)


def run_sampling(module: SusceptibilitySampler, trainer: L.Trainer, tokens: pa.Table | None = None,
                 identity_extra: dict | None = None, config: dict | None = None,
                 config_text: str | None = None, shard_tokens: int = 1 << 20) -> SusceptibilityResult:
    """Fit (or resume, or skip when finished) and write the run's outputs; returns the result."""
    check_number("shard_tokens", shard_tokens, low=1, integer=True, why="observation tokens per chi shard")
    run_dir = module.run_dir

    def write() -> SusceptibilityResult:
        susceptibility = _callback(trainer, SusceptibilityCallback)
        shape = (len(module.component_names), *module.observation_shape)
        result = SusceptibilityResult(
            chi=susceptibility.chi.reshape(shape), chi_se=susceptibility.chi_se.reshape(shape),
            components=module.component_names, convention=module.sgld.convention, nbeta=module.sgld.nbeta,
            llc=_callback(trainer, LLCCallback).llc, config={"sgld": module.sgld.to_dict(), **(config or {})},
            tokens=tokens,
        )
        traces = DiagnosticsCallback.gather(module)
        write_parquet(run_dir / "traces.parquet", traces)
        table = diagnostics_table(traces, module.component_names, float(module.ref_loss_star))
        result.diagnostics = {row.pop("component"): row for row in table.to_pylist()}
        result.schedule = module.schedule()
        for line in warn_unconverged(table):
            print(line)
        result.save(run_dir, shard_tokens=shard_tokens,
                    extra={"ref_loss_at_w_star": float(module.ref_loss_star), "chains": module.sgld.chains,
                           "draws": module.sgld.draws})
        return result

    return _fit_and_write(module, trainer, REQUIRED_CALLBACKS, identity_extra, config_text, write,
                          SusceptibilityResult.load)


BIF_CALLBACKS = (BIFCallback, LLCCallback, DiagnosticsCallback)


def bif_callbacks(n_train: int) -> list[L.Callback]:
    return [BIFCallback(n_train), LLCCallback(), DiagnosticsCallback()]


def run_bif(module: SusceptibilitySampler, trainer: L.Trainer, granularity: str = "sample",
            train: pa.Table | None = None, query: pa.Table | None = None, identity_extra: dict | None = None,
            config: dict | None = None, config_text: str | None = None, top_k: int = 10) -> BIFResult:
    """Fit (or resume, or skip when finished) a BIF run and write its outputs; returns the result."""
    run_dir = module.run_dir
    if module.sgld.target_reliability is not None:
        raise ValueError("sgld.target_reliability extends chains until chi is reliable; a BIF run has no chi: "
                         "set it to null and choose draws (and max_draws) yourself")
    extra = {"kind": "bif", "n_train": _callback(trainer, BIFCallback).n_train, **(identity_extra or {})}

    def write() -> BIFResult:
        result = BIFResult(bif=_callback(trainer, BIFCallback).bif, components=module.component_names,
                           granularity=granularity, llc=_callback(trainer, LLCCallback).llc,
                           config={"sgld": module.sgld.to_dict(), **(config or {})}, train=train, query=query)
        write_parquet(run_dir / "traces.parquet", DiagnosticsCallback.gather(module))
        result.save(run_dir, top_k=top_k)
        return result

    return _fit_and_write(module, trainer, BIF_CALLBACKS, extra, config_text, write, BIFResult.load)
