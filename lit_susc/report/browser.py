"""The cluster browser: a static HTML report of a clustering, with the run's diagnostic plots.

    report_dir/
      report.json          what the report was built from (also marks the directory as a report)
      plots/*.png          SGLD traces, LLC heatmap, PCA variance, Pearson, cluster sizes, leak
      clusters/<label>.html   one page per cluster (its profile heatmap inline, as SVG)
      documents/<doc_id>.html one page per document with example tokens: those tokens, of every
                           cluster, in position order (each example on a cluster page links to its row)
      index.html           contents, run summary, clusters against token identity, plots, glossary,
                           the sortable and searchable cluster table; written last

``index.html`` is written last, through a temporary name, and removed first when a report is
rebuilt, so a directory without it holds no finished report.

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

from ..rundir import write_json, write_text
from .config import ReportConfig
from .inputs import Inputs, read_inputs, trace_components
from .pages import PlotEntry, cluster_page, document_page, index_page
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
from .statistics import Cluster, Example, summarize_clusters

REPORT_MARKER = "report.json"
INDEX = "index.html"


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
        ValueError: if the inputs disagree with each other (a ``sample_dir`` the aux model was not fit
            on, a clustering of another aux model's predictions, ...), or ``report_dir`` holds something else.
    """
    config = config or ReportConfig()
    inputs = read_inputs(cluster_dir, sample_dir, aux_dir, analysis_dir)
    traced = trace_components(inputs, config) if inputs.traces is not None else []
    report_dir = _claim(Path(report_dir), inputs, config)
    plots = _write_plots(report_dir, inputs, traced, config)
    clusters, identity = summarize_clusters(inputs, config)
    _write_cluster_pages(report_dir, inputs, clusters, config)
    _write_document_pages(report_dir, clusters, config)
    index = report_dir / INDEX
    write_text(index, index_page(inputs, clusters, identity, plots, config))  # last: the report's finished marker
    return index


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


def _write_cluster_pages(report_dir: Path, inputs: Inputs, clusters: list[Cluster], config: ReportConfig) -> None:
    """One page per cluster, each written as soon as it is rendered."""
    limits = None
    if config.shared_profile_scale and clusters:
        limits = color_limits(np.concatenate([c.profile for c in clusters]), diverging=config.profile == "zscore")
    for i, c in enumerate(clusters):
        (report_dir / "clusters" / f"{c.label}.html").write_text(cluster_page(inputs, clusters, i, config, limits),
                                                                encoding="utf-8")


def _write_document_pages(report_dir: Path, clusters: list[Cluster], config: ReportConfig) -> None:
    """One page per document that holds example tokens (none when the token table has no doc_id)."""
    by_document: dict[int, list[Example]] = {}
    for c in clusters:
        for x in c.examples:
            if x.doc_id is not None:
                by_document.setdefault(x.doc_id, []).append(x)
    for doc_id, examples in by_document.items():
        (report_dir / "documents" / f"{doc_id}.html").write_text(document_page(doc_id, examples, config),
                                                                 encoding="utf-8")
