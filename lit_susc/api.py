"""The Python API: susceptibilities and Bayesian influence functions of any ``nn.Module``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .chains import LossFn
from .components import resolve_components
from .config import ComputeConfig, SGLDConfig
from .engine import bif_callbacks, make_trainer, run_bif, run_sampling
from .influence import BIFResult
from .observables import Observable
from .result import SusceptibilityResult
from .sampler import SamplingData, SusceptibilitySampler


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
    compute: ComputeConfig | None = None,
    observable: Observable | None = None,
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
            over built-in components (lit_susc.models: GPT-NeoX, GPT-2, Llama, Qwen2, Qwen3,
            Mistral, OLMo 2, Phi-3), or {name: {parameter name: None | mask}}.
        sgld: sampler settings and chi convention (``SGLDConfig``).
        trainer: extra ``lightning.Trainer`` arguments (accelerator, devices, strategy, logger...).
        reference_data: the batch defining L_ref and phi_C = L_ref(w) - L_ref(w*).
        run_dir: where unit state and outputs go (resumable); by default a temporary directory,
            removed once the result is in memory.
        compute: memory budget, prefix caching (for losses with ``accepts_cached_prefix``, such
            as ``lit_susc.lm.per_token_loss``) and observation precision (``ComputeConfig``).
        observable: what chi correlates the losses with (lit_susc.observables); by default the
            reference batch's mean loss, phi_C = L_ref(w) - L_ref(w*).
    """
    return _run(model, loss_fn, sampling_data, list(observation_data), components, sgld, trainer, reference_data,
                run_dir, compute, None, lambda module, lt: run_sampling(module, lt), observable)


def estimate_bif(
    model: nn.Module,
    loss_fn: LossFn,
    sampling_data: Iterable[Any],
    train_data: Iterable[Any],
    query_data: Iterable[Any],
    components=None,
    sgld: SGLDConfig | None = None,
    trainer: dict | None = None,
    *,
    reference_data: Any = None,
    run_dir: str | Path | None = None,
    top_k: int = 10,
    compute: ComputeConfig | None = None,
) -> BIFResult:
    """Bayesian influence functions BIF(z_i, q) = -Cov(l_i(w), l_q(w)) under the localized posterior.

    The same sampler as ``estimate_susceptibilities`` (its arguments mean the same), with the
    observation data being ``train_data`` followed by ``query_data``: the result's ``bif`` is
    [components, training losses, query losses], training and query losses each concatenated
    along dim 0 and flattened (per sample when ``loss_fn`` returns [B], per token for [B, T]).
    ``components=None`` samples the whole model; a list of patterns gives one matrix each.
    Only streaming sums are kept, never the draws.
    """
    train, query = list(train_data), list(query_data)
    if not train or not query:
        raise ValueError("estimate_bif needs at least one batch of training samples and one of queries")

    with torch.no_grad():  # one pass over the training batches gives their loss count and shape
        shapes = [loss_fn(model, b).shape for b in train]
    n_train = sum(shape.numel() for shape in shapes)
    granularity = "token" if len(shapes[0]) > 1 else "sample"
    return _run(model, loss_fn, sampling_data, train + query, components, sgld, trainer, reference_data, run_dir,
                compute, bif_callbacks(n_train), lambda module, lt: run_bif(module, lt, granularity=granularity, top_k=top_k))


def _run(model, loss_fn, sampling_data, observation, components, sgld, trainer, reference_data, run_dir,
         compute, required, runner, observable=None):
    """Shared set-up of the API's runs: data, components, a run directory (temporary by default), Trainer."""
    sgld = sgld or SGLDConfig()
    sampling = list(sampling_data)
    data = SamplingData(sampling=sampling, observation=observation,
                        reference=reference_data if reference_data is not None else (sampling[0] if sampling else None))
    resolved = resolve_components(model, components)
    temporary = run_dir is None
    run_dir = Path(tempfile.mkdtemp(prefix="lit-susc-") if temporary else run_dir)
    lightning_trainer = make_trainer(trainer, run_dir, required, rounds=sgld.rounds)
    if temporary and lightning_trainer.world_size > 1:
        raise ValueError("a multi-process run needs run_dir: every process must write to the same directory")
    module = SusceptibilitySampler(model, loss_fn, resolved, data, sgld, run_dir, compute, observable)
    result = runner(module, lightning_trainer)
    if temporary:
        shutil.rmtree(run_dir, ignore_errors=True)  # nothing to resume from a directory nobody named
    return result
