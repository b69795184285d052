"""The report: a static HTML cluster browser (browser.py) and the figures it shows (plots.py).

    from lit_susc.report import ReportConfig, build_report
    index = build_report("runs/quickstart/report", cluster_dir="runs/quickstart/clusters",
                         sample_dir="runs/quickstart")      # open index in a browser, from disk
"""

from .browser import ReportConfig, build_report
from .plots import (ComponentGrid, component_grid, plot_cluster_sizes, plot_llc_heatmap, plot_pca_variance,
                    plot_pearson, plot_profile, plot_reliability, plot_traces)

__all__ = [
    "ComponentGrid", "ReportConfig", "build_report", "component_grid", "plot_cluster_sizes", "plot_llc_heatmap",
    "plot_pca_variance", "plot_pearson", "plot_profile", "plot_reliability", "plot_traces",
]
