"""The cluster browser: a static HTML report of a clustering, with the run's diagnostic plots.

    report_dir/
      report.json          what the report was built from (also marks the directory as a report)
      plots/*.png          SGLD traces, LLC heatmap, PCA variance, Pearson, cluster sizes, leak
      clusters/<label>.html   one page per cluster (its profile heatmap inline, as SVG)
      documents/<doc_id>.html one page per document with example tokens: those tokens, of every
                           cluster, in position order (each example on a cluster page links to its row)
      index.html           contents, run summary, clusters against token identity, plots, glossary,
                           the sortable and searchable cluster table; written last
      index-<k>.html       page k of that table, when there are more clusters than one page holds
                           (pages.INDEX_PAGE_CLUSTERS, largest first; index.html is page 1)

``index.html`` is written last, through a temporary name, and removed first when a report is
rebuilt, so a directory without it holds no finished report.

Pages are written in a stream, each through the project's atomic writer as soon as it is rendered:
cluster pages ``PAGES_PER_BATCH`` clusters at a time (their examples read together, then dropped),
then the document pages, then the index pages. Beside the token table (O(tokens), in Arrow) the
report holds the clusters' numbers as arrays and one batch of pages, so 10^4-10^5 clusters render
in minutes (README, "The cluster browser").

The clusters are those of a cluster-stage directory; their tokens and chi are those of the run
the stage clustered (its ``config.json`` ``input_dir``: a sampling run or an ``aux predict``
directory). This module writes the directory; what goes into it comes from inputs.py (reading
and checking the inputs), statistics.py (the numbers) and pages.py (the HTML).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..rundir import write_json, write_text
from .config import ReportConfig
from .inputs import Inputs, read_inputs, trace_components
from .pages import (
    INDEX_PAGE_CLUSTERS,
    PlotEntry,
    cluster_page,
    document_page,
    index_file,
    index_page,
    later_index_page,
)
from .plots import (
    color_limits,
    plot_cluster_sizes,
    plot_component_map,
    plot_llc_heatmap,
    plot_pca_variance,
    plot_pearson,
    plot_reliability,
    plot_traces,
)
from .statistics import Clustering, examples_in_context, summarize_clusters

REPORT_MARKER = "report.json"
INDEX = "index.html"
PAGES_PER_BATCH = 256
"""Cluster or document pages whose examples are read from the token table together: enough to
vectorise the reads, few enough that one batch's Python objects stay a few MB."""


def build_report(report_dir: str | Path, *, cluster_dir: str | Path, sample_dir: str | Path,
                 aux_dir: str | Path | None = None, analysis_dir: str | Path | None = None,
                 config: ReportConfig | None = None, progress: bool = True) -> Path:
    """Write the cluster browser for ``cluster_dir`` into ``report_dir``; returns ``index.html``'s path.

    Reads: ``cluster_dir`` (summary.json, config.json, labels.parquet, clusters.parquet), the
    clustered run (chi via ``read_chi``, result.json), ``sample_dir`` (result.json, summary.json,
    llc.json, traces.parquet if present), ``aux_dir`` (aux.json: pc_variances, pearson,
    ridge.pearson), ``analysis_dir`` (leak.png and leak.parquet, each if present).

    ``report_dir`` must be new, empty, or an earlier report (it holds report.json), which is
    replaced. ``progress``: show progress bars while the cluster and document pages are written.

    Raises:
        FileNotFoundError: if an input directory or a file it must hold is missing, or a stage did not finish.
        ValueError: if the inputs disagree with each other (a ``sample_dir`` the aux model was not fit
            on, a clustering of another aux model's predictions, ...), or ``report_dir`` holds something else.
    """
    config = config or ReportConfig()
    inputs = read_inputs(cluster_dir, sample_dir, aux_dir, analysis_dir)
    traced = trace_components(inputs, config) if inputs.traces is not None else []
    report_dir = _claim(Path(report_dir), inputs, config)
    plots = _write_plots(report_dir, inputs, traced, config)
    clustering = summarize_clusters(inputs, config)
    examples = _write_cluster_pages(report_dir, inputs, clustering, config, progress)
    _write_document_pages(report_dir, inputs, examples, config, progress)
    return _write_index(report_dir, inputs, clustering, plots, config)


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
        for page in report_dir.glob("index-*.html"):
            page.unlink()
        for sub in ("plots", "clusters", "documents"):
            if (report_dir / sub).exists():
                shutil.rmtree(report_dir / sub)
    (report_dir / "plots").mkdir(parents=True, exist_ok=True)
    (report_dir / "clusters").mkdir()
    (report_dir / "documents").mkdir()
    write_json(report_dir / REPORT_MARKER, {
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": asdict(config),
        "inputs": {k: str(getattr(inputs, k)) if getattr(inputs, k) is not None else None
                   for k in ("cluster_dir", "sample_dir", "input_dir", "aux_dir", "analysis_dir")},
    })
    return report_dir


def _write_plots(report_dir: Path, inputs: Inputs, traced: list[str], config: ReportConfig) -> list[PlotEntry]:
    """Draw the index page's plots into ``report_dir/plots``: one entry each, without a file where its input is missing."""
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
                             "head grid, then the MLPs, then embeddings and other components, each kind on its own "
                             "colour scale from 0 (an LLC grows with the component's parameters, so embed and unembed "
                             "would make every head one colour): compare kinds by the numbers in the cells."))
    else:
        out.append(PlotEntry("llc", "LLC per component", None, f"{inputs.sample_dir}/llc.json holds no LLC."))
    reliability = inputs.reliability
    if reliability:
        components = inputs.sample_meta["components"]
        plot_reliability(reliability, components, plots / "reliability.png", threshold=config.min_reliability)
        plot_component_map([np.nan if reliability.get(c) is None else reliability[c]
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
                          f"Variance of the {len(variances)} PCs of chi the aux model predicts (training split), "
                          f"PC1 (the largest variance) to PC{len(variances)}, numbered as in the Pearson plot."))
        ceiling = inputs.aux.get("noise_ceiling")
        plot_pearson(inputs.aux["pearson"], inputs.aux["ridge"]["pearson"], plots / "pearson.png", ceiling)
        out.append(PlotEntry("pearson", "Aux model accuracy", "plots/pearson.png",
                          "Validation Pearson r per PC (held-out documents; PC1 to PC"
                          f"{len(inputs.aux['pearson'])}, as in the PCA plot), aux model beside the ridge baseline"
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


def _write_cluster_pages(report_dir: Path, inputs: Inputs, clustering: Clustering, config: ReportConfig,
                         progress: bool) -> np.ndarray:
    """One page per cluster, written as soon as it is rendered, ``PAGES_PER_BATCH`` clusters' examples
    read at a time; returns the examples shown that have a document, [3, n] int64: their doc_id, row
    and label, what the document pages need."""
    limits = None
    if config.shared_profile_scale and len(clustering):
        limits = color_limits(clustering.profiles.ravel(), diverging=config.profile == "zscore")
    paged = len(clustering) > INDEX_PAGE_CLUSTERS
    listed_on = np.empty(len(clustering), np.int64)
    listed_on[clustering.by_size()] = np.arange(len(clustering)) // INDEX_PAGE_CLUSTERS + 1
    shown = []
    with tqdm(total=len(clustering), desc="report: cluster pages", unit="page", disable=not progress) as bar:
        for start in range(0, len(clustering), PAGES_PER_BATCH):
            positions = np.arange(start, min(start + PAGES_PER_BATCH, len(clustering)))
            batch = clustering.clusters(positions)
            for i, c in zip(positions.tolist(), batch):
                write_text(report_dir / "clusters" / f"{c.label}.html",
                           cluster_page(inputs, c, i, clustering.labels, config, limits,
                                        listed_on=int(listed_on[i]) if paged else None))
                bar.update()
            shown.append(np.array([(x.doc_id, x.row, x.label) for c in batch for x in c.examples
                                   if x.doc_id is not None], np.int64).reshape(-1, 3))
    return np.concatenate(shown).T if shown else np.zeros((3, 0), np.int64)


def _write_document_pages(report_dir: Path, inputs: Inputs, examples: np.ndarray, config: ReportConfig,
                          progress: bool) -> None:
    """One page per document that holds example tokens (``examples``: their doc_id, row and label, from
    ``_write_cluster_pages``), ``PAGES_PER_BATCH`` documents' examples read at a time."""
    doc_id, row, label = examples[:, np.lexsort((examples[1], examples[0]))]
    documents, starts = np.unique(doc_id, return_index=True)
    bounds = np.append(starts, len(doc_id))
    with tqdm(total=len(documents), desc="report: document pages", unit="page", disable=not progress) as bar:
        for first in range(0, len(documents), PAGES_PER_BATCH):
            last = min(first + PAGES_PER_BATCH, len(documents))
            rows = slice(bounds[first], bounds[last])
            batch = examples_in_context(inputs.labels, row[rows], label[rows], config)
            for d in range(first, last):
                mine = batch[bounds[d] - bounds[first]:bounds[d + 1] - bounds[first]]
                write_text(report_dir / "documents" / f"{documents[d]}.html",
                           document_page(int(documents[d]), mine, config))
                bar.update()


def _write_index(report_dir: Path, inputs: Inputs, clustering: Clustering, plots: list[PlotEntry],
                 config: ReportConfig) -> Path:
    """The index pages, largest clusters first, ``INDEX_PAGE_CLUSTERS`` to a page: index.html (page 1,
    with the run summary and plots) last, as the report's finished marker; returns its path."""
    order = clustering.by_size()
    pages = [order[a:a + INDEX_PAGE_CLUSTERS] for a in range(0, len(order), INDEX_PAGE_CLUSTERS)] or [order]
    n_tokens = inputs.labels.num_rows
    for page in range(len(pages), 1, -1):
        write_text(report_dir / index_file(page), later_index_page(
            clustering.clusters(pages[page - 1], examples=False), page, len(pages), len(clustering), n_tokens))
    index = report_dir / INDEX
    write_text(index, index_page(inputs, clustering, clustering.clusters(pages[0], examples=False), plots, config,
                                 n_pages=len(pages)))
    return index
