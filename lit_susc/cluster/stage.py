"""The ``cluster`` stage: a susceptibility run directory in, cluster labels per token out.

    python run.py cluster --config runs/quickstart/pipeline/cluster.yaml
    python run.py cluster --input_dir runs/quickstart/sample --min_size 10
    python run.py cluster --config runs/quickstart/pipeline/cluster.yaml --devices 4     (4 processes, DDP)

(``runs/quickstart/pipeline/cluster.yaml``: configs/quickstart.yaml's ``cluster`` section with the
directories filled in, as the pipeline writes it.)

Reads the token vectors, clusters them (whiten -> k-NN graph -> ACL push -> sweep cuts) and
writes, under ``output_dir`` (default ``<input_dir>/clusters``)::

    labels.parquet     the token table plus ``label`` (-1 = unclustered)
    clusters.parquet   one row per cluster: label, size, conductance, volume, seed, round
    whitened.npy       float32 [tokens, m]: the rows the k-NN graph was built on (memory-mapped)
    graph/             the symmetric weighted k-NN graph, memory-mapped CSR (lit_susc.cluster.graph)
    whitening.safetensors  mean, components, variances of the PCA used for whitening
    config.json        the ClusterConfig
    summary.json       written last (timings, k-NN backend and recall, peak memory): present only
                       when the stage finished

The token vectors are chi (components x tokens) of a sampling run, or of an aux prediction its
predicted PC scores (float32, [n_pcs, tokens]), which with preprocessing 'whiten' give the same
distances as its predicted chi (an injective linear map of them: whitened, both are the same
points up to a rotation) with fewer columns to read; the other preprocessings read its chi.

Nothing of size N x (components) is held: the matrix is read by blocks of tokens twice for the
whitening's statistics (float64) and once more to write whitened.npy (float32, cluster.whiten);
the k-NN search reads that file memory-mapped and writes the [N, k] neighbour arrays to
memory-mapped scratch files, from which the graph is built in blocks (within
memory_budget_gib) and mapped again for the push and the sweeps. Memory is then O(N k) file
pages (which the kernel may drop) plus the token table and one block.

With devices > 1 the stage runs as ``devices`` processes (lightning Fabric, strategy "ddp";
the launcher re-runs the command line for ranks 1..), on one node: each rank reads its share of
the token blocks for the whitening's statistics, which are summed across ranks (all-reduce);
rank 0 writes whitened.npy, which every rank maps; the k-NN query rows are split into contiguous
blocks by rank (each searched against all points) and gathered into rank 0's neighbour arrays;
rank 0 builds the graph, which every rank maps; each round's seeds are split by rank and the
candidates all-gathered (clustering.py). Labels equal the single-process result; only rank 0
writes.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import numpy as np
import pyarrow as pa
import torch

from ..aux.bundle import PCA_FILE
from ..aux.pca import PCABasis
from ..config import check_number
from ..covariance import direction_reliability
from ..result import read_chi, read_chi_se, read_metadata, shard_remedy
from ..rundir import (
    claim,
    mark_finished,
    read_token_table,
    reading,
    remove_temporaries,
    scratch_memmap,
    stage_remedy,
    write_json,
    write_parquet,
    write_safetensors,
)
from ..statistics import MIN_VARIANCE_RATIO
from .clustering import DEFAULT_CONDUCTANCE_THRESHOLD, DEFAULT_MAX_PUSHES, DEFAULT_SEEDS_PER_ROUND, cluster_graph
from .graph import DEFAULT_MEMORY_BUDGET, build_graph, check_memory_budget, load_graph
from .knn import (
    DEFAULT_EXACT_BUDGET_S,
    DEFAULT_MIN_RECALL,
    DEFAULT_NPROBE,
    LOCAL_SCALE_NEIGHBOR,
    RECALL_SAMPLE,
    Backend,
    KnnReport,
    check_recall,
    knn,
    row_blocks,
)
from .whiten import WhitenInfo, fit_whitening, write_whitened


@dataclass
class ClusterConfig:
    """Settings of the cluster stage (spec defaults: k = 45, alpha = 1e-3, eps = 1e-7, min 20)."""

    input_dir: str
    """A finished susceptibility run directory (``run.py sample`` or ``aux predict``)."""
    output_dir: str | None = None
    """Where the stage writes; default ``<input_dir>/clusters``."""
    preprocessing: Literal["whiten", "standardize", "none"] = "whiten"
    """'whiten': PCA, every kept PC at unit variance (the spec); 'standardize': columns at unit
    variance and rows centred (earlier practice); 'none': raw chi."""
    min_variance_ratio: float = MIN_VARIANCE_RATIO
    """PCs with variance at most this fraction of the largest are dropped before whitening
    (default: lit_susc.statistics.MIN_VARIANCE_RATIO, 1e-6)."""
    min_pc_reliability: float = 0.0
    """Whitened PCs whose reliability (the share of their variance that is signal; cluster.whiten)
    is below this are dropped, so that noise PCs do not weigh as much as signal PCs. Needs chi's
    noise: a sample run's chi_se, or for aux-predicted chi the ground truth's, which aux predict
    records. 0 keeps every PC."""
    k: int = 45
    """Neighbours per token in the k-NN graph (before symmetrisation)."""
    kernel: Literal["gaussian_local", "gaussian", "unweighted"] = "gaussian_local"
    """Edge weights: exp(-d_ij^2 / (s_i s_j)) with s_i the distance to i's 7th neighbour
    (default), one global Gaussian scale, or all 1."""
    backend: Backend = "auto"
    """k-NN engine (lit_susc.cluster.knn): exact 'keops', 'torch', 'sklearn', 'faiss', or the approximate
    'faiss_ivf'. 'auto' searches exactly (KeOps on CUDA, faiss on CPU) while the exact search's
    estimated time is within exact_budget_s, and with faiss_ivf beyond; it prints which and why."""
    nprobe: int = DEFAULT_NPROBE
    """faiss_ivf's k-means cells scanned per query (of nlist ~ 4 sqrt(N)), its quality knob: raise it
    when its recall is too low (its search time grows about linearly with it)."""
    min_recall: float = DEFAULT_MIN_RECALL
    """faiss_ivf measures its recall@k against exact search on 1000 sampled tokens (per rank) and
    stops the stage when it is below this."""
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S
    """With backend 'auto': the estimated exact-search time (3 N^2 d flops at this machine's rate)
    above which the approximate search is used."""
    alpha: float = 1e-3
    """Teleport probability of the LAZY walk (design.md); the plain walk's is 2a/(1+a)."""
    eps: float = 1e-7
    """Push tolerance: push while some residual r(u) >= eps * d(u)."""
    max_pushes: int = DEFAULT_MAX_PUSHES
    """Cap on pushes per seed, so one seed on a dense graph cannot run for ever."""
    min_size: int = 20
    """Smallest cluster reported (tokens)."""
    max_fraction: float = 0.1
    """Largest share of the graph a cluster may take."""
    conductance_threshold: float = DEFAULT_CONDUCTANCE_THRESHOLD
    """A best prefix is a cluster only if its conductance is below this."""
    seeds_per_round: int = DEFAULT_SEEDS_PER_ROUND
    """Seeds explored at once (the spec ran seeds in parallel to scale)."""
    seed: int = 0
    """Seeds the choice of seeds: results are reproducible from it."""
    devices: int = 1
    """Processes (ranks) on this node; > 1 runs DDP via lightning Fabric: k-NN query rows and
    each round's seeds are split by rank. Does not change the result."""
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    """Where the k-NN search runs ('auto': CUDA if available). With devices > 1 on 'gpu', one
    GPU per rank; on 'cpu' the ranks share the CPU cores (gloo backend)."""
    memory_budget_gib: float = DEFAULT_MEMORY_BUDGET / 2**30
    """Working memory (GiB) of the blockwise passes: the token blocks read for whitening and the
    k-NN graph's build (lit_susc.cluster.graph: 32 bytes per token, then blocks and reverse lists).
    The whitened matrix, neighbour arrays and graph are memory-mapped files besides it. One too
    small for one block stops the stage before it reads anything. Does not change the result."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field outside its range (NaN and inf included), as the
        YAML spells it, so that a bad setting fails before the stage reads or writes anything
        (construction calls it; so does the stage, as fields can be set afterwards)."""
        for name in ("k", "max_pushes", "min_size", "seeds_per_round", "devices", "nprobe"):
            check_number(f"cluster.{name}", getattr(self, name), low=1, integer=True)
        check_number("cluster.seed", self.seed, low=0, integer=True)
        check_number("cluster.eps", self.eps, low=0, strict=True)
        check_number("cluster.exact_budget_s", self.exact_budget_s, low=0)
        check_number("cluster.memory_budget_gib", self.memory_budget_gib, low=0, strict=True)
        _check_fraction("cluster.min_recall", self.min_recall, one=True, why="a recall lies in (0, 1]")
        _check_fraction("cluster.alpha", self.alpha, why="it is the lazy walk's teleport probability")
        _check_fraction("cluster.max_fraction", self.max_fraction, one=True)
        _check_fraction("cluster.conductance_threshold", self.conductance_threshold, one=True,
                        why="a cluster's conductance, which lies in [0, 1], must be below it")
        # 1 would drop every PC (or every whitened PC) and leave nothing to cluster
        _check_fraction("cluster.min_variance_ratio", self.min_variance_ratio, zero=True)
        _check_fraction("cluster.min_pc_reliability", self.min_pc_reliability, zero=True)
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"cluster.{name} must be one of {', '.join(map(repr, allowed))}, got "
                                 f"{getattr(self, name)!r}")
        if self.kernel != "unweighted" and self.k < LOCAL_SCALE_NEIGHBOR:
            raise ValueError(f"cluster.k must be >= {LOCAL_SCALE_NEIGHBOR} with kernel {self.kernel!r}, got {self.k}: a "
                             f"point's scale is its distance to its {LOCAL_SCALE_NEIGHBOR}th neighbour; raise k or use "
                             "kernel: unweighted")

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir) if self.output_dir else Path(self.input_dir) / "clusters"

    @property
    def memory_budget(self) -> int:
        """memory_budget_gib in bytes."""
        return int(self.memory_budget_gib * 2**30)


_CHOICES = {name: get_args(hint) for name, hint in get_type_hints(ClusterConfig).items() if get_origin(hint) is Literal}
"""The values of ClusterConfig's Literal fields (jsonargparse checks them on the command line; validate, in the API)."""


def _check_fraction(name: str, value, *, zero: bool = False, one: bool = False, why: str = "") -> None:
    """``check_number`` with 1 as an upper bound: a finite number above 0 and below 1, with ``zero``
    and ``one`` including those ends; the message names the setting ``name`` and the bound it broke."""
    check_number(name, value, low=0, strict=not zero, why=why)
    if value > 1 or (value == 1 and not one):
        raise ValueError(f"{name} must be a finite number {'<=' if one else '<'} 1, got {value!r}"
                         + (f": {why}" if why else ""))


CONFIG_FILE = "config.json"
"""The ClusterConfig, written with the outputs: a finished directory's identity."""
WHITENED_FILE = "whitened.npy"
GRAPH_DIR = "graph"
KNN_SCRATCH = ("knn_indices.npy", "knn_distances.npy")
"""The [N, k] neighbour arrays' scratch files (rank 0's, while the graph is built from them)."""
OUTPUTS = (WHITENED_FILE, GRAPH_DIR, *KNN_SCRATCH, "whitening.safetensors", "labels.parquet", "clusters.parquet")
"""What the stage writes before its config.json and summary.json: all that an unfinished directory
of its own may hold (any other entry is a user's, and the directory is refused)."""
# how the stage is executed, not what it computes: a finished clustering is reused across them
_EXECUTION_FIELDS = ("devices", "accelerator", "memory_budget_gib")
BLOCK_BYTES_PER_VALUE = 48
"""Working memory per value of a token block read for whitening: the float64 block, its centred copy,
the scores and the float32 row written (about six 8-byte values per input value)."""
MAX_BLOCK_TOKENS = 1 << 16


def _result_settings(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _EXECUTION_FIELDS}


def _launch(config: ClusterConfig):
    """Start the DDP processes (rank 0 is this one; the others re-run sys.argv)."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=config.accelerator, devices=config.devices, strategy="ddp")
    fabric.launch()
    return fabric


def _knn_device(config: ClusterConfig, fabric) -> str | torch.device | None:
    if fabric is not None:
        return fabric.device
    return {"auto": None, "cpu": "cpu", "gpu": "cuda", "cuda": "cuda"}[config.accelerator]


def _gather_rows(fabric, local: np.ndarray, blocks: list[tuple[int, int]], out: np.ndarray | None,
                 budget: int = 1 << 26) -> None:
    """Every rank's row block of an [N, k] array, stored in ``out`` (rank 0's; None on the ranks that
    only send). Blocks are padded to one length and gathered in pieces of ~budget bytes in all, so a
    device buffer stays small (an all-gather: NCCL's gather is not available everywhere)."""
    world, k = len(blocks), local.shape[1]
    longest = max(b - a for a, b in blocks)
    step = max(1, budget // (world * k * local.itemsize))
    for c in range(0, longest, step):
        piece = np.zeros((step, k), local.dtype)
        mine = local[c:c + step]
        piece[:len(mine)] = mine
        t = torch.from_numpy(piece).to(fabric.device)  # NCCL gathers device tensors only
        got = [torch.empty_like(t) for _ in range(world)]
        torch.distributed.all_gather(got, t)
        for r, (a, b) in enumerate(blocks):
            m = min(step, b - a - c)
            if m > 0 and out is not None:
                out[a + c:a + c + m] = got[r][:m].cpu().numpy()


def _threads_per_rank(devices: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // devices)


def _rank_threads(devices: int):
    """One rank's share of the CPU threads (torch, OpenMP/BLAS of numpy and scikit-learn)."""
    from threadpoolctl import threadpool_limits

    n = _threads_per_rank(devices)
    torch.set_num_threads(n)
    return threadpool_limits(limits=n)


@dataclass
class TokenVectors:
    """The vectors the stage clusters, read by blocks of tokens: chi of a sampling run, or of an aux
    prediction its PC scores (``space`` 'pcs', with preprocessing 'whiten'; a directory without them
    is read as chi) or its chi."""

    run_dir: Path
    meta: dict
    space: Literal["chi", "pcs"]
    tokens: int
    width: int
    block: int
    """Tokens per block."""

    @classmethod
    def of(cls, run_dir: Path, meta: dict, config: ClusterConfig) -> TokenVectors:
        space = "pcs" if "pcs" in meta and config.preprocessing == "whiten" else "chi"
        shards = meta["pcs"]["shards"] if space == "pcs" else meta["shards"]
        width = meta["pcs"]["n_pcs"] if space == "pcs" else len(meta["components"])
        block = max(1, min(MAX_BLOCK_TOKENS, config.memory_budget // (BLOCK_BYTES_PER_VALUE * width)))
        return cls(run_dir, meta, space, shards[-1]["stop"] if shards else 0, width, block)

    def blocks(self, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Rows [start, stop) as float64 [n, width] blocks; ValueError at a non-finite value."""
        from ..aux.predict import read_pcs

        stop = self.tokens if stop is None else stop
        for a in range(start, stop, self.block):
            b = min(a + self.block, stop)
            x = (read_pcs(self.run_dir, a, b) if self.space == "pcs" else read_chi(self.run_dir, a, b)).T.double()
            if not torch.isfinite(x).all():
                raise ValueError(f"the {'predicted PC scores' if self.space == 'pcs' else 'chi'} in {self.run_dir} hold "
                                 f"non-finite values (tokens {a}..{b - 1}); rerun or repair the stage that wrote them")
            yield x.numpy()


def run_cluster_stage(config: ClusterConfig, progress: bool = True) -> Path:
    """Cluster the tokens of ``config.input_dir``; returns the output directory."""
    config.validate()
    run_dir, out = Path(config.input_dir), config.resolved_output_dir()
    meta = read_metadata(run_dir)
    if claim(out, _result_settings(asdict(config)), record=CONFIG_FILE, view=_result_settings,
             other="another clustering", resumable=False, known=OUTPUTS) == "finished":
        print(f"lit-susc: {out} already holds this clustering; nothing to do.")
        return out
    # a prediction's token shards, or tokens.parquet
    tokens = read_token_table(run_dir, meta.get("tokens"), shard_remedy(run_dir, meta))
    vectors = TokenVectors.of(run_dir, meta, config)
    if tokens.num_rows != vectors.tokens:
        raise ValueError(f"the token table of {run_dir} has {tokens.num_rows} rows but its {vectors.space} has "
                         f"{vectors.tokens} tokens: the matrix and its token table do not match")
    if vectors.tokens <= config.k:
        raise ValueError(f"{vectors.tokens} tokens is too few for a {config.k}-nearest-neighbour graph; lower k")
    try:
        check_memory_budget(vectors.tokens, config.k, config.memory_budget)
    except ValueError as err:
        raise ValueError(f"cluster.memory_budget_gib={config.memory_budget_gib:g} is too small: {err}") from None
    if config.min_pc_reliability > 0 and config.preprocessing != "whiten":
        raise ValueError("cluster.min_pc_reliability applies to PCs: use preprocessing: whiten")
    noise = _chi_noise(vectors) if config.min_pc_reliability > 0 else None
    if config.devices > 1:  # a rank that stopped alone at a bad block would leave the others waiting in a reduce
        for _ in vectors.blocks():
            pass
    # start the other ranks only once the input is known good; they re-run this command line,
    # so each reads and checks the same input before joining
    fabric = _launch(config) if config.devices > 1 else None
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    if out.exists() and rank == 0:
        remove_temporaries(out)  # a killed run's scratch (claim holds the directory)
    try:
        with _rank_threads(config.devices) if fabric is not None else nullcontext():
            labels, stats, info, timings, search = _compute(config, vectors, out, fabric, rank, world,
                                                            progress and rank == 0, noise)
        if rank == 0:
            _write_outputs(config, out, meta, tokens, labels, stats, info, timings, world, search)
    finally:
        if fabric is not None:
            fabric.barrier()  # the other ranks return once rank 0 has written everything
    return out


def _chi_noise(vectors: TokenVectors) -> tuple[np.ndarray, PCABasis | None]:
    """(m_j = mean_t chi_se[j]^2, the ground truth's PCA or None when chi is the ground truth itself)."""
    run_dir, meta = vectors.run_dir, vectors.meta
    if meta.get("source") == "aux":
        if "mean_se_sq" not in meta:
            raise ValueError(f"cluster.min_pc_reliability needs the noise of chi, but {run_dir} was predicted by an aux "
                             "model fitted on a run without chi_se; refit the aux model on a current sample run or "
                             "set min_pc_reliability: 0")
        with reading(run_dir / PCA_FILE, stage_remedy(run_dir)) as path:
            truth = PCABasis.load(path)
        return np.asarray(meta["mean_se_sq"]), truth
    total = np.zeros(vectors.width)
    for a in range(0, vectors.tokens, vectors.block):
        total += read_chi_se(run_dir, a, min(a + vectors.block, vectors.tokens)).square().sum(1).numpy()
    return total / vectors.tokens, None


def pc_reliabilities(info: WhitenInfo, noise: tuple[np.ndarray, PCABasis | None], space: str) -> np.ndarray:
    """The reliability [m] of each whitened PC of ``info`` (cluster.whiten), from ``noise`` = (m_j, the
    ground truth's PCA or None when chi is the ground truth; ``_chi_noise``).

    A whitened PC u is the linear function z = a . (chi - mu) of chi: a = u for PCs of chi; for PCs
    of an aux prediction's PC scores p = ((chi - mu) / s) V^T (``space`` 'pcs'; aux.pca), a = (u V) / s,
    whose ground-truth variance a^T C a is u Lambda u^T (V's rows are the truth's PCs, Lambda their
    variances). Without standardisation (s = 1) the PCs of chi are those of p turned by V, and the
    two spaces give the same reliabilities."""
    mean_se_sq, truth = noise
    if space == "pcs":
        directions = (info.components @ truth.components.numpy()) / truth.scale.numpy()
        signal = np.square(info.components) @ truth.variances.numpy()
    elif truth is None:  # chi is the ground truth: v^T C v is the PC's own variance
        directions, signal = info.components, info.variances
    else:  # v^T C v with C the ground truth's covariance, from its PCA (in units of chi)
        basis = truth.components.numpy() * truth.scale.numpy()
        directions, signal = info.components, np.square(info.components @ basis.T) @ truth.variances.numpy()
    return direction_reliability(torch.from_numpy(directions), torch.as_tensor(mean_se_sq),
                                 torch.as_tensor(signal)).numpy()


def _reliable_pcs(info: WhitenInfo, noise, threshold: float, space: str) -> WhitenInfo:
    """The whitening without its PCs whose reliability is below ``threshold``."""
    reliability = pc_reliabilities(info, noise, space)
    keep = reliability >= threshold
    if not keep.any():
        raise ValueError(f"no whitened PC has a reliability of at least {threshold} (largest {reliability.max():.2f}); "
                         "lower cluster.min_pc_reliability or sample chi with more draws")
    print(f"lit-susc: whitening keeps {int(keep.sum())} of {len(keep)} PCs with reliability >= {threshold} "
          f"(reliabilities {', '.join(f'{r:.2f}' for r in reliability[:12])}{', ...' if len(keep) > 12 else ''})")
    return info.keep(keep)


def _all_reduce(fabric):
    def reduce(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, np.float64)).to(fabric.device)
        torch.distributed.all_reduce(t)
        return t.cpu().numpy()

    return reduce


def _whiten(config: ClusterConfig, vectors: TokenVectors, out: Path, fabric, rank: int, world: int,
            noise) -> tuple[np.ndarray, WhitenInfo]:
    """Fit the preprocessing on every rank's share of the token blocks (summed across ranks), write
    whitened.npy on rank 0, and map it read-only on every rank: (Z [N, m] float32, the map)."""
    if config.preprocessing == "none":
        info = WhitenInfo.identity(vectors.width)
    else:
        a, b = row_blocks(vectors.tokens, world)[rank]
        info, _ = fit_whitening(lambda: vectors.blocks(a, b), mode=config.preprocessing,
                                min_variance_ratio=config.min_variance_ratio,
                                reduce=_all_reduce(fabric) if fabric is not None else None)
        if noise is not None:
            info = _reliable_pcs(info, noise, config.min_pc_reliability, vectors.space)
    path = out / WHITENED_FILE
    if rank == 0:
        write_whitened(vectors.blocks, info, path, vectors.tokens)
    if fabric is not None:
        fabric.barrier()
    with reading(path, f"delete {out} and run the cluster stage again") as checked:
        return np.load(checked, mmap_mode="r"), info


def _graph(config: ClusterConfig, Z: np.ndarray, out: Path, fabric, rank: int, world: int,
           timings: dict) -> dict:
    """The k-NN search of Z's rows into rank 0's scratch neighbour arrays, the graph directory built
    from them by rank 0; returns the search's backend and recall."""
    n, k = Z.shape[0], config.k
    search = {"device": _knn_device(config, fabric), "nprobe": config.nprobe,
              "exact_budget_s": config.exact_budget_s, "return_report": True, "verbose": rank == 0}
    t = time.perf_counter()
    with ExitStack() as scratch:
        arrays = None
        if rank == 0:
            arrays = tuple(scratch.enter_context(scratch_memmap(out / name, dtype, (n, k)))
                           for name, dtype in zip(KNN_SCRATCH, (np.int32 if n < 2**31 else np.int64, np.float64)))
        if world == 1:
            *_, report = knn(Z, k, config.backend, min_recall=config.min_recall, out=arrays, **search)
            recall = report.recall
        else:
            blocks = row_blocks(n, world)
            a, b = blocks[rank]
            # the recall floor is checked on all ranks' samples pooled, after the gather, so that the
            # ranks stop together (one rank raising alone would leave the others waiting in the gather)
            idx, dist, report = knn(Z, k, config.backend, rows=slice(a, b), min_recall=0.0, **search)
            for local, whole in zip((idx, dist), arrays or (None, None)):
                _gather_rows(fabric, local, blocks, whole)
            del idx, dist
            recall = _pooled_recall(fabric, report, config, world)
        timings["knn_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if rank == 0:
            build_graph(*arrays, out / GRAPH_DIR, kernel=config.kernel, memory_budget=config.memory_budget)
    if fabric is not None:
        fabric.barrier()
    timings["graph_s"] = time.perf_counter() - t
    return {"knn_backend": report.backend, "knn_recall": recall}


def _compute(config: ClusterConfig, vectors: TokenVectors, out: Path, fabric, rank: int, world: int, progress: bool,
             noise=None):
    timings = {}
    t = time.perf_counter()
    Z, info = _whiten(config, vectors, out, fabric, rank, world, noise)
    timings["whiten_s"] = time.perf_counter() - t
    search = _graph(config, Z, out, fabric, rank, world, timings)
    del Z
    graph = load_graph(out / GRAPH_DIR, f"delete {out} and run the cluster stage again")
    t = time.perf_counter()
    labels, stats = cluster_graph(graph, config.alpha, config.eps, config.min_size, config.seed,
                                  max_fraction=config.max_fraction,
                                  conductance_threshold=config.conductance_threshold,
                                  seeds_per_round=config.seeds_per_round, max_pushes=config.max_pushes,
                                  n_threads=_threads_per_rank(config.devices) if world > 1 else None,
                                  progress=progress, rank=rank, world_size=world)
    timings["cluster_s"] = time.perf_counter() - t
    return labels, stats, info, timings, search


def _pooled_recall(fabric, report: KnnReport, config: ClusterConfig, world: int) -> float | None:
    """recall@k over every rank's sampled queries, sum_r recall_r n_r / sum_r n_r (None for an exact
    backend, which all ranks resolve alike), checked against min_recall on every rank."""
    if report.recall is None:
        return None
    n = len(report.sampled)  # 0 on a rank with no query rows (N < ranks), whose recall is NaN
    total = torch.tensor([report.recall * n if n else 0.0, n], dtype=torch.float64, device=fabric.device)
    torch.distributed.all_reduce(total)
    recall, queries = float(total[0] / total[1]), int(total[1])
    if fabric.global_rank == 0:
        print(f"lit-susc: k-NN: {report.backend}, recall@{config.k} = {recall:.3f} on {queries} sampled queries "
              f"of {world} ranks (up to {RECALL_SAMPLE} each)", flush=True)
    check_recall(recall, config.min_recall, k=config.k, queries=queries, backend=report.backend,
                 nprobe=config.nprobe)
    return recall


def _peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _write_outputs(config, out, meta, tokens, labels, stats, info, timings, world, search) -> None:
    if info.mode != "none":
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in
                   (("mean", info.mean), ("components", info.components), ("variances", info.variances),
                    ("scale", info.scale))
                   if v is not None}
        write_safetensors(out / "whitening.safetensors", tensors)
    write_parquet(out / "labels.parquet", tokens.append_column("label", pa.array(labels.astype(np.int64))))
    columns = ["label", "size", "conductance", "volume", "seed_node", "round"]
    write_parquet(out / "clusters.parquet", pa.table({c: [s[c] for s in stats] for c in columns}))
    write_json(out / CONFIG_FILE, asdict(config))
    clustered = int((labels >= 0).sum())
    mark_finished(out, {
        "tokens": len(labels), "clusters": len(stats), "clustered_tokens": clustered,
        "source": meta.get("source", "sampling"), "ranks": world,
        **{k: round(v, 3) for k, v in timings.items()},
        # the backend that ran ("auto" resolved) and, for an approximate one, its measured recall@k
        "knn_backend": search["knn_backend"],
        "knn_recall": None if search["knn_recall"] is None else round(search["knn_recall"], 4),
        "peak_rss_gib": round(_peak_rss_gib(), 3),
    })
    print(f"lit-susc: {len(stats)} clusters covering {clustered} of {len(labels)} tokens written to {out.resolve()}\n"
          f"  labels: pyarrow.parquet.read_table('{out / 'labels.parquet'}')   (label -1 = unclustered)")


def main(argv: list[str] | None = None) -> Path:
    from ..stage_cli import parse_settings

    return run_cluster_stage(parse_settings(ClusterConfig, argv, "lit-susc cluster", __doc__))
