"""``aux fit``: features and PC targets of a susceptibility run, the aux model, the ridge baseline.

Targets are PC scores divided by a fixed scale r, so that lr and l1 do not depend on chi's units:

    y_k = pcs_k / r_k,   r_k = sqrt(lambda_k)               (targets.whiten, the default: whitened PCs)
                         r_k = sqrt(lambda_1) for every k   (PC scores keep their relative variances)

Features and targets are cached as ``.npy`` memory maps under ``output_dir/cache`` (never pickled),
so runs of any size train without holding them in memory; a cache made from the same run with
the same layers is reused, unless a file of it is corrupt: then it is made again. Bad input (tokens
that do not line up, more PCs than components, non-finite chi or activations, a base model that is
not the run's) raises ValueError before any output is written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, TypeVar

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from ..corpus import ContextSet, iter_texts, make_contexts, token_table
from ..engine import RUN_FILE
from ..lm import TextDataConfig
from ..result import read_chi, read_chi_se, read_metadata
from ..rundir import (
    TOKENS_FILE,
    CorruptFileError,
    claim,
    file_digest,
    read_json,
    read_parquet,
    read_safetensors,
    reading,
    stage_remedy,
    write_json,
    write_memmap,
    write_safetensors,
)
from ..tinylm import load_causal_lm
from .bundle import META_FILE, AuxBundle
from .features import ResidualFeatures, check_alignment, check_same_model, config_hash, feature_layers, model_identity
from .model import AuxDataModule, AuxModel, AuxModelConfig, normalization_stats
from .pca import PCABasis, TargetConfig, fit_pca, pc_reliability
from .plot import plot_pearson
from .ridge import RidgeConfig, ridge_pearson
from .split import SplitConfig, document_split

_CHI_CHUNK = 1 << 16  # tokens of chi read at a time


@dataclass
class FeatureConfig:
    """Which activations feed the aux model and how they are collected."""

    layers: list[int] | None = None
    """Residual-stream indices (0 = embeddings, l = output of block l-1, before the final norm);
    None: ``count`` evenly spaced intermediate layers."""
    count: int = 4
    """Number of evenly spaced layers when ``layers`` is None (the spec: 4)."""
    batch_size: int = 32
    """Contexts per base-model forward pass."""
    dtype: Literal["float32", "float16"] = "float32"
    """Storage of the feature cache; float16 halves it (Pythia-1.4B: 16 KiB per token)."""


@dataclass
class FitData:
    """Everything the aux model trains on, aligned row by row with the run's token table."""

    features: np.ndarray
    """[N, n_features], memory-mapped."""
    targets: np.ndarray
    """[N, n_pcs] float32, memory-mapped: PC scores / target_scale."""
    is_val: np.ndarray
    """[N] bool: the token's document is a validation document."""
    pca: PCABasis
    mean_se_sq: Tensor | None
    """[n_components]: mean over the training split's tokens of chi_se^2 (None: the run has no chi_se)."""
    feature_mean: Tensor
    feature_std: Tensor
    target_scale: Tensor
    layers: list[int]
    base_model: dict
    """Identity of the base model: pretrained, revision, config_hash, weights."""
    documents: dict[str, int]
    """Number of distinct documents on each side of the split ("train", "val")."""


def read_sample_run(run_dir: Path, needed_by: str) -> tuple[dict, dict, pa.Table]:
    """(result.json, run.json, token table) of a finished language-model sampling run, verified;
    ``needed_by`` (e.g. 'aux fit') names the stage that reads it."""
    meta = read_metadata(run_dir)
    missing = [f for f in (RUN_FILE, TOKENS_FILE) if not (run_dir / f).exists()]
    if missing:
        raise FileNotFoundError(f"{run_dir} lacks {', '.join(missing)}: {needed_by} needs a language-model run made "
                                "by `run.py sample`")
    return meta, _run_record(run_dir), read_parquet(run_dir / TOKENS_FILE, stage_remedy(run_dir))


def _run_record(run_dir: Path) -> dict:
    # run.json is the identity a resumed run is checked against (rundir.claim): without it the run's
    # units cannot be told from another run's, and only a new run can take its place.
    return read_json(run_dir / RUN_FILE, f"{RUN_FILE} records which run {run_dir} holds; delete {run_dir} and "
                                         "rerun the command that wrote it: the run is sampled again from the start")


def _check_chi(run_dir: Path, n_tokens: int) -> None:
    for a in range(0, n_tokens, _CHI_CHUNK):
        chunk = read_chi(run_dir, a, a + _CHI_CHUNK)
        if not torch.isfinite(chunk).all():
            token = a + int((~torch.isfinite(chunk)).any(0).nonzero()[0])
            raise ValueError(f"chi of {run_dir} is not finite at token {token}; re-run or repair the susceptibility "
                             "run before fitting an aux model on it")


def observation_contexts(tokenizer, data: dict) -> ContextSet:
    """The run's observation contexts, cut again from its data source exactly as ``sample`` did."""
    cfg = TextDataConfig(**data)
    docs = iter_texts(cfg.source, split=cfg.split, text_column=cfg.text_column, max_documents=cfg.max_documents,
                      streaming=True)
    return make_contexts(tokenizer, docs, cfg.context_length, max_contexts=cfg.observation_contexts,
                         contexts_per_document=cfg.contexts_per_document)


def load_run_base_model(run: dict, trust_remote_code: bool = False):
    """The base model named in run.json, checked against the config it recorded; (model, tokenizer, identity)."""
    recorded = run["model"]
    model, tokenizer = load_causal_lm(recorded["pretrained"], revision=recorded["revision"],
                                      trust_remote_code=trust_remote_code)
    identity = model_identity(recorded["pretrained"], recorded["revision"], model)
    expected = {"pretrained": recorded["pretrained"], "revision": recorded["revision"],
                "config_hash": config_hash(recorded["model_config"])}
    check_same_model(expected, identity, "aux fit")
    return model, tokenizer, identity


def collect_features(extractor: ResidualFeatures, input_ids: Tensor, batch_size: int, out: np.ndarray,
                     device: torch.device) -> None:
    """out[c * (T-1) + t - 1] = features of token t of context c (t = 1..T-1); raises on non-finite values."""
    per_context = input_ids.shape[1] - 1
    with torch.no_grad():
        for a in range(0, len(input_ids), batch_size):
            feats = extractor(input_ids[a:a + batch_size].to(device))[:, 1:].flatten(0, 1)
            if not torch.isfinite(feats).all():
                raise ValueError(f"the base model's activations are not finite in contexts {a}..{a + batch_size - 1} "
                                 f"(layers {extractor.layers}); check the model's weights and dtype")
            out[a * per_context:a * per_context + len(feats)] = feats.cpu().numpy()


def sample_run_digest(run_dir: Path) -> str:
    """A sampling run's identity wherever it lies: the digest of what it sampled (run.json) and what
    it found (result.json). aux.json records it as ``sample_run``, so the run can be recognised after
    it was moved (the report checks it)."""
    return file_digest(run_dir / RUN_FILE, run_dir / "result.json")


def _cache_identity(run_dir: Path, layers: list[int], dtype: str) -> dict:
    return {"run": sample_run_digest(run_dir), "layers": layers, "dtype": dtype}


_Cached = TypeVar("_Cached")
_MADE_AGAIN = "it is made again"  # the remedy of a corrupt cache file that _reuse finds: none is needed


def _cache_remedy(cache_dir: Path) -> str:
    """For a cache file found corrupt right after it was made (a failing disk)."""
    return f"delete {cache_dir} and rerun the same command: the cache is made again"


def _reuse(stamp: Path, wanted: dict, load: Callable[[str], _Cached]) -> _Cached | None:
    """``load(remedy)`` of the cache that ``stamp`` describes, when it was made for ``wanted``; None
    when the cache must be made (again).

    A corrupt stamp or cache file is made again rather than refused: the cache derives from the run
    alone, so making it again costs only time, where a refusal would have the user delete it by hand
    to the same end. A line names the file.
    """
    if not stamp.exists():
        return None
    try:
        return load(_MADE_AGAIN) if read_json(stamp, _MADE_AGAIN) == wanted else None
    except CorruptFileError as err:
        print(f"lit-susc: {err}", flush=True)
        return None


def _load_array(path: Path, remedy: str) -> np.ndarray:
    with reading(path, remedy) as checked:
        return np.load(checked, mmap_mode="r")


def _feature_cache(run_dir: Path, cache_dir: Path, run: dict, tokens, config: FeatureConfig, device: torch.device,
                   trust_remote_code: bool) -> tuple[np.ndarray, list[int], dict]:
    """(features, layers, the cache's stamp: its identity, the base model's under "base_model")."""
    model, tokenizer, identity = load_run_base_model(run, trust_remote_code)
    layers = config.layers or feature_layers(model.config.num_hidden_layers, config.count)
    extractor = ResidualFeatures(model, layers).to(device)
    contexts = observation_contexts(tokenizer, run["data"])
    check_alignment(tokens, token_table(contexts, tokenizer), "the base model's tokens re-created from run.json")
    path, stamp = cache_dir / "features.npy", cache_dir / "features.json"
    wanted = {**_cache_identity(run_dir, layers, config.dtype), "base_model": identity}
    cached = _reuse(stamp, wanted, lambda remedy: _load_array(path, remedy))
    if cached is not None:
        return cached, layers, wanted
    created = [d for d in (cache_dir.parent, cache_dir) if not d.exists()]
    try:
        with write_memmap(path, config.dtype, (tokens.num_rows, extractor.n_features)) as out:
            collect_features(extractor, contexts.input_ids, config.batch_size, out, device)
    except BaseException:
        for d in reversed(created):  # leave no trace of a failed first attempt
            d.rmdir()
        raise
    write_json(stamp, wanted)
    return _load_array(path, _cache_remedy(cache_dir)), layers, wanted


def prepare_fit_data(run_dir: str | Path, cache_dir: str | Path, features: FeatureConfig, targets: TargetConfig,
                     split: SplitConfig, device: torch.device | str = "cpu",
                     trust_remote_code: bool = False) -> FitData:
    """Features, split, PC basis (training split only), targets and normalisation of a finished run."""
    run_dir, cache_dir, device = Path(run_dir), Path(cache_dir), torch.device(device)
    meta, run, tokens = read_sample_run(run_dir, "aux fit")
    n_components, n_tokens = len(meta["components"]), meta["n_tokens"]
    if targets.n_pcs is not None and not 1 <= targets.n_pcs <= n_components:
        raise ValueError(f"targets.n_pcs={targets.n_pcs} asked, but {run_dir} has {n_components} components; "
                         f"use 1..{n_components} (or null for all)")
    if tokens.num_rows != n_tokens:
        raise ValueError(f"{run_dir}: tokens.parquet has {tokens.num_rows} rows but chi has {n_tokens} tokens; the "
                         "run directory is inconsistent")
    _check_chi(run_dir, n_tokens)
    is_val = document_split(tokens.column("document").to_pylist(), split)
    feats, layers, feature_stamp = _feature_cache(run_dir, cache_dir, run, tokens, features, device,
                                                  trust_remote_code)
    stamp = cache_dir / "targets.json"
    wanted = {"features": feature_stamp, "targets": asdict(targets), "split": asdict(split)}
    # Made once, then only read: DDP ranks started by Lightning re-run this while rank 0 trains on it.
    cached = _reuse(stamp, wanted, lambda remedy: _read_targets(cache_dir, remedy))
    if cached is None:
        stamp.unlink(missing_ok=True)
        _write_targets(run_dir, cache_dir, feats, is_val, n_tokens, targets)
        write_json(stamp, wanted)
        cached = _read_targets(cache_dir, _cache_remedy(cache_dir))
    fit_targets, pca, stats = cached
    documents = np.asarray(tokens.column("document").to_pylist(), dtype=object)
    return FitData(features=feats, targets=fit_targets, is_val=is_val, pca=pca,
                   mean_se_sq=_mean_se_sq(run_dir, meta, is_val), **stats, layers=layers,
                   base_model=feature_stamp["base_model"],
                   documents={"train": len(set(documents[~is_val])), "val": len(set(documents[is_val]))})


def _read_targets(cache_dir: Path, remedy: str) -> tuple[np.ndarray, PCABasis, dict[str, Tensor]]:
    """What ``_write_targets`` wrote, verified: targets, the PC basis, the normalisation."""
    return (_load_array(cache_dir / "targets.npy", remedy), PCABasis.load(cache_dir / "pca.safetensors", remedy),
            read_safetensors(cache_dir / "normalization.safetensors", remedy))


def _mean_se_sq(run_dir: Path, meta: dict, is_val: np.ndarray) -> Tensor | None:
    """Per component, the mean of chi_se^2 over the training split; None for a run without chi_se."""
    if not all("chi_se_file" in shard for shard in meta["shards"]):
        return None
    total = torch.zeros(len(meta["components"]), dtype=torch.float64)
    for a in range(0, meta["n_tokens"], _CHI_CHUNK):
        se = read_chi_se(run_dir, a, a + _CHI_CHUNK)[:, torch.from_numpy(~is_val[a:a + _CHI_CHUNK])]
        total += se.square().sum(1)
    return total / int((~is_val).sum())


def _write_targets(run_dir: Path, cache_dir: Path, features: np.ndarray, is_val: np.ndarray, n_tokens: int,
                   config: TargetConfig) -> None:
    """PC basis of the training split's chi, targets of every token, feature normalisation: to the cache."""
    def train_chi():
        for a in range(0, n_tokens, _CHI_CHUNK):
            yield read_chi(run_dir, a, a + _CHI_CHUNK).T[torch.from_numpy(~is_val[a:a + _CHI_CHUNK])]

    pca = fit_pca(train_chi, config)
    scale = pca.variances.sqrt() if config.whiten else pca.variances[:1].sqrt().expand(pca.n_pcs).clone()
    with write_memmap(cache_dir / "targets.npy", np.float32, (n_tokens, pca.n_pcs)) as out:
        for a in range(0, n_tokens, _CHI_CHUNK):
            out[a:a + _CHI_CHUNK] = (pca.to_pcs(read_chi(run_dir, a, a + _CHI_CHUNK).T) / scale).numpy()
    pca.save(cache_dir / "pca.safetensors")
    mean, std = normalization_stats(features, np.flatnonzero(~is_val))
    write_safetensors(cache_dir / "normalization.safetensors", {"feature_mean": mean, "feature_std": std,
                                                                "target_scale": scale})


def training_settings(trainer: L.Trainer) -> dict:
    """The Trainer's settings that change the fitted model or its validation Pearson: how long it
    trains, on how many processes, in what precision, with what clipping, and the global seed
    (LightningCLI's ``seed_everything``). Part of the fit's identity, so a finished fit is not taken
    for one with other settings."""
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by lightning.seed_everything
    return {"max_epochs": trainer.max_epochs, "min_epochs": trainer.min_epochs, "max_steps": trainer.max_steps,
            "min_steps": trainer.min_steps, "limit_train_batches": trainer.limit_train_batches,
            "limit_val_batches": trainer.limit_val_batches, "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": getattr(trainer.gradient_clip_algorithm, "value", None),
            "precision": trainer.precision, "world_size": trainer.world_size,
            "seed": None if seed is None else int(seed)}


def fit_aux(trainer: L.Trainer, sample_dir: str | Path, output_dir: str | Path = "runs/aux",
            features: FeatureConfig | None = None, targets: TargetConfig | None = None,
            split: SplitConfig | None = None, model: AuxModelConfig | None = None, batch_size: int = 256,
            num_workers: int = 0, ridge: RidgeConfig | None = None, trust_remote_code: bool = False,
            config_text: str | None = None) -> AuxBundle:
    """Train the aux model on a finished susceptibility run and write the aux directory (see bundle.py).

    A directory that already holds this fit's finished results is returned as it is; one holding
    another fit is refused.

    Args:
        trainer: the Lightning Trainer that runs the fit.
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
    features, targets = features or FeatureConfig(), targets or TargetConfig()
    split, model, ridge = split or SplitConfig(), model or AuxModelConfig(), ridge or RidgeConfig()
    run_dir, out_dir = Path(sample_dir), Path(output_dir)
    config = {"sample_dir": str(sample_dir), "features": asdict(features), "targets": asdict(targets),
              "split": asdict(split), "model": asdict(model), "batch_size": batch_size, "ridge": asdict(ridge),
              "trainer": training_settings(trainer)}
    if claim(out_dir, config, record=META_FILE, view=lambda meta: meta["config"], other="another finished aux fit",
             resumable=False) == "finished":
        print(f"lit-susc: {out_dir} already holds this aux fit's finished results; nothing to do.")
        return AuxBundle.load(out_dir)

    data = prepare_fit_data(run_dir, out_dir / "cache", features, targets, split, trainer.strategy.root_device,
                            trust_remote_code)
    meta = read_metadata(run_dir)
    module = AuxModel(data.features.shape[1], data.pca.n_pcs, model)
    datamodule = AuxDataModule(data.features, data.targets, data.is_val, data.feature_mean, data.feature_std,
                               batch_size=batch_size, num_workers=num_workers)
    trainer.fit(module, datamodule=datamodule)
    trainer.validate(module, datamodule=datamodule, verbose=False)  # the final weights' per-PC Pearson
    pearson = module.pearson
    reliability = None if data.mean_se_sq is None else pc_reliability(data.pca, data.mean_se_sq)
    bundle = AuxBundle(model=module, pca=data.pca, feature_mean=data.feature_mean, feature_std=data.feature_std,
                       target_scale=data.target_scale, meta={})
    if trainer.is_global_zero:
        ridge_r, ridge_fit = ridge_pearson(data.features, data.targets, datamodule.train_rows,
                                           datamodule.val_rows, data.feature_mean, data.feature_std, ridge)
        bundle.meta = {
            "config": config, "sample_run": sample_run_digest(run_dir), "base_model": data.base_model,
            "layers": data.layers,
            "context_length": _run_record(run_dir)["data"]["context_length"],
            "n_features": int(data.features.shape[1]), "n_pcs": data.pca.n_pcs, "hidden": module.encoder.out_features,
            "components": meta["components"], "convention": meta["convention"], "nbeta": meta["nbeta"],
            "tokens": {"train": int((~data.is_val).sum()), "val": int(data.is_val.sum())},
            "documents": data.documents,
            "pc_variances": data.pca.variances.tolist(),
            "pearson": pearson.tolist(), "pearson_mean": float(pearson.mean()),
            **({"pc_reliability": reliability.tolist(), "noise_ceiling": reliability.sqrt().tolist(),
                "noise_ceiling_mean": float(reliability.sqrt().mean()), "mean_se_sq": data.mean_se_sq.tolist()}
               if reliability is not None else {}),
            "ridge": {"pearson": ridge_r.tolist(), "pearson_mean": float(ridge_r.mean()), **ridge_fit},
        }
        if config_text is not None:
            (out_dir / "config.yaml").write_text(config_text)
        ceiling = None if reliability is None else reliability.sqrt()
        plot_pearson(pearson, ridge_r, out_dir / "pearson.png", ceiling)
        bundle.save(out_dir, {"pearson_mean": float(pearson.mean()), "ridge_pearson_mean": float(ridge_r.mean()),
                              **({"noise_ceiling_mean": float(ceiling.mean())} if ceiling is not None else {}),
                              "n_pcs": data.pca.n_pcs, "tokens": len(data.is_val), "epochs": trainer.current_epoch})
        print(f"\nlit-susc: aux model for {data.pca.n_pcs} PCs of {len(meta['components'])} components written to "
              f"{out_dir.resolve()}\n  validation Pearson per PC, mean: aux {pearson.mean():.3f}, "
              f"ridge {ridge_r.mean():.3f}"
              + (f", noise ceiling sqrt(reliability) {ceiling.mean():.3f}" if ceiling is not None else "")
              + " (pearson.png)")
    trainer.strategy.barrier("lit-susc aux outputs written")
    return bundle
