"""The numbers the report's pages show: cluster profiles, frequent tokens, token purity and the
token-identity baseline, example tokens in context, and which components' chi is reliable enough
to read.

chi is read in blocks of tokens, once, to get every cluster's mean profile, so it never has to
fit in memory. The per-cluster numbers are arrays (``Clustering``); a cluster's frequent tokens and
examples in context become Python objects only when its page is rendered, a block of clusters at a
time, so the report's memory does not grow with clusters times page content.
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
from .inputs import CLUSTER_COLUMNS, WHERE_COLUMNS, Inputs

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
    """Example tokens in reading order (ReportConfig.examples_per_cluster of them at most; none when
    built for the index: ``Clustering.clusters(..., examples=False)``)."""
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


@dataclass
class Clustering:
    """Every cluster's numbers as arrays, in label order, and the token rows of each cluster; ``clusters``
    builds their ``Cluster``s a block at a time, so that a report holds one block's examples in context,
    never every cluster's.

    Memory: O(clusters x components) floats (the profiles), O(tokens) ints (the rows grouped by
    cluster) and each cluster's ``ReportConfig.top_tokens`` most frequent tokens, kept in Arrow.
    """

    tokens: pa.Table
    """The token table with ``label`` (``Inputs.labels``), which the examples are read from."""
    config: ReportConfig
    labels: np.ndarray
    """[n_clusters] int64, ascending."""
    sizes: np.ndarray
    conductance: np.ndarray
    volume: np.ndarray
    seed_node: np.ndarray
    round: np.ndarray
    profiles: np.ndarray
    """[n_clusters, n_components]: mean over each cluster's tokens (ReportConfig.profile)."""
    top_count: np.ndarray
    """[n_clusters]: max_t n_ct (``top_token_counts``)."""
    top_occurrences: np.ndarray
    """[n_clusters]: rows of the whole token table whose text is the cluster's most frequent token."""
    top_text: list[str]
    """Each cluster's most frequent token text."""
    frequent: pa.Table
    """``frequent_token_table``: each cluster's most frequent tokens, rows ``frequent_bounds[:, i]`` for cluster i."""
    frequent_bounds: np.ndarray
    """[2, n_clusters]: the first and one past the last row of each cluster's tokens in ``frequent``."""
    members: np.ndarray
    """The clustered token rows grouped by cluster, in row order within each: cluster i's are
    ``members[member_bounds[i]:member_bounds[i + 1]]``."""
    member_bounds: np.ndarray
    """[n_clusters + 1]."""
    identity: TokenIdentity | None
    """None without clusters."""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def clustered_tokens(self) -> int:
        return int(self.sizes.sum())

    def by_size(self) -> np.ndarray:
        """Cluster positions (indices into ``labels``) largest first, equal sizes by label: the index's order."""
        return np.lexsort((self.labels, -self.sizes))

    def clusters(self, positions: np.ndarray, examples: bool = True) -> list[Cluster]:
        """The ``Cluster``s at ``positions`` (indices into ``labels``), in that order; ``examples=False``
        leaves their ``examples`` empty (the index shows none), which saves reading the token table."""
        positions = np.asarray(positions, dtype=np.int64)
        starts, stops = self.frequent_bounds[:, positions]
        rows = np.concatenate([np.arange(a, b) for a, b in zip(starts, stops)] or [np.zeros(0, np.int64)])
        frequent = self.frequent.take(pa.array(rows))
        texts, counts = frequent.column("token").to_pylist(), frequent.column("count_all").to_pylist()
        ends = np.cumsum(stops - starts).tolist()
        top_tokens = [list(zip(texts[e - k:e], counts[e - k:e])) for e, k in zip(ends, (stops - starts).tolist())]
        seeds = self.tokens.column("token").take(pa.array(self.seed_node[positions])).to_pylist()
        shown = (cluster_examples(self.tokens, [self.members[self.member_bounds[p]:self.member_bounds[p + 1]]
                                                for p in positions], self.labels[positions], self.config)
                 if examples else [[] for _ in positions])
        return [Cluster(label=int(self.labels[p]), size=int(self.sizes[p]), conductance=float(self.conductance[p]),
                        volume=float(self.volume[p]), seed_node=int(self.seed_node[p]), round=int(self.round[p]),
                        profile=self.profiles[p], top_tokens=top_tokens[j], examples=shown[j],
                        top_token=self.top_text[p], top_count=int(self.top_count[p]),
                        top_occurrences=int(self.top_occurrences[p]), seed_token=seeds[j])
                for j, p in enumerate(positions.tolist())]


def summarize_clusters(inputs: Inputs, config: ReportConfig) -> Clustering:
    """Every cluster's profile, frequent tokens, purity and token rows, in label order, with the
    clustering's ``TokenIdentity``; examples are read later, a block of clusters at a time
    (``Clustering.clusters``)."""
    table = inputs.clusters
    n_clusters = table.num_rows
    columns = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False)) for c in CLUSTER_COLUMNS}
    cluster_labels = columns["label"].astype(np.int64)
    sizes = columns["size"].astype(np.int64)
    labels = inputs.labels.column("label").to_numpy()
    # position of each token's cluster in ``cluster_labels`` (sorted), -1 for unclustered tokens
    index = np.searchsorted(cluster_labels, labels)
    index[labels < 0] = -1
    grouped = np.argsort(index, kind="stable")
    counts = np.bincount(index + 1, minlength=n_clusters + 1)
    member_bounds = np.cumsum(counts) - counts[0]  # the unclustered (-1) sort first: skip them
    frequent = frequent_token_table(inputs.labels, config.top_tokens)
    frequent_labels = frequent.column("label").to_numpy()
    bounds = np.stack([np.searchsorted(frequent_labels, cluster_labels, side=side) for side in ("left", "right")])
    if n_clusters:
        profiles = cluster_profiles(inputs.input_dir, index, sizes.astype(np.float64), config)
        types, texts = token_types(inputs.labels)
        top_count, top_type = top_token_counts(types, index, n_clusters)
        occurrences = np.bincount(types, minlength=len(texts))[top_type]
        identity = token_identity(types, index, top_count, seed=config.example_seed)
        top_text = [texts[t] for t in top_type.tolist()]
    else:
        profiles = np.zeros((0, len(inputs.components)))
        top_count = occurrences = np.zeros(0, np.int64)
        identity, top_text = None, []
    return Clustering(
        tokens=inputs.labels, config=config, labels=cluster_labels, sizes=sizes,
        conductance=columns["conductance"].astype(np.float64), volume=columns["volume"].astype(np.float64),
        seed_node=columns["seed_node"].astype(np.int64), round=columns["round"].astype(np.int64), profiles=profiles,
        top_count=top_count, top_occurrences=occurrences, top_text=top_text, frequent=frequent,
        frequent_bounds=bounds, members=grouped[counts[0]:], member_bounds=member_bounds, identity=identity)


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
    # in place: at 10^5 clusters of 410 components each copy is 330 MB
    means = sums.div_(torch.from_numpy(sizes)[:, None])
    if config.profile == "raw":
        return means.numpy()
    std = moments.std(ddof=0)
    z = means.sub_(moments.mean()).div_(std)
    z[:, std == 0] = float("nan")
    return z.numpy()


# ----------------------------------------------------------------------------- tokens


def frequent_token_table(labels: pa.Table, top: int) -> pa.Table:
    """(label, token, count_all): the ``top`` most frequent tokens of each cluster with their counts,
    by label, then most frequent first (ties: by token). Arrow throughout: O(tokens) at most, no
    Python object per token."""
    clustered = labels.select(["label", "token"]).filter(pc.greater_equal(labels.column("label"), 0))
    counts = clustered.group_by(["label", "token"]).aggregate([([], "count_all")])
    counts = counts.sort_by([("label", "ascending"), ("count_all", "descending"), ("token", "ascending")])
    label = counts.column("label").to_numpy()
    rank = np.arange(len(label)) - np.searchsorted(label, label)  # within its cluster, from 0
    return counts.filter(pa.array(rank < top))


def frequent_tokens(labels: pa.Table, top: int) -> dict[int, list[tuple[str, int]]]:
    """label -> the ``top`` most frequent tokens of that cluster with their counts (ties: by token)."""
    table = frequent_token_table(labels, top)
    out: dict[int, list[tuple[str, int]]] = {}
    for label, token, n in zip(*(table.column(c).to_pylist() for c in ("label", "token", "count_all"))):
        out.setdefault(int(label), []).append((token, int(n)))
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
    """Each cluster's example tokens in context (``choose_examples``; ``members``: each cluster's token rows)."""
    chosen = choose_examples(members, cluster_labels, config)
    flat = examples_in_context(labels, np.concatenate(chosen) if chosen else np.zeros(0, np.int64),
                               np.repeat(np.asarray(cluster_labels, np.int64), [len(c) for c in chosen]), config)
    ends = np.cumsum([len(c) for c in chosen]).tolist()
    return [flat[e - len(c):e] for e, c in zip(ends, chosen)]


def choose_examples(members: list[np.ndarray], cluster_labels: np.ndarray, config: ReportConfig) -> list[np.ndarray]:
    """Each cluster's example rows: ``examples_per_cluster`` of its token rows ``members`` chosen at
    random (seeded by ``example_seed`` and the label, so a rebuilt report shows the same ones), in
    reading order."""
    chosen = []
    for label, rows in zip(cluster_labels, members):
        rng = np.random.default_rng([config.example_seed, int(label)])
        k = min(config.examples_per_cluster, len(rows))
        chosen.append(np.sort(rng.choice(rows, size=k, replace=False)) if k < len(rows) else np.sort(rows))
    return chosen


def examples_in_context(labels: pa.Table, rows: np.ndarray, row_labels: np.ndarray,
                        config: ReportConfig) -> list[Example]:
    """The tokens at ``rows`` of the token table, each with its cluster (``row_labels``) and its context
    window, in the order given; only the rows shown are read as text."""
    if rows.size == 0:
        return []
    left, right, n = config.context_left, config.context_right, labels.num_rows
    cand = rows[:, None] + np.arange(-left - 1, right + 2)
    inside = (cand >= 0) & (cand < n)
    take = pa.array(np.clip(cand, 0, n - 1).ravel())
    gather = {c: labels.column(c).take(take).to_numpy(zero_copy_only=False).reshape(cand.shape)
              for c in ("context", "offset")}
    context = np.where(inside, gather["context"], -1)
    offset = np.where(inside, gather["offset"], -1)
    before, after = context_windows(context, offset, left, right)
    needed = np.unique(np.concatenate([np.arange(r - min(b, left), r + min(a, right) + 1)
                                       for r, b, a in zip(rows, before, after)]))
    text = dict(zip(needed.tolist(), labels.column("token").take(pa.array(needed)).to_pylist()))
    # doc_id names a page file, so only an integer one is used
    recorded = [c for c in WHERE_COLUMNS if c in labels.column_names
                and (c != "doc_id" or pa.types.is_integer(labels.schema.field(c).type))]
    where = {c: labels.column(c).take(pa.array(rows)).to_pylist() for c in recorded}
    out = []
    for i, (r, label, b, a) in enumerate(zip(rows.tolist(), np.asarray(row_labels).tolist(), before.tolist(),
                                             after.tolist())):
        out.append(Example(
            row=r, label=int(label), **{c: where[c][i] if c in where else None for c in WHERE_COLUMNS},
            left=[text[j] for j in range(r - min(b, left), r)], token=text[r],
            right=[text[j] for j in range(r + 1, r + min(a, right) + 1)],
            more_left=b > left, more_right=a > right))
    return out


# ----------------------------------------------------------------------------- reliability


def known_reliabilities(inputs: Inputs) -> list[float]:
    """The sampling run's component reliabilities, the unknown ones (None) left out."""
    return [r for r in inputs.reliability.values() if r is not None]


def unreliable_components(inputs: Inputs, config: ReportConfig) -> list[str]:
    """Components whose chi is mostly noise (reliability below ReportConfig.min_reliability, or unknown)."""
    return [c for c, r in inputs.reliability.items() if r is None or r < config.min_reliability]
