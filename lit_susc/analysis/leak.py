"""The leak check (spec appendix, "Leaky Activations?"): are aux-predicted susceptibilities more
activation-like than the ground truth they were trained on?

For every residual-stream layer l of the base model, over the aux model's validation tokens:

    cka_ground_truth[l]     = linear_cka(h_l, y_truth)      jaccard_ground_truth[l] = knn_jaccard(h_l, y_truth, k)
    cka_aux[l]              = linear_cka(h_l, y_aux)        jaccard_aux[l]          = knn_jaccard(h_l, y_aux, k)

- Tokens: the validation tokens of the aux fit, i.e. the tokens of the sample run whose document
  ``document_split`` puts on the validation side with the split recorded in aux.json. The aux
  model never trained on them, so y_aux is a prediction, not a recollection.
- Layers h_l (``ResidualFeatures``' indices): 0 = the embedding output (input of block 0),
  l = 1..L the output of block l - 1. Layer L is the last block's output *before* the final norm,
  as in the aux model's own features (``output_hidden_states`` would give the normed one).
- Positions: token row c * (T - 1) + (t - 1) of the run (token t of context c) gets h_l[c, t], the
  residual stream at the token's own position, the convention of the aux features (features.py).
- Susceptibility space: the aux model's target space, PC scores of chi in the aux dir's PCA basis
  divided by its target scale. y_truth = pca.to_pcs(chi) / target_scale with chi the sample run's
  ground truth; y_aux = the aux model's prediction (AuxPredictor's PC scores / target_scale).
  With whitened targets (the default) both are whitened PCs, the space the clustering uses.
- CKA streams over all validation tokens (moments only); the k-NN part uses a seeded uniform
  subsample of at most ``max_tokens`` of them (k-NN needs every point at once).

Outputs in ``output_dir``: leak.parquet (one row per layer), leak.png (CKA and Jaccard-kNN by
layer, ground truth and aux), leak.json (config, rows, token counts, inputs; written last: its
presence means the check finished, and a finished check with the same inputs is not redone).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..aux.bundle import AuxBundle
from ..aux.features import ResidualFeatures, check_alignment, check_same_model, model_identity
from ..aux.fit import observation_contexts, read_sample_run
from ..aux.predict import AuxPredictor
from ..aux.split import SplitConfig, document_split
from ..cluster.knn import EXACT_BACKENDS, knn
from ..config import check_number
from ..corpus import token_table
from ..figures import Figure, save_png
from ..result import read_chi
from ..rundir import claim, hold, mark_finished, read_parquet, stage_remedy, write_parquet
from ..tinylm import load_causal_lm
from .cka import CKAAccumulator
from .neighbours import neighbour_jaccard

__all__ = ["LeakConfig", "plot_leak", "run_leak_check"]

LEAK_TABLE, LEAK_PLOT, LEAK_JSON = "leak.parquet", "leak.png", "leak.json"
_CHI_CHUNK = 1 << 16  # tokens of chi read at a time
_SCRATCH_PREFIX = "leak-activations-"  # the k-NN subsample's activations while the check runs
_BACKENDS = ("auto", *EXACT_BACKENDS)  # Jaccard-kNN compares neighbour sets: an approximate search would bias it


@dataclass
class LeakConfig:
    """Settings of the leak check."""

    k: int = 50
    """Neighbours per token for Jaccard-kNN (the spec: 50)."""
    max_tokens: int | None = 20000
    """The k-NN part uses a uniform random subsample (seeded) of at most this many validation
    tokens; None: all of them. CKA always uses every validation token. The subsample's activations
    are kept on disk in output_dir while the check runs: max_tokens x (L + 1) x hidden_size x 4 bytes
    (Pythia-1.4B, 20000 tokens: 4 GB)."""
    seed: int = 0
    """Seeds the choice of the k-NN subsample."""
    backend: str = "auto"
    """k-NN backend: 'auto' or an exact one, 'keops', 'torch', 'sklearn', 'faiss' (lit_susc.cluster.knn)."""
    batch_size: int = 32
    """Contexts per base-model forward pass; every layer's residual stream of a batch is held at once
    (batch_size x context_length x (L + 1) x hidden_size floats on the device)."""

    def __post_init__(self) -> None:
        check_number("leak.k", self.k, low=1, integer=True, why="neighbours per token for Jaccard-kNN")
        check_number("leak.max_tokens", self.max_tokens, low=2, integer=True, optional=True,
                     why="null: all validation tokens")
        check_number("leak.seed", self.seed, low=0, integer=True)
        check_number("leak.batch_size", self.batch_size, low=1, integer=True, why="contexts per forward pass")
        if self.backend not in _BACKENDS:
            raise ValueError(f"unknown k-NN backend {self.backend!r}; use one of {', '.join(_BACKENDS)}")


class _EveryLayer(nn.Module):
    """The features module of an AuxPredictor that also keeps every layer of the same forward pass.

    ``ResidualFeatures`` over layers 0..L runs the base model once; the aux model gets its own
    layers' columns, ``last`` keeps all of them. (A second extractor on the same model cannot do
    this: each one's hooks end the forward pass at its own deepest layer.)
    """

    def __init__(self, extractor: ResidualFeatures, aux_layers: list[int]) -> None:
        super().__init__()
        self.extractor = extractor
        size = extractor.hidden_size
        columns = torch.cat([torch.arange(layer * size, (layer + 1) * size) for layer in aux_layers])
        self.register_buffer("aux_columns", columns, persistent=False)
        self.last: Tensor | None = None

    def forward(self, input_ids: Tensor) -> Tensor:
        self.last = self.extractor(input_ids)
        return self.last.index_select(-1, self.aux_columns)


def _load_inputs(sample_dir: Path, aux_dir: Path, trust_remote_code: bool):
    """The aux bundle, the run's metadata, run.json and token table, checked to belong together."""
    bundle = AuxBundle.load(aux_dir)
    meta, run, tokens = read_sample_run(sample_dir, "the leak check")
    aux = bundle.meta
    what = f"the aux model in {aux_dir} was not fit on the run in {sample_dir}"
    if aux["components"] != meta["components"]:
        raise ValueError(f"{what}: their components differ ({len(aux['components'])} vs {len(meta['components'])}); "
                         "pass the sample run the aux model was fit on")
    if sum(aux["tokens"].values()) != meta["n_tokens"] or tokens.num_rows != meta["n_tokens"]:
        raise ValueError(f"{what}: the aux fit saw {sum(aux['tokens'].values())} tokens, the run has "
                         f"{meta['n_tokens']} (tokens.parquet: {tokens.num_rows}); pass the sample run the aux model "
                         "was fit on")
    if aux["context_length"] != run["data"]["context_length"]:
        raise ValueError(f"{what}: context lengths differ ({aux['context_length']} vs "
                         f"{run['data']['context_length']}); pass the sample run the aux model was fit on")
    recorded = run["model"]
    model, tokenizer = load_causal_lm(recorded["pretrained"], revision=recorded["revision"],
                                      trust_remote_code=trust_remote_code)
    check_same_model(aux["base_model"], model_identity(recorded["pretrained"], recorded["revision"], model),
                     f"leak check of {sample_dir}")
    return bundle, meta, run, tokens, model, tokenizer


def _ground_truth_targets(sample_dir: Path, bundle: AuxBundle, is_val: np.ndarray, n_tokens: int) -> Tensor:
    """y_truth [n_val, n_pcs] float64 of the validation tokens, in token order.

    The same pass sums the training tokens' chi: the aux PCA's mean must be their mean, which
    catches an aux model fit on another run with the same layout.
    """
    pca, scale = bundle.pca, bundle.target_scale
    parts, train_sum = [], torch.zeros_like(pca.mean)
    for a in range(0, n_tokens, _CHI_CHUNK):
        chi = read_chi(sample_dir, a, a + _CHI_CHUNK).T.double()
        val = torch.from_numpy(is_val[a:a + _CHI_CHUNK])
        train_sum += chi[~val].sum(0)
        parts.append(pca.to_pcs(chi[val]) / scale)
    train_mean = train_sum / int((~is_val).sum())
    atol = 1e-9 * float(pca.mean.abs().max()) + 1e-300
    if not torch.allclose(train_mean, pca.mean, rtol=1e-6, atol=atol):
        raise ValueError(f"the aux model's PCA mean is not the mean of {sample_dir}'s training-split chi (largest "
                         f"difference {float((train_mean - pca.mean).abs().max()):.3g}): the aux model was fit on "
                         "another run; pass the sample run the aux model was fit on")
    truth = torch.cat(parts)
    if not bool(torch.isfinite(truth).all()):
        raise ValueError(f"chi of {sample_dir}'s validation tokens is not finite; repair the run before the leak check")
    return truth


def run_leak_check(sample_dir: str | Path, aux_dir: str | Path, output_dir: str | Path,
                   config: LeakConfig | None = None, device: str | torch.device = "cpu", *,
                   trust_remote_code: bool = False, progress: bool = True) -> pa.Table:
    """CKA and Jaccard-kNN between every layer's activations and the ground-truth and aux-predicted
    susceptibilities of the aux model's validation tokens (module docstring for what exactly).

    Returns the table written to leak.parquet: one row per layer with ``layer`` (0 = embeddings,
    l = output of block l - 1, L before the final norm), ``cka_ground_truth``, ``cka_aux``,
    ``jaccard_ground_truth``, ``jaccard_aux``, ``n_tokens`` (validation tokens, all used by CKA) and
    ``n_tokens_jaccard`` (the subsample used by the k-NN part). Memory: the validation tokens'
    y_truth and y_aux (n_val x n_pcs float64 each) and (L + 1) sets of CKA moments, each
    (hidden_size + 2 n_pcs)^2 float64 on ``device``.

    Raises:
        ValueError: if the aux model was not fit on this run or base model, the k-NN subsample has
            no more than k tokens, or ``output_dir`` holds another leak check.
    """
    config = config or LeakConfig()
    sample_dir, aux_dir, out, device = Path(sample_dir), Path(aux_dir), Path(output_dir), torch.device(device)
    identity = {"config": asdict(config), "sample_dir": str(sample_dir), "aux_dir": str(aux_dir)}
    # leak.json is both the marker and the record: the identity's keys, then the results
    # An unfinished check of its own leaves at most its table, its plot and its scratch directory;
    # anything else is a user's, and the directory is refused.
    if claim(out, identity, record=LEAK_JSON, marker=LEAK_JSON, other="another leak check", resumable=False,
             view=lambda record: {k: record.get(k) for k in identity},
             known=(LEAK_TABLE, LEAK_PLOT, f"{_SCRATCH_PREFIX}*")) == "finished":
        print(f"lit-susc: {out} already holds this leak check's finished results; nothing to do.")
        return read_parquet(out / LEAK_TABLE, stage_remedy(out, marker=LEAK_JSON))
    _remove_stale_scratch(out)

    bundle, meta, run, tokens, model, tokenizer = _load_inputs(sample_dir, aux_dir, trust_remote_code)
    is_val = document_split(tokens.column("document").to_pylist(), SplitConfig(**bundle.meta["config"]["split"]))
    n_val = int(is_val.sum())
    if n_val != bundle.meta["tokens"]["val"]:
        raise ValueError(f"the split recorded in {aux_dir} gives {n_val} validation tokens of {sample_dir}, but the "
                         f"aux fit had {bundle.meta['tokens']['val']}; pass the sample run the aux model was fit on")
    rng = np.random.default_rng(config.seed)
    subsample = (np.arange(n_val) if config.max_tokens is None or config.max_tokens >= n_val
                 else np.sort(rng.choice(n_val, config.max_tokens, replace=False)))
    if len(subsample) <= config.k:
        raise ValueError(f"the leak check's k-NN part has {len(subsample)} validation tokens, not more than "
                         f"k={config.k}; lower k, raise max_tokens, or validate the aux model on more documents")

    contexts = observation_contexts(tokenizer, run["data"])
    check_alignment(tokens, token_table(contexts, tokenizer), "the base model's tokens re-created from run.json")
    per_context = contexts.input_ids.shape[1] - 1
    # make_contexts never lets a context span two documents, so a context is wholly on one side
    val_contexts = np.flatnonzero(is_val.reshape(-1, per_context)[:, 0])
    truth = _ground_truth_targets(sample_dir, bundle, is_val, meta["n_tokens"])

    n_layers = model.config.num_hidden_layers
    layers = list(range(n_layers + 1))
    tap = _EveryLayer(ResidualFeatures(model, layers), bundle.meta["layers"])
    predictor = AuxPredictor(tap, bundle).to(device).eval()
    target_scale = bundle.target_scale.to(device)
    n_pcs, hidden = truth.shape[1], tap.extractor.hidden_size
    moments = [CKAAccumulator() for _ in layers]
    hold(out)  # while its scratch exists: a later check that holds the lock knows every scratch it finds is stale
    with tempfile.TemporaryDirectory(dir=out, prefix=_SCRATCH_PREFIX) as scratch:
        acts = np.lib.format.open_memmap(Path(scratch) / "activations.npy", mode="w+", dtype=np.float32,
                                         shape=(len(layers), len(subsample), hidden))
        aux_sub = np.empty((len(subsample), n_pcs), np.float64)
        row = 0
        batches = range(0, len(val_contexts), config.batch_size)
        with torch.no_grad():
            for a in tqdm(batches, desc="leak check: activations", unit="batch", disable=not progress):
                chosen = val_contexts[a:a + config.batch_size]
                batch = {"input_ids": contexts.input_ids[chosen].to(device),
                         "shard": f"(leak-check batch {a // config.batch_size})", "context": int(chosen[0])}
                y_aux = predictor.predict_step(batch, a // config.batch_size)["pcs"].T.to(device).double()
                y_aux = y_aux / target_scale
                h = tap.last[:, 1:].flatten(0, 1)
                if not bool(torch.isfinite(h).all()):
                    raise ValueError(f"the base model's activations are not finite in contexts {chosen.tolist()}; "
                                     "check the model's weights and dtype")
                stop = row + len(h)
                y = torch.cat([truth[row:stop].to(device), y_aux], dim=1)
                lo, hi = np.searchsorted(subsample, [row, stop])
                picked = torch.from_numpy(subsample[lo:hi] - row).to(device)
                aux_sub[lo:hi] = y_aux[picked].cpu().numpy()
                for layer in layers:
                    h_l = h[:, layer * hidden:(layer + 1) * hidden]
                    moments[layer].update(h_l, y)
                    acts[layer, lo:hi] = h_l[picked].float().cpu().numpy()
                row = stop
        tap.last = None

        truth_sub = truth[torch.from_numpy(subsample)].numpy()
        nn_truth = knn(truth_sub, config.k, config.backend, device=device)[0]
        nn_aux = knn(aux_sub, config.k, config.backend, device=device)[0]
        rows = []
        for layer in tqdm(layers, desc="leak check: k-NN", unit="layer", disable=not progress):
            nn_act = knn(np.asarray(acts[layer]), config.k, config.backend, device=device)[0]
            rows.append({"layer": layer,
                         "cka_ground_truth": moments[layer].compute(slice(0, n_pcs)),
                         "cka_aux": moments[layer].compute(slice(n_pcs, 2 * n_pcs)),
                         "jaccard_ground_truth": float(neighbour_jaccard(nn_act, nn_truth).mean()),
                         "jaccard_aux": float(neighbour_jaccard(nn_act, nn_aux).mean()),
                         "n_tokens": n_val, "n_tokens_jaccard": len(subsample)})
        del acts  # the memmap must be closed before its directory goes

    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("layer", pa.int64()), ("cka_ground_truth", pa.float64()), ("cka_aux", pa.float64()),
        ("jaccard_ground_truth", pa.float64()), ("jaccard_aux", pa.float64()), ("n_tokens", pa.int64()),
        ("n_tokens_jaccard", pa.int64())]))
    write_parquet(out / LEAK_TABLE, table)
    plot_leak(table, out / LEAK_PLOT, k=config.k)
    mark_finished(out, {
        **identity, "rows": rows, "n_tokens": n_val, "n_tokens_jaccard": len(subsample),
        "n_layers": n_layers, "aux_layers": bundle.meta["layers"], "n_pcs": n_pcs,
        "layers": "0 = embedding output; l = output of block l-1; the last is before the final norm",
        "positions": "token row c*(T-1)+(t-1) (token t of context c) uses the residual stream at position t",
        "space": "aux target space: chi -> PC scores in the aux dir's PCA basis / target_scale",
    }, marker=LEAK_JSON)
    return table


def _remove_stale_scratch(out: Path) -> None:
    """Delete the scratch directories that killed leak checks left in ``out`` (a SIGKILL skips their
    removal): up to max_tokens x (L + 1) x hidden_size floats each."""
    if not out.is_dir():
        return  # nothing to remove, and no lock to take: a refused check must leave no directory behind
    hold(out)  # claim holds it already (a check holds it while its scratch exists: these are no live check's)
    for stale in out.glob(f"{_SCRATCH_PREFIX}*"):
        if stale.is_dir() and not stale.is_symlink():
            print(f"lit-susc: removing {stale}, left by a leak check that was stopped", flush=True)
            shutil.rmtree(stale)


def plot_leak(table: pa.Table, path: str | Path, k: int | None = None) -> Path:
    """Two panels by layer, ground truth and aux in each: linear CKA (left), Jaccard-kNN (right)."""
    columns = table.to_pydict()
    layer = np.asarray(columns["layer"])
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    panels = (("cka", "linear CKA"), ("jaccard", f"Jaccard-kNN (k = {k})" if k is not None else "Jaccard-kNN"))
    for ax, (key, title) in zip(axes, panels):
        ax.plot(layer, columns[f"{key}_ground_truth"], marker="o", label="ground-truth susceptibilities")
        ax.plot(layer, columns[f"{key}_aux"], marker="s", label="aux-predicted susceptibilities")
        ax.set_xlabel("layer (0 = embeddings)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{title} with activations")
        ax.set_title(title)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Activations vs susceptibilities by layer (aux validation tokens)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)
