"""The Python API: susceptibilities of any ``nn.Module`` from a per-sample loss function."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from .components import resolve_components
from .config import SGLDConfig
from .engine import make_trainer, run_sampling
from .result import SusceptibilityResult
from .sampler import LossFn, SamplingData, SusceptibilitySampler


def estimate_susceptibilities(
    model: nn.Module,
    loss_fn: LossFn,
    sampling_data: Iterable[Any],
    observation_data: Iterable[Any],
    components=None,
    sgld: SGLDConfig | None = None,
    trainer: dict | None = None,
    *,
    reference_data: Any = None,
    run_dir: str | Path | None = None,
) -> SusceptibilityResult:
    """chi[component, observation] by component-restricted SGLD around the model's current weights.

    Args:
        model: any module; its current parameters are the trained point w* (restored afterwards).
        loss_fn: ``loss_fn(model, batch)`` -> per-sample losses [B] or per-token losses [B, T].
        sampling_data: batches for the SGLD gradients; its first batch is the reference batch
            unless ``reference_data`` is given.
        observation_data: batches whose losses are observed at each draw; chi's columns are
            their losses concatenated along dim 0.
        components: None (the whole model as one component ``all``), a list of glob patterns
            over built-in components (GPT-NeoX, GPT-2), or {name: {parameter name: None | mask}}.
        sgld: sampler settings and chi convention (``SGLDConfig``).
        trainer: extra ``lightning.Trainer`` arguments (accelerator, devices, strategy, logger...).
        reference_data: the batch defining L_ref and phi_C = L_ref(w) - L_ref(w*).
        run_dir: where unit state and outputs go (resumable); by default a temporary directory,
            removed once the result is in memory.
    """
    sgld = sgld or SGLDConfig()
    sampling = list(sampling_data)
    data = SamplingData(sampling=sampling, observation=list(observation_data),
                        reference=reference_data if reference_data is not None else (sampling[0] if sampling else None))
    resolved = resolve_components(model, components)
    temporary = run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="lit-susc-") if temporary else run_dir)
    lightning_trainer = make_trainer(trainer, run_dir)
    if temporary and lightning_trainer.world_size > 1:
        raise ValueError("a multi-process run needs run_dir: every process must write to the same directory")
    module = SusceptibilitySampler(model, loss_fn, resolved, data, sgld, run_dir)
    result = run_sampling(module, lightning_trainer)
    if temporary:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume from a directory nobody named
    return result
