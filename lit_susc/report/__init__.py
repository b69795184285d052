"""The report: a static HTML cluster browser of a clustering, with the run's diagnostic plots.

    from lit_susc.report import ReportConfig, build_report
    index = build_report("runs/quickstart/report", cluster_dir="runs/quickstart/cluster",
                         sample_dir="runs/quickstart/sample")      # open index in a browser, from disk

browser.py writes the report directory; config.py holds what it shows (ReportConfig), inputs.py
reads and checks what it is built from, statistics.py computes the numbers the pages show,
pages.py renders them as HTML (with the stylesheet and script in assets/), and plots.py draws the
figures.
"""

from .browser import build_report
from .config import ReportConfig
from .plots import (
    ComponentGrid,
    component_grid,
    plot_cluster_sizes,
    plot_llc_heatmap,
    plot_pca_variance,
    plot_pearson,
    plot_profile,
    plot_reliability,
    plot_traces,
)

__all__ = [
    "ComponentGrid", "ReportConfig", "build_report", "component_grid", "plot_cluster_sizes", "plot_llc_heatmap",
    "plot_pca_variance", "plot_pearson", "plot_profile", "plot_reliability", "plot_traces",
]
