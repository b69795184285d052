"""The numbers the report's pages show: cluster profiles, frequent tokens, token purity and the
token-identity baseline, example tokens in context, and which components' chi is reliable enough
to read.

chi is read in blocks of tokens, once, to get every cluster's mean profile, so it never has to
fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..result import read_chi, read_metadata
from ..statistics import Moments
from .config import ReportConfig
from .inputs import CLUSTER_COLUMNS, Inputs

IDENTITY_PURITY = 0.8
"""A cluster whose purity is at least this is counted as one token type (``TokenIdentity``)."""


@dataclass
class Example:
    """One example token in its context, as far as the window reaches within that context."""

    row: int
    """Its row in the token table (labels.parquet), which is also its node in the k-NN graph."""
    label: int
    """Its cluster."""
    document: str | None
    """Name of its document (None when the token table has no ``document`` column)."""
    doc_id: int | None
    """Index of its document (None without an integer ``doc_id`` column): names its page, documents/<doc_id>.html."""
    position: int | None
    """Its position in its document's token stream (None without a ``position`` column)."""
    left: list[str]
    """Token texts before it, in reading order."""
    token: str
    right: list[str]
    """Token texts after it, in reading order."""
    more_left: bool
    """The context goes on before ``left``."""
    more_right: bool
    """The context goes on after ``right``."""

    @property
    def origin(self) -> str:
        """Where the token is, as text: ``document:position`` (as much as the token table records),
        else ``row <row>``."""
        parts = [str(v) for v in (self.document, self.position) if v is not None]
        return ":".join(parts) if parts else f"row {self.row}"


@dataclass
class Cluster:
    """One cluster as its page shows it."""

    label: int
    size: int
    conductance: float
    volume: float
    seed_node: int
    round: int
    profile: np.ndarray
    """[n_components]: mean over the cluster's tokens (ReportConfig.profile)."""
    top_tokens: list[tuple[str, int]]
    """(token, count), most frequent first."""
    examples: list[Example]
    """Example tokens in reading order (ReportConfig.examples_per_cluster of them at most)."""
    top_token: str
    """Its most frequent token text (ties: the first in text order, as in ``top_tokens``)."""
    top_count: int
    """Its tokens whose text is ``top_token``: max_t n_ct."""
    top_occurrences: int
    """Rows of the whole token table (clustered or not) whose text is ``top_token``: N_top."""
    seed_token: str
    """Text of the seed node's token (row ``seed_node`` of the token table)."""

    @property
    def purity(self) -> float:
        """Share of its tokens that are its most frequent token: max_t n_ct / n_c (``TokenIdentity``)."""
        return self.top_count / self.size

    @property
    def coverage(self) -> float:
        """Share of the occurrences of ``top_token`` in the token table that are in this cluster:
        n_c,top / N_top. Purity 1 with coverage 1 is exactly that token type; with low coverage
        the cluster picks some of the token's occurrences, which token identity alone cannot."""
        return self.top_count / self.top_occurrences


@dataclass
class TokenIdentity:
    """How far the clusters are token types: the token-identity baseline of the index page.

    With n_ct the tokens of cluster c whose text is t (by token text: ids that decode to the same
    text count as one token) and n_c = sum_t n_ct:

        purity(c)        = max_t n_ct / n_c
        mean_purity      = sum_c max_t n_ct / sum_c n_c      (the share of clustered tokens that are
                                                              their cluster's most frequent token)
        shuffled_purity  = mean_purity of the same cluster sizes with the labels permuted at random
                           among the clustered tokens (seeded): a clustering blind to token text
        identity_share   = #{c : purity(c) >= IDENTITY_PURITY} / #clusters
        identity_score   = (mean_purity - shuffled_purity) / (1 - shuffled_purity)

    A clustering by token identity alone has mean_purity = 1 and identity_share = 1 (score 1);
    one blind to token text has mean_purity = shuffled_purity (score 0 in expectation).
    """

    n_clusters: int
    clustered_tokens: int
    mean_purity: float
    shuffled_purity: float
    identity_clusters: int
    """Clusters of purity >= IDENTITY_PURITY."""

    @property
    def identity_share(self) -> float:
        return self.identity_clusters / self.n_clusters

    @property
    def identity_score(self) -> float:
        """Where mean_purity lies from a token-blind clustering (0) to token identity (1):
        (mean_purity - shuffled_purity) / (1 - shuffled_purity); NaN when shuffled_purity is 1
        (every clustered token has the same text, so nothing tells the two apart)."""
        gap = 1.0 - self.shuffled_purity
        return (self.mean_purity - self.shuffled_purity) / gap if gap > 0 else float("nan")


def summarize_clusters(inputs: Inputs, config: ReportConfig) -> tuple[list[Cluster], TokenIdentity | None]:
    """Every cluster's profile, frequent tokens, purity and examples in context, in label order;
    and the clustering's ``TokenIdentity`` (None without clusters)."""
    table = inputs.clusters
    n_clusters = table.num_rows
    if n_clusters == 0:
        return [], None
    labels = inputs.labels.column("label").to_numpy()
    cluster_labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    # position of each token's cluster in ``cluster_labels`` (sorted), -1 for unclustered tokens
    index = np.searchsorted(cluster_labels, labels)
    index[labels < 0] = -1
    sizes = np.asarray(table.column("size").to_pylist(), dtype=np.float64)
    profiles = cluster_profiles(inputs.input_dir, index, sizes, config)
    top = frequent_tokens(inputs.labels, config.top_tokens)
    types, texts = token_types(inputs.labels)
    top_count, top_type = top_token_counts(types, index, n_clusters)
    occurrences = np.bincount(types, minlength=len(texts))
    identity = token_identity(types, index, top_count, seed=config.example_seed)
    # token rows grouped by cluster, in row order: the unclustered (-1) first, then cluster 0, 1, ...
    members = np.split(np.argsort(index, kind="stable"), np.cumsum(np.bincount(index + 1, minlength=n_clusters + 1)))
    columns = {c: table.column(c).to_pylist() for c in CLUSTER_COLUMNS}
    examples = cluster_examples(inputs.labels, members[1:n_clusters + 1], cluster_labels, config)
    seeds = inputs.labels.column("token").take(pa.array(columns["seed_node"], pa.int64())).to_pylist()
    clusters = [Cluster(label=int(columns["label"][i]), size=int(columns["size"][i]),
                        conductance=float(columns["conductance"][i]), volume=float(columns["volume"][i]),
                        seed_node=int(columns["seed_node"][i]), round=int(columns["round"][i]), profile=profiles[i],
                        top_tokens=top.get(int(cluster_labels[i]), []), examples=examples[i],
                        top_token=texts[top_type[i]], top_count=int(top_count[i]),
                        top_occurrences=int(occurrences[top_type[i]]), seed_token=seeds[i])
                for i in range(n_clusters)]
    return clusters, identity


# ----------------------------------------------------------------------------- profiles


def cluster_profiles(run_dir: Path, index: np.ndarray, sizes: np.ndarray, config: ReportConfig) -> np.ndarray:
    """[n_clusters, n_components]: each cluster's mean chi, z-scored per component unless 'raw'.

    One pass over chi in blocks: per-cluster sums, and each component's mean and variance over
    all tokens (``lit_susc.statistics.Moments``, centred on the first token so that a component
    whose mean is far above its spread keeps its variance). The mean of z-scores is (cluster mean - mean) / std; a
    component with no spread has no z-score (NaN, drawn grey).
    """
    n_tokens, n_components = len(index), len(read_metadata(run_dir)["components"])
    idx = torch.from_numpy(index)
    sums = torch.zeros(len(sizes), n_components, dtype=torch.float64)
    moments = Moments(center="first")
    for a in range(0, n_tokens, config.chi_block_tokens):
        x = read_chi(run_dir, a, a + config.chi_block_tokens).to(torch.float64)  # [components, b]
        if not torch.isfinite(x).all():
            bad = a + int((~torch.isfinite(x)).any(0).nonzero()[0])
            raise ValueError(f"chi of {run_dir} is not finite at token {bad}; repair the run before reporting on it")
        moments.update(x.T)
        mine = idx[a:a + x.shape[1]]
        keep = mine >= 0
        sums.index_add_(0, mine[keep], x.T[keep])
    raw = sums / torch.from_numpy(sizes)[:, None]
    if config.profile == "raw":
        return raw.numpy()
    std = moments.std(ddof=0)
    z = (raw - moments.mean()) / std
    z[:, std == 0] = float("nan")
    return z.numpy()


# ----------------------------------------------------------------------------- tokens


def frequent_tokens(labels: pa.Table, top: int) -> dict[int, list[tuple[str, int]]]:
    """label -> the ``top`` most frequent tokens of that cluster with their counts (ties: by token)."""
    clustered = labels.select(["label", "token"]).filter(pc.greater_equal(labels.column("label"), 0))
    counts = clustered.group_by(["label", "token"]).aggregate([([], "count_all")])
    counts = counts.sort_by([("label", "ascending"), ("count_all", "descending"), ("token", "ascending")])
    out: dict[int, list[tuple[str, int]]] = {}
    for label, token, n in zip(*(counts.column(c).to_pylist() for c in ("label", "token", "count_all"))):
        mine = out.setdefault(int(label), [])
        if len(mine) < top:
            mine.append((token, int(n)))
    return out


def token_types(labels: pa.Table) -> tuple[np.ndarray, list[str]]:
    """(type of each row [N] int64, the type texts): rows of equal token text share a type, and
    types are numbered in text order (arrow's, as ``frequent_tokens`` sorts), so the smallest
    type of a tie is the token ``frequent_tokens`` lists first."""
    encoded = pc.dictionary_encode(labels.column("token").combine_chunks())
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy()], encoded.dictionary.take(pa.array(order)).to_pylist()


def top_token_counts(types: np.ndarray, index: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(max_t n_ct, the t attaining it) per cluster, [n_clusters] each, ties to the smallest type.

    ``types``: each row's token type (``token_types``); ``index``: each row's cluster in
    0..n_clusters-1, or -1 (unclustered, not counted). One sort of the clustered rows' (cluster,
    type) keys: O(N log N), whatever the number of clusters and types.
    """
    mine = index >= 0
    n_types = int(types.max()) + 1 if types.size else 1
    keys, counts = np.unique(index[mine] * n_types + types[mine], return_counts=True)
    cluster, kind = keys // n_types, keys % n_types
    # per cluster the largest count first, among equal counts the smallest type
    order = np.lexsort((kind, -counts, cluster))
    first = order[np.unique(cluster[order], return_index=True)[1]]
    top_count, top_type = np.zeros(n_clusters, np.int64), np.zeros(n_clusters, np.int64)
    top_count[cluster[first]], top_type[cluster[first]] = counts[first], kind[first]
    return top_count, top_type


def token_identity(types: np.ndarray, index: np.ndarray, top_count: np.ndarray, seed: int) -> TokenIdentity:
    """The ``TokenIdentity`` of a clustering (its docstring gives the formulas).

    ``top_count``: max_t n_ct per cluster (``top_token_counts``); the shuffled clustering is one
    permutation drawn with ``numpy.random.default_rng(seed)``, so a rebuilt report shows the same number.
    """
    mine = index >= 0
    sizes = np.bincount(index[mine], minlength=len(top_count))
    shuffled = index[mine][np.random.default_rng(seed).permutation(int(mine.sum()))]
    shuffled_top, _ = top_token_counts(types[mine], shuffled, len(top_count))
    total = int(sizes.sum())
    return TokenIdentity(n_clusters=len(top_count), clustered_tokens=total,
                         mean_purity=float(top_count.sum() / total), shuffled_purity=float(shuffled_top.sum() / total),
                         identity_clusters=int((top_count >= IDENTITY_PURITY * sizes).sum()))


def context_windows(context: np.ndarray, offset: np.ndarray, left: int, right: int) -> tuple[np.ndarray, np.ndarray]:
    """How far each row's window reaches within its context: (rows before it, rows after it).

    ``context`` and ``offset`` are [E, left + right + 3]: the rows from row - left - 1 to
    row + right + 1 of each example (the centre at column left + 1; rows past the table's ends
    hold -1). A row belongs to the example's context when its context id is the centre's and
    its offset differs from the centre's by its row distance: that holds within a context
    whatever the numbering of contexts (global, as aux predict writes, or restarting per shard).
    The extra row on each side tells whether the context goes on past the window (returned
    counts of left + 1 or right + 1 mean it does).
    """
    centre = left + 1
    span = np.arange(-centre, right + 2)
    same = (context == context[:, [centre]]) & (offset - offset[:, [centre]] == span) & (offset >= 0)
    before = np.cumprod(same[:, centre - 1::-1], axis=1).sum(1)
    after = np.cumprod(same[:, centre + 1:], axis=1).sum(1)
    return before, after


def cluster_examples(labels: pa.Table, members: list[np.ndarray], cluster_labels: np.ndarray,
                     config: ReportConfig) -> list[list[Example]]:
    """Each cluster's example tokens in context: ``examples_per_cluster`` of its token rows chosen
    at random (seeded by ``example_seed`` and the label, so a rebuilt report shows the same ones),
    in reading order."""
    chosen = []
    for label, rows in zip(cluster_labels, members):
        rng = np.random.default_rng([config.example_seed, int(label)])
        k = min(config.examples_per_cluster, len(rows))
        chosen.append(np.sort(rng.choice(rows, size=k, replace=False)) if k < len(rows) else np.sort(rows))
    flat = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    if flat.size == 0:
        return [[] for _ in members]
    left, right, n = config.context_left, config.context_right, labels.num_rows
    cand = flat[:, None] + np.arange(-left - 1, right + 2)
    inside = (cand >= 0) & (cand < n)
    take = pa.array(np.clip(cand, 0, n - 1).ravel())
    gather = {c: labels.column(c).take(take).to_numpy(zero_copy_only=False).reshape(cand.shape)
              for c in ("context", "offset")}
    context = np.where(inside, gather["context"], -1)
    offset = np.where(inside, gather["offset"], -1)
    before, after = context_windows(context, offset, left, right)
    # only the rows shown are read as text
    needed = np.unique(np.concatenate([np.arange(r - min(b, left), r + min(a, right) + 1)
                                       for r, b, a in zip(flat, before, after)]))
    text = dict(zip(needed.tolist(), labels.column("token").take(pa.array(needed)).to_pylist()))
    # doc_id names a page file, so only an integer one is used
    recorded = [c for c in ("document", "doc_id", "position") if c in labels.column_names
                and (c != "doc_id" or pa.types.is_integer(labels.schema.field(c).type))]
    where = {c: dict(zip(flat.tolist(), labels.column(c).take(pa.array(flat)).to_pylist())) for c in recorded}
    out, pos = [], 0
    for label, rows in zip(cluster_labels.tolist(), chosen):
        examples = []
        for r in rows.tolist():
            b, a = int(before[pos]), int(after[pos])
            pos += 1
            examples.append(Example(
                row=r, label=label,
                **{c: where[c][r] if c in where else None for c in ("document", "doc_id", "position")},
                left=[text[j] for j in range(r - min(b, left), r)], token=text[r],
                right=[text[j] for j in range(r + 1, r + min(a, right) + 1)],
                more_left=b > left, more_right=a > right))
        out.append(examples)
    return out


# ----------------------------------------------------------------------------- reliability


def known_reliabilities(inputs: Inputs) -> list[float]:
    """The sampling run's component reliabilities, the unknown ones (None) left out."""
    return [r for r in inputs.reliability.values() if r is not None]


def unreliable_components(inputs: Inputs, config: ReportConfig) -> list[str]:
    """Components whose chi is mostly noise (reliability below ReportConfig.min_reliability, or unknown)."""
    return [c for c, r in inputs.reliability.items() if r is None or r < config.min_reliability]
