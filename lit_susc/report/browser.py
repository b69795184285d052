"""The cluster browser: a static HTML report of a clustering, with the run's diagnostic plots.

    report_dir/
      report.json          what the report was built from (also marks the directory as a report)
      plots/*.png          SGLD traces, LLC heatmap, PCA variance, Pearson, cluster sizes, leak
      clusters/<label>.html   one page per cluster (its profile heatmap inline, as SVG)
      index.html           run summary, plots, the sortable and searchable cluster table; written last

Every page opens from disk (file://): no server, no network; CSS and JavaScript are inline and
every link is relative. ``index.html`` is written last, through a temporary name, and removed
first when a report is rebuilt, so a directory without it holds no finished report.

The clusters are those of a cluster-stage directory; their tokens and chi are those of the run
the stage clustered (its ``config.json`` ``input_dir``: a sampling run or an ``aux predict``
directory). chi is read in blocks of tokens, once, to get every cluster's mean profile, so it
never has to fit in memory.
"""

from __future__ import annotations

import fnmatch
import html
import json
import re
import shutil
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..result import read_chi, read_metadata
from ..rundir import read_summary, require_finished, write_json, write_text
from .plots import (component_grid, component_map_svg, plot_cluster_sizes, plot_component_map, plot_llc_heatmap,
                    plot_pca_variance, plot_pearson, plot_reliability, plot_traces)

REPORT_MARKER = "report.json"
INDEX = "index.html"
_TOKEN_COLUMNS = ("token", "context", "offset")
_CLUSTER_COLUMNS = ("label", "size", "conductance", "volume", "seed", "round")


@dataclass
class ReportConfig:
    """What the cluster browser shows."""

    examples_per_cluster: int = 40
    """Tokens shown in context on each cluster page (chosen at random among its tokens, then
    shown in reading order)."""
    context_left: int = 12
    """Tokens of context shown before each example token (never across its context's edge)."""
    context_right: int = 4
    """Tokens of context shown after each example token."""
    top_tokens: int = 15
    """Most frequent tokens listed on each cluster page (and searched by the index's search box)."""
    trace_components: list[str] | None = None
    """Glob patterns of the components whose SGLD traces are plotted; each must match a traced
    component. None: head 0 and the MLP of the first and last layer, and embed/pos_embed/unembed
    (the first four components of a run without transformer names)."""
    profile: Literal["zscore", "raw"] = "zscore"
    """A cluster's profile: the mean over its tokens of each component's chi z-scored over all
    tokens ('zscore'), or of raw chi ('raw'). Raw chi scales differ by orders of magnitude between
    components, so raw profiles mostly show which components have large chi everywhere."""
    chi_block_tokens: int = 1 << 16
    """Tokens of chi read at a time (memory: components x this x 8 bytes)."""
    example_seed: int = 0
    """Seeds the choice of example tokens, so a rebuilt report shows the same examples."""
    min_reliability: float = 0.3
    """Components whose reliability (the share of their chi's variance over tokens that is signal)
    is below this are drawn hatched grey in the cluster profiles: their chi is mostly noise."""
    warn_median_reliability: float = 0.5
    """Below this median component reliability the index page carries a banner saying so."""

    def __post_init__(self) -> None:
        for name in ("examples_per_cluster", "context_left", "context_right", "top_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"ReportConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("min_reliability", "warn_median_reliability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"ReportConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.chi_block_tokens < 1:
            raise ValueError(f"ReportConfig.chi_block_tokens must be >= 1, got {self.chi_block_tokens}")
        if self.profile not in ("zscore", "raw"):
            raise ValueError(f"ReportConfig.profile must be 'zscore' or 'raw', got {self.profile!r}")
        if isinstance(self.trace_components, str):
            self.trace_components = [self.trace_components]
        if self.trace_components is not None and not self.trace_components:
            raise ValueError("ReportConfig.trace_components is empty; give glob patterns, or None for the default")


@dataclass
class Inputs:
    """Everything a report is built from, read and checked before anything is written."""

    cluster_dir: Path
    sample_dir: Path
    input_dir: Path
    """The run the cluster stage clustered (a sampling run or an aux-predict directory)."""
    aux_dir: Path | None
    analysis_dir: Path | None
    sample_meta: dict
    """The sampling run's result.json."""
    sample_summary: dict
    input_meta: dict
    """The clustered run's result.json."""
    cluster_config: dict
    cluster_summary: dict
    labels: pa.Table
    """labels.parquet: the clustered run's token table plus ``label``."""
    clusters: pa.Table
    """clusters.parquet, sorted by label."""
    llc: dict
    traces: pa.Table | None
    aux: dict | None
    """aux.json of the aux fit."""

    @property
    def components(self) -> list[str]:
        return self.input_meta["components"]


@dataclass
class Cluster:
    """One cluster as its page shows it."""

    label: int
    size: int
    conductance: float
    volume: float
    seed: int
    round: int
    profile: np.ndarray
    """[n_components]: mean over the cluster's tokens (ReportConfig.profile)."""
    top_tokens: list[tuple[str, int]]
    """(token, count), most frequent first."""
    examples: list[str]
    """HTML table rows, one per example token in context."""


def build_report(report_dir: str | Path, *, cluster_dir: str | Path, sample_dir: str | Path,
                 aux_dir: str | Path | None = None, analysis_dir: str | Path | None = None,
                 config: ReportConfig | None = None) -> Path:
    """Write the cluster browser for ``cluster_dir`` into ``report_dir``; returns ``index.html``'s path.

    Reads: ``cluster_dir`` (summary.json, config.json, labels.parquet, clusters.parquet), the
    clustered run (chi via ``read_chi``, result.json), ``sample_dir`` (result.json, summary.json,
    llc.json, traces.parquet if present), ``aux_dir`` (aux.json: pc_variances, pearson,
    ridge.pearson), ``analysis_dir`` (leak.png and leak.parquet, each if present).

    ``report_dir`` must be new, empty, or an earlier report (it holds report.json), which is
    replaced.

    Raises:
        FileNotFoundError: if an input directory or a file it must hold is missing, or a stage did not finish.
        ValueError: if the inputs disagree with each other, or ``report_dir`` holds something else.
    """
    config = config or ReportConfig()
    inputs = read_inputs(cluster_dir, sample_dir, aux_dir, analysis_dir)
    traced = trace_components(inputs, config) if inputs.traces is not None else []
    report_dir = _claim(Path(report_dir), inputs, config)
    plots = _write_plots(report_dir, inputs, traced, config)
    clusters = summarize_clusters(inputs, config)
    _write_cluster_pages(report_dir, inputs, clusters, config)
    index = report_dir / INDEX
    write_text(index, _index_page(inputs, clusters, plots, config))  # last: the report's finished marker
    return index


# ----------------------------------------------------------------------------- inputs


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a directory; pass the directory that "
                                f"stage wrote")
    return path


def _read_json(path: Path, hint: str) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {hint}")
    return json.loads(path.read_text())


def clustered_run(cluster_dir: Path, cluster_config: dict) -> Path:
    """The directory whose chi the cluster stage clustered (config.json ``input_dir``).

    Without an ``output_dir`` the stage wrote to ``<input_dir>/clusters``, so the parent of
    ``cluster_dir`` is that run wherever the pair has been moved; otherwise ``input_dir`` is
    taken as written (relative paths: to the current directory, as the stage read them).
    """
    if not cluster_config.get("output_dir"):
        return cluster_dir.parent
    path = Path(cluster_config["input_dir"])
    if not path.is_dir():
        raise FileNotFoundError(f"{cluster_dir}/config.json names input_dir {str(path)!r}, which does not exist from "
                                f"here ({Path.cwd()}); run from the directory the cluster stage ran in")
    return path


def read_inputs(cluster_dir: str | Path, sample_dir: str | Path, aux_dir: str | Path | None = None,
                analysis_dir: str | Path | None = None) -> Inputs:
    """Read and cross-check a report's inputs (see ``build_report``)."""
    cluster_dir = _require_dir(cluster_dir, "cluster_dir")
    sample_dir = _require_dir(sample_dir, "sample_dir")
    require_finished(cluster_dir, "clustering", "run `python run.py cluster --input_dir <run>` to completion first")
    cluster_config = _read_json(cluster_dir / "config.json", "the cluster stage writes it; rerun the stage")
    input_dir = clustered_run(cluster_dir, cluster_config)
    input_meta = read_metadata(input_dir)
    sample_meta = read_metadata(sample_dir)
    if input_meta.get("source") != "aux" and input_dir.resolve() != sample_dir.resolve():
        raise ValueError(f"the clustering in {cluster_dir} is of the sampling run {input_dir}, but sample_dir is "
                         f"{sample_dir}; pass sample_dir={str(input_dir)!r}")
    if input_meta["components"] != sample_meta["components"]:
        raise ValueError(f"the clustered run {input_dir} and the sampling run {sample_dir} have different components "
                         f"({len(input_meta['components'])} vs {len(sample_meta['components'])}); pass the sampling "
                         "run the aux model was fitted on")

    labels = _read_parquet(cluster_dir / "labels.parquet")
    missing = [c for c in ("label", *_TOKEN_COLUMNS) if c not in labels.column_names]
    if missing:
        raise ValueError(f"{cluster_dir}/labels.parquet lacks columns {missing}: the report shows tokens in their "
                         "context, so it needs a clustering of a language-model run (`run.py sample` or `aux "
                         "predict`, whose token tables have token, context and offset)")
    if labels.num_rows != input_meta["n_tokens"]:
        raise ValueError(f"{cluster_dir}/labels.parquet has {labels.num_rows} rows but the clustered run {input_dir} "
                         f"has {input_meta['n_tokens']} tokens; the clustering is not of this run (rerun the stage)")
    clusters = _read_parquet(cluster_dir / "clusters.parquet")
    missing = [c for c in _CLUSTER_COLUMNS if c not in clusters.column_names]
    if missing:
        raise ValueError(f"{cluster_dir}/clusters.parquet lacks columns {missing}; rerun the cluster stage")
    clusters = clusters.sort_by("label") if clusters.num_rows else clusters
    _check_labels(cluster_dir, labels, clusters)

    traces = pq.read_table(sample_dir / "traces.parquet") if (sample_dir / "traces.parquet").exists() else None
    aux = None
    if aux_dir is not None:
        aux_dir = _require_dir(aux_dir, "aux_dir")
        require_finished(aux_dir, "aux fit", "run `python run.py aux fit` to completion first")
        aux = _read_json(aux_dir / "aux.json", "`aux fit` writes it")
        missing = [k for k in ("pc_variances", "pearson", "ridge") if k not in aux]
        if missing:
            raise ValueError(f"{aux_dir}/aux.json lacks {missing}; is it the output of `aux fit`?")
    if analysis_dir is not None:
        analysis_dir = _require_dir(analysis_dir, "analysis_dir")
    return Inputs(
        cluster_dir=cluster_dir, sample_dir=sample_dir, input_dir=input_dir,
        aux_dir=Path(aux_dir) if aux_dir is not None else None, analysis_dir=analysis_dir,
        sample_meta=sample_meta, sample_summary=read_summary(sample_dir),
        input_meta=input_meta, cluster_config=cluster_config, cluster_summary=read_summary(cluster_dir),
        labels=labels, clusters=clusters,
        llc=_read_json(sample_dir / "llc.json", "every finished sampling run has one"), traces=traces, aux=aux,
    )


def _read_parquet(path: Path) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the cluster stage writes it (rerun it)")
    return pq.read_table(path)


def _check_labels(cluster_dir: Path, labels: pa.Table, clusters: pa.Table) -> None:
    """labels.parquet and clusters.parquet must describe the same clusters, with the same sizes."""
    counts = pc.value_counts(labels.column("label").combine_chunks())
    found = {int(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] >= 0}
    listed = dict(zip(map(int, clusters.column("label").to_pylist()), map(int, clusters.column("size").to_pylist())))
    if found != listed:
        differ = sorted(k for k in set(found) | set(listed) if found.get(k) != listed.get(k))
        raise ValueError(f"{cluster_dir}: labels.parquet and clusters.parquet disagree on clusters {differ[:5]} "
                         "(label missing or size different); the directory is inconsistent, rerun the stage")


def trace_components(inputs: Inputs, config: ReportConfig) -> list[str]:
    """The traced components to plot, in run order (``ReportConfig.trace_components``)."""
    traced = set(inputs.traces.column("component").to_pylist())
    available = [c for c in inputs.sample_meta["components"] if c in traced]
    if config.trace_components is None:
        layers = sorted({int(m.group(1)) for c in available if (m := re.match(r"layers\.(\d+)\.", c))})
        ends = {layers[0], layers[-1]} if layers else set()
        wanted = {f"layers.{l}.{part}" for l in ends for part in ("heads.0", "mlp")}
        chosen = [c for c in available if c in wanted or c in ("embed", "pos_embed", "unembed")]
        return chosen or available[:4]
    for pattern in config.trace_components:
        if not any(fnmatch.fnmatchcase(c, pattern) for c in available):
            raise ValueError(f"trace_components pattern {pattern!r} matches no traced component of {inputs.sample_dir};"
                             f" traced: {available[:12]}{' ...' if len(available) > 12 else ''}")
    return [c for c in available if any(fnmatch.fnmatchcase(c, p) for p in config.trace_components)]


# ----------------------------------------------------------------------------- clusters


def summarize_clusters(inputs: Inputs, config: ReportConfig) -> list[Cluster]:
    """Every cluster's profile, frequent tokens and examples in context, in label order."""
    table = inputs.clusters
    n_clusters = table.num_rows
    if n_clusters == 0:
        return []
    labels = inputs.labels.column("label").to_numpy()
    cluster_labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    # position of each token's cluster in ``cluster_labels`` (sorted), -1 for unclustered tokens
    index = np.searchsorted(cluster_labels, labels)
    index[labels < 0] = -1
    sizes = np.asarray(table.column("size").to_pylist(), dtype=np.float64)
    profiles = cluster_profiles(inputs.input_dir, index, sizes, config)
    top = frequent_tokens(inputs.labels, config.top_tokens)
    # token rows grouped by cluster, in row order: the unclustered (-1) first, then cluster 0, 1, ...
    members = np.split(np.argsort(index, kind="stable"), np.cumsum(np.bincount(index + 1, minlength=n_clusters + 1)))
    columns = {c: table.column(c).to_pylist() for c in _CLUSTER_COLUMNS}
    examples = _examples(inputs.labels, members[1:n_clusters + 1], cluster_labels, config)
    return [Cluster(label=int(columns["label"][i]), size=int(columns["size"][i]),
                    conductance=float(columns["conductance"][i]), volume=float(columns["volume"][i]),
                    seed=int(columns["seed"][i]), round=int(columns["round"][i]), profile=profiles[i],
                    top_tokens=top.get(int(cluster_labels[i]), []), examples=examples[i])
            for i in range(n_clusters)]


def cluster_profiles(run_dir: Path, index: np.ndarray, sizes: np.ndarray, config: ReportConfig) -> np.ndarray:
    """[n_clusters, n_components]: each cluster's mean chi, z-scored per component unless 'raw'.

    One pass over chi in blocks: per-cluster sums, and each component's mean and variance over
    all tokens merged block by block (Chan et al.), which stays accurate when a component's mean
    is far larger than its spread. The mean of z-scores is (cluster mean - mean) / std; a
    component with no spread has no z-score (NaN, drawn grey).
    """
    n_tokens, n_components = len(index), len(read_metadata(run_dir)["components"])
    idx = torch.from_numpy(index)
    sums = torch.zeros(len(sizes), n_components, dtype=torch.float64)
    mean, m2, count = torch.zeros(n_components, dtype=torch.float64), torch.zeros(n_components, dtype=torch.float64), 0
    for a in range(0, n_tokens, config.chi_block_tokens):
        x = read_chi(run_dir, a, a + config.chi_block_tokens).to(torch.float64)  # [components, b]
        if not torch.isfinite(x).all():
            bad = a + int((~torch.isfinite(x)).any(0).nonzero()[0])
            raise ValueError(f"chi of {run_dir} is not finite at token {bad}; repair the run before reporting on it")
        b = x.shape[1]
        delta, total = x.mean(1) - mean, count + b
        mean = mean + delta * (b / total)
        m2 = m2 + x.var(1, correction=0) * b + delta.square() * (count * b / total)
        count = total
        mine = idx[a:a + b]
        keep = mine >= 0
        sums.index_add_(0, mine[keep], x.T[keep])
    raw = sums / torch.from_numpy(sizes)[:, None]
    if config.profile == "raw":
        return raw.numpy()
    std = (m2 / count).sqrt()
    z = (raw - mean) / std
    z[:, std == 0] = float("nan")
    return z.numpy()


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


def _examples(labels: pa.Table, members: list[np.ndarray], cluster_labels: np.ndarray,
              config: ReportConfig) -> list[list[str]]:
    """Each cluster's example tokens in context, as HTML table rows."""
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
    where = {c: dict(zip(flat.tolist(), labels.column(c).take(pa.array(flat)).to_pylist()))
             for c in ("document", "position") if c in labels.column_names}
    out, pos = [], 0
    for rows in chosen:
        html_rows = []
        for r in rows.tolist():
            b, a = int(before[pos]), int(after[pos])
            pos += 1
            lead = "…" if b > left else ""
            tail = "…" if a > right else ""
            left_html = "".join(show_token(text[j]) for j in range(r - min(b, left), r))
            right_html = "".join(show_token(text[j]) for j in range(r + 1, r + min(a, right) + 1))
            origin = ":".join(str(where[c][r]) for c in ("document", "position") if c in where)
            html_rows.append(
                f'<tr><td class="where">{_e(origin)}</td><td class="left">{lead}{left_html}</td>'
                f'<td class="centre"><mark class="tok">{show_token(text[r], empty="∅")}</mark></td>'
                f'<td class="right">{right_html}{tail}</td></tr>')
        out.append(html_rows)
    return out


# ----------------------------------------------------------------------------- html helpers

_WHITESPACE = re.compile(r"(\s+)")
_VISIBLE = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def visible(text: str) -> str:
    """Whitespace made visible: space ·, newline ⏎, tab ⇥, carriage return ␍ (other whitespace: ␣)."""
    return "".join(_VISIBLE.get(ch, "␣") if ch.isspace() else ch for ch in text)


def _printable(text: str) -> str:
    # control characters (byte-level tokens can hold any) would vanish or garble the page
    return "".join(ch if unicodedata.category(ch) != "Cc" else f"\\x{ord(ch):02x}" for ch in text)


def show_token(text: str, empty: str = "") -> str:
    """A token as HTML: escaped, its whitespace shown as dimmed symbols (``visible``), control
    characters as ``\\xNN``; an empty token as ``empty``."""
    if not text:
        return f'<span class="ws">{empty}</span>' if empty else ""
    parts = _WHITESPACE.split(text)
    return "".join(f'<span class="ws">{_e(visible(p))}</span>' if i % 2 else _e(_printable(p))
                   for i, p in enumerate(parts))


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; vertical-align: top; }
table.data tr:nth-child(even) { background: #f6f6f6; } th { background: #eee; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.tokens code, code.tok { background: #f0f0f0; padding: 0 3px; border-radius: 3px; white-space: pre; }
.ws { color: #aaa; } code.tok .ws, mark.tok .ws { color: #666; }
mark.tok { background: #ffd54f; padding: 0 2px; border-radius: 3px; font-weight: bold; }
table.kwic { font: 13px/1.5 ui-monospace, monospace; }
table.kwic td { white-space: pre; padding: 1px 4px; }
table.kwic td.left { text-align: right; } table.kwic td.where { color: #888; font: 11px system-ui, sans-serif; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; } figure svg { max-width: 100%; height: auto; }
nav a, nav span { margin-right: 1em; } .muted { color: #777; } .note { background: #fffbe6; padding: 0.5em; }
.banner { background: #fdecea; border-left: 4px solid #c0392b; padding: 0.6em 0.8em; }
#controls { margin: 0.5em 0; } #controls button { margin-right: 0.4em; }
th button { border: none; background: none; font: inherit; font-weight: bold; cursor: pointer; padding: 0; }
"""

_INDEX_JS = r"""
(function () {
  const table = document.getElementById('cluster-table');
  if (!table) return;
  const body = table.tBodies[0], rows = Array.from(body.rows);
  const search = document.getElementById('search'), shown = document.getElementById('shown');
  const defaults = {size: 'desc', conductance: 'asc', label: 'asc'};
  const state = {sort: 'size', dir: 'desc', q: ''};
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get('sort') in defaults) state.sort = params.get('sort');
  state.dir = ['asc', 'desc'].includes(params.get('dir')) ? params.get('dir') : defaults[state.sort];
  state.q = params.get('q') || '';
  search.value = state.q;
  // a token matches by its text or by the symbols the pages show for its whitespace
  const shownAs = t => t.replace(/ /g, '\u00b7').replace(/\n/g, '\u23ce').replace(/\t/g, '\u21e5');
  const tokens = new Map(rows.map(r => [r, JSON.parse(r.dataset.tokens).flatMap(t => [t, shownAs(t)])
                                              .map(t => t.toLowerCase())]));
  function apply() {
    const sign = state.dir === 'asc' ? 1 : -1, key = state.sort;
    rows.sort((a, b) => sign * (Number(a.dataset[key]) - Number(b.dataset[key]))
                        || Number(a.dataset.label) - Number(b.dataset.label));
    rows.forEach(r => body.appendChild(r));
    const q = state.q.toLowerCase();
    let n = 0;
    for (const r of rows) {
      const hit = !q || tokens.get(r).some(t => t.includes(q));
      r.hidden = !hit; if (hit) n++;
    }
    shown.textContent = n + ' of ' + rows.length + ' clusters shown';
    for (const th of table.tHead.rows[0].cells) {
      const k = th.dataset.sort;
      if (!k) continue;
      th.setAttribute('aria-sort', k === key ? (state.dir === 'asc' ? 'ascending' : 'descending') : 'none');
      th.querySelector('.arrow').textContent = k === key ? (state.dir === 'asc' ? ' \u25b2' : ' \u25bc') : '';
    }
    const h = new URLSearchParams({sort: state.sort, dir: state.dir});
    if (state.q) h.set('q', state.q);
    history.replaceState(null, '', '#' + h.toString());
  }
  function sortBy(key) {
    state.dir = state.sort === key ? (state.dir === 'asc' ? 'desc' : 'asc') : defaults[key];
    state.sort = key; apply();
  }
  document.querySelectorAll('[data-sort-button]')
    .forEach(b => b.addEventListener('click', () => sortBy(b.dataset.sortButton)));
  search.addEventListener('input', () => { state.q = search.value; apply(); });
  apply();
})();
"""


def _page(title: str, body: str, script: str = "") -> str:
    script = f"<script>{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n{script}</body></html>\n")


def _facts(rows: list[tuple[str, str]]) -> str:
    """A two-column table; values are HTML already."""
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="data facts">{cells}</table>'


def _token_list(tokens: list[tuple[str, int]], limit: int | None = None) -> str:
    shown = tokens[:limit] if limit is not None else tokens
    return " ".join(f'<code class="tok">{show_token(t, empty="∅")}</code><span class="muted">×{n}</span>'
                    for t, n in shown)


def _profile_note(config: ReportConfig, convention: str) -> str:
    if config.profile == "zscore":
        return ("Each component's chi is z-scored over all tokens of the clustered run (minus its mean, divided by "
                "its standard deviation), then averaged over the cluster's tokens: 0 is the run's average, +1 one "
                "standard deviation above it. Raw chi scales differ by orders of magnitude between components, so "
                "raw means would mostly show which components have large chi everywhere. Grey: a component with "
                "no spread.")
    return (f"Mean raw chi ({convention} convention) over the cluster's tokens. Raw chi scales differ by orders of "
            "magnitude between components: the largest cells mostly mark components with large chi everywhere "
            "(ReportConfig.profile='zscore' compares each component with its own spread).")


# ----------------------------------------------------------------------------- writing


def _claim(report_dir: Path, inputs: Inputs, config: ReportConfig) -> Path:
    """Make ``report_dir`` this report's: refuse foreign directories, clear an earlier report."""
    for d in (inputs.cluster_dir, inputs.sample_dir, inputs.input_dir, inputs.aux_dir, inputs.analysis_dir):
        if d is not None and report_dir.resolve() == d.resolve():
            raise ValueError(f"report_dir {report_dir} is one of the input directories; choose a new directory")
    if report_dir.exists():
        if not report_dir.is_dir():
            raise ValueError(f"report_dir {report_dir} is a file; choose a new directory")
        if any(report_dir.iterdir()) and not (report_dir / REPORT_MARKER).exists():
            raise ValueError(f"report_dir {report_dir} is not empty and holds no report ({REPORT_MARKER} is "
                             "missing); choose a new or empty directory")
        # the index goes first: until the new one is written, the directory holds no finished report
        (report_dir / INDEX).unlink(missing_ok=True)
        for sub in ("plots", "clusters"):
            if (report_dir / sub).exists():
                shutil.rmtree(report_dir / sub)
    (report_dir / "plots").mkdir(parents=True, exist_ok=True)
    (report_dir / "clusters").mkdir()
    write_json(report_dir / REPORT_MARKER, {
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": asdict(config),
        "inputs": {k: str(getattr(inputs, k)) if getattr(inputs, k) is not None else None
                   for k in ("cluster_dir", "sample_dir", "input_dir", "aux_dir", "analysis_dir")},
    })
    return report_dir


@dataclass
class PlotEntry:
    """A plot of the index page."""

    anchor: str
    title: str
    file: str | None
    """Path relative to the report directory; None when the input for it is missing."""
    caption: str


def _write_plots(report_dir: Path, inputs: Inputs, traced: list[str], config: ReportConfig) -> list[PlotEntry]:
    plots, out = report_dir / "plots", []
    if inputs.traces is not None:
        plot_traces(inputs.traces, traced, plots / "traces.png",
                    ref_loss_star=inputs.sample_summary.get("ref_loss_at_w_star"))
        out.append(PlotEntry("traces", "SGLD traces", "plots/traces.png",
                          f"Minibatch loss of every step and L_ref at every draw, per chain, for {len(traced)} "
                          "components (ReportConfig.trace_components); the dashed line is L_ref(w*)."))
    else:
        out.append(PlotEntry("traces", "SGLD traces", None, f"{inputs.sample_dir} has no traces.parquet."))
    if inputs.llc:
        plot_llc_heatmap(inputs.llc, inputs.sample_meta["components"], plots / "llc.png")
        out.append(PlotEntry("llc", "LLC per component", "plots/llc.png",
                             "Local learning coefficient of each component (mean over chains): heads on the layer x "
                             "head grid, MLPs, embeddings and other components on the strip below."))
    else:
        out.append(PlotEntry("llc", "LLC per component", None, f"{inputs.sample_dir}/llc.json holds no LLC."))
    if _reliability(inputs):
        components = inputs.sample_meta["components"]
        plot_reliability(_reliability(inputs), components, plots / "reliability.png", threshold=config.min_reliability)
        plot_component_map([np.nan if _reliability(inputs).get(c) is None else _reliability(inputs)[c]
                            for c in components], components, plots / "reliability_map.png",
                           title="Reliability per component", colorbar_label="reliability")
        out.append(PlotEntry("reliability", "Reliability per component", "plots/reliability.png",
                             "The share of each component's chi variance over tokens that is signal, "
                             "max(0, 1 - mean_t chi_se^2 / var_t chi): the expected Pearson between two independent "
                             f"runs. Grey: below {config.min_reliability:g}, hatched in the cluster profiles."))
        out.append(PlotEntry("reliability-map", "Reliability on the component map", "plots/reliability_map.png",
                             "The same reliabilities on the layer x head grid (MLPs and embeddings below)."))
    if inputs.aux is not None:
        variances = inputs.aux["pc_variances"]
        plot_pca_variance(variances, plots / "pca_variance.png")
        out.append(PlotEntry("pca", "PCA of chi", "plots/pca_variance.png",
                          f"Variance of the {len(variances)} PCs of chi the aux model predicts (training split)."))
        ceiling = inputs.aux.get("noise_ceiling")
        plot_pearson(inputs.aux["pearson"], inputs.aux["ridge"]["pearson"], plots / "pearson.png", ceiling)
        out.append(PlotEntry("pearson", "Aux model accuracy", "plots/pearson.png",
                          "Validation Pearson r per PC (held-out documents), aux model beside the ridge baseline"
                          + (f"; black ticks: each PC's noise ceiling sqrt(reliability), the best a predictor whose "
                             f"errors are independent of chi's noise can reach (mean {np.mean(ceiling):.2f} against "
                             f"the aux model's {np.mean(inputs.aux['pearson']):.2f}). Chain noise is a smooth function "
                             "of the tokens' activations, so a bar at or above its tick is fitting noise." if ceiling
                             else ".")))
    if inputs.clusters.num_rows:
        plot_cluster_sizes(inputs.clusters, plots / "cluster_sizes.png")
        out.append(PlotEntry("sizes", "Cluster sizes", "plots/cluster_sizes.png", "Histogram of cluster sizes."))
    if inputs.analysis_dir is not None and (inputs.analysis_dir / "leak.png").exists():
        shutil.copyfile(inputs.analysis_dir / "leak.png", plots / "leak.png")
        out.append(PlotEntry("leak", "Leak analysis", "plots/leak.png",
                          f"Copied from {inputs.analysis_dir}/leak.png: activations vs susceptibilities per layer."))
    return out


def _cluster_page(inputs: Inputs, clusters: list[Cluster], i: int, config: ReportConfig) -> str:
    c = clusters[i]
    n_tokens = inputs.labels.num_rows
    prev = (f'<a href="{clusters[i - 1].label}.html" rel="prev">← cluster {clusters[i - 1].label}</a>'
            if i > 0 else '<span class="muted">← (first)</span>')
    nxt = (f'<a href="{clusters[i + 1].label}.html" rel="next">cluster {clusters[i + 1].label} →</a>'
           if i + 1 < len(clusters) else '<span class="muted">(last) →</span>')
    nav = (f'<nav><a href="../index.html">↑ all clusters</a>{prev}{nxt}'
           f'<span class="muted">{i + 1} of {len(clusters)}, in label order</span></nav>')
    facts = _facts([
        ("size", f"{c.size} tokens ({100 * c.size / n_tokens:.2g}% of {n_tokens})"),
        ("conductance", _fmt(c.conductance)), ("volume", _fmt(c.volume)),
        ("seed token", str(c.seed)), ("round", str(c.round)),
    ])
    order = np.argsort(-np.nan_to_num(np.abs(c.profile), nan=-1.0))[:8]
    components = inputs.components
    strongest = ", ".join(f"<code>{_e(components[j])}</code> {c.profile[j]:+.3g}" for j in order
                          if np.isfinite(c.profile[j]))
    tokens = "".join(f'<tr><td><code class="tok">{show_token(t, empty="∅")}</code></td><td class="num">{n}</td>'
                     f'<td class="num">{100 * n / c.size:.1f}%</td></tr>' for t, n in c.top_tokens)
    shown = len(c.examples)
    body = f"""{nav}
<h1>Cluster {c.label}</h1>
{facts}
<h2>Most frequent tokens</h2>
<table class="data tokens"><thead><tr><th>token</th><th class="num">count</th><th class="num">share</th></tr></thead>
<tbody>{tokens}</tbody></table>
<h2>Mean susceptibility profile</h2>
<figure>{component_map_svg(c.profile, components, label=_profile_label(config, inputs), diverging=config.profile == "zscore",
                          muted=_unreliable(inputs, config), notes=_reliability_notes(inputs))}
<figcaption class="note">{_e(_profile_note(config, inputs.input_meta["convention"]))}</figcaption></figure>
<p>Largest in magnitude: {strongest or '<span class="muted">none</span>'}</p>
<h2>Tokens in context</h2>
<p class="muted">{shown} of {c.size} tokens{' (chosen at random)' if shown < c.size else ''}, in reading order;
up to {config.context_left} tokens before and {config.context_right} after, within the token's context
(… : the context goes on). Whitespace: · space, ⏎ newline, ⇥ tab.</p>
<table class="kwic"><tbody>
{chr(10).join(c.examples)}
</tbody></table>
{nav}"""
    return _page(f"Cluster {c.label}", body)


def _reliability(inputs: Inputs) -> dict[str, float | None]:
    return inputs.sample_meta.get("reliability") or {}


def _unreliable(inputs: Inputs, config: ReportConfig) -> list[str]:
    """Components whose chi is mostly noise (reliability below ReportConfig.min_reliability)."""
    return [c for c, r in _reliability(inputs).items() if r is None or r < config.min_reliability]


def _reliability_notes(inputs: Inputs) -> dict[str, str]:
    return {c: "reliability unknown" if r is None else f"reliability {r:.2f}" for c, r in _reliability(inputs).items()}


def _reliability_banner(inputs: Inputs, config: ReportConfig) -> str:
    """A plain warning when the median component's chi is mostly noise."""
    known = [r for r in _reliability(inputs).values() if r is not None]
    if not known:
        return ('<p class="banner">This sampling run reports no reliability (no chi_se): nothing here says how much '
                'of chi is signal. Rerun the sample stage with a current lit-susc.</p>')
    median = float(np.median(known))
    if median >= config.warn_median_reliability:
        return ""
    return (f'<p class="banner"><strong>Mostly noise.</strong> The median component reliability is {median:.2f}: '
            f"about {100 * (1 - median):.0f}% of a typical component's chi variation across tokens is sampling noise, "
            "so profiles and clusters here say more about the noise (and token identity, through the aux model) than "
            "about susceptibilities. Sample with more draws or set <code>sgld.target_reliability</code> "
            "(README, \"How much of chi is signal\").</p>")


def _profile_label(config: ReportConfig, inputs: Inputs) -> str:
    return "mean z-scored chi" if config.profile == "zscore" else f"mean chi ({inputs.input_meta['convention']})"


def _write_cluster_pages(report_dir: Path, inputs: Inputs, clusters: list[Cluster], config: ReportConfig) -> None:
    for i, c in enumerate(clusters):
        (report_dir / "clusters" / f"{c.label}.html").write_text(_cluster_page(inputs, clusters, i, config),
                                                                encoding="utf-8")


def _summary(inputs: Inputs, clusters: list[Cluster]) -> str:
    sample, meta = inputs.sample_meta, inputs.input_meta
    model = sample.get("config", {}).get("model", {})
    name = model.get("pretrained") or "(not recorded)"
    if model.get("revision"):
        name += f" @ {model['revision']}"
    grid = component_grid(sample["components"])
    kinds = f"{len(grid.cells)} heads on {grid.n_layers} layers, {len(grid.strip)} others" if grid.cells else ""
    sgld = sample.get("config", {}).get("sgld", {})
    known = [r for r in _reliability(inputs).values() if r is not None]
    rows = [
        ("model", _e(name)),
        ("sampling run", f"<code>{_e(inputs.sample_dir)}</code>: {sample['n_tokens']} tokens"
                         + (f", {sgld.get('chains')} chains x {sgld.get('draws')} draws" if sgld else "")),
        ("components", f"{len(sample['components'])}" + (f" ({kinds})" if kinds else "")),
        ("convention", _e(f"{sample['convention']} (nbeta {sample['nbeta']:g}): {sample.get('description', '')}")),
        ("reliability", f"median {np.median(known):.2f} over components (range {min(known):.2f}-{max(known):.2f}); "
                        "the share of chi's variance over tokens that is signal, the expected Pearson between two "
                        "independent runs" if known else "unknown (no chi_se)"),
    ]
    if meta.get("source") == "aux":
        rows.append(("clustered chi", f"<code>{_e(inputs.input_dir)}</code>: {meta['n_tokens']} tokens predicted by "
                                      "the aux model"))
    cfg, summ = inputs.cluster_config, inputs.cluster_summary
    clustered = summ.get("clustered_tokens", sum(c.size for c in clusters))
    rows.append(("clustering", f"<code>{_e(inputs.cluster_dir)}</code>: " + _e(", ".join(
        f"{k} {cfg[k]}" for k in ("preprocessing", "k", "alpha", "eps", "min_size", "conductance_threshold")
        if k in cfg))))
    rows.append(("clusters", f"<strong>{len(clusters)}</strong> covering {clustered} of {meta['n_tokens']} tokens"))
    if inputs.aux is not None:
        aux = inputs.aux
        rows.append(("aux model", f"<code>{_e(inputs.aux_dir)}</code>: {len(aux['pc_variances'])} PCs, mean "
                                  f"validation Pearson {np.mean(aux['pearson']):.3f} (ridge "
                                  f"{np.mean(aux['ridge']['pearson']):.3f}"
                                  + (f"; noise ceiling {np.mean(aux['noise_ceiling']):.3f}" if "noise_ceiling" in aux
                                     else "") + ")"))
    return _facts(rows)


def _cluster_table(clusters: list[Cluster], n_tokens: int) -> str:
    if not clusters:
        return ('<p class="note" id="no-clusters"><strong>The clustering found no clusters</strong> (0 of '
                f"{n_tokens} tokens clustered). Try a larger alpha or eps, a smaller min_size or a higher "
                "conductance_threshold in the cluster stage.</p>")
    head = ('<thead><tr><th data-sort="label" class="num"><button data-sort-button="label">label<span class="arrow">'
            '</span></button></th><th data-sort="size" class="num"><button data-sort-button="size">size<span '
            'class="arrow"></span></button></th><th data-sort="conductance" class="num"><button '
            'data-sort-button="conductance">conductance<span class="arrow"></span></button></th><th class="num">'
            'volume</th><th>most frequent tokens</th></tr></thead>')
    rows = []
    for c in sorted(clusters, key=lambda c: (-c.size, c.label)):  # the scriptless order: largest first
        tokens = _e(json.dumps([t for t, _ in c.top_tokens], ensure_ascii=False))
        rows.append(f'<tr data-label="{c.label}" data-size="{c.size}" data-conductance="{c.conductance!r}" '
                    f'data-tokens="{tokens}"><td class="num"><a href="clusters/{c.label}.html">{c.label}</a></td>'
                    f'<td class="num">{c.size}</td><td class="num">{_fmt(c.conductance)}</td>'
                    f'<td class="num">{_fmt(c.volume)}</td><td class="tokens">{_token_list(c.top_tokens, 8)}</td></tr>')
    controls = ('<div id="controls">sort by <button data-sort-button="size">size</button><button '
                'data-sort-button="conductance">conductance</button><button data-sort-button="label">label</button> '
                '<input id="search" type="search" placeholder="filter by frequent token" size="28"> '
                f'<span id="shown" class="muted">{len(clusters)} clusters</span></div>')
    return (f"{controls}<table class=\"data\" id=\"cluster-table\">{head}<tbody>\n" + "\n".join(rows)
            + "\n</tbody></table>")


def _leak_table(analysis_dir: Path | None) -> str:
    if analysis_dir is None or not (analysis_dir / "leak.parquet").exists():
        return ""
    table = pq.read_table(analysis_dir / "leak.parquet")
    head = "".join(f"<th>{_e(c)}</th>" for c in table.column_names)
    columns = [table.column(c).to_pylist() for c in table.column_names]
    rows = "".join("<tr>" + "".join(f'<td class="num">{_e(_fmt(v, 3))}</td>' for v in row) + "</tr>"
                   for row in zip(*columns))
    return (f'<h3 id="leak-table">Leak table</h3><p class="muted">From <code>{_e(analysis_dir)}/leak.parquet</code>.'
            f'</p><table class="data"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


def _index_page(inputs: Inputs, clusters: list[Cluster], figures: list[PlotEntry], config: ReportConfig) -> str:
    links = "".join(f'<a href="#{f.anchor}">{_e(f.title)}</a>' if f.file else
                    f'<span class="muted">{_e(f.title)} (none)</span>' for f in figures)
    sections = []
    for f in figures:
        if f.file is None:
            sections.append(f'<h3 id="{f.anchor}">{_e(f.title)}</h3><p class="muted">{_e(f.caption)}</p>')
        else:
            sections.append(f'<figure id="{f.anchor}"><h3>{_e(f.title)}</h3><a href="{f.file}"><img src="{f.file}" '
                            f'alt="{_e(f.title)}"></a><figcaption class="muted">{_e(f.caption)}</figcaption></figure>')
    profile = "z-scored" if config.profile == "zscore" else "raw"
    why = (" (each component's chi z-scored over all tokens before averaging: raw chi scales differ by orders of "
           "magnitude between components)" if config.profile == "zscore" else "")
    body = f"""<h1>Susceptibility clusters</h1>
<p class="muted">Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Each cluster page shows its {profile} mean
susceptibility profile{why}, frequent tokens and tokens in context.</p>
{_reliability_banner(inputs, config)}
<h2>Run</h2>
{_summary(inputs, clusters)}
<nav id="plot-links">Plots: {links}</nav>
<h2 id="clusters">Clusters</h2>
{_cluster_table(clusters, inputs.labels.num_rows)}
<h2 id="plots">Plots</h2>
{''.join(sections)}
{_leak_table(inputs.analysis_dir)}"""
    return _page("Susceptibility clusters", body, _INDEX_JS if clusters else "")
