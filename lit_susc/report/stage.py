"""The ``report`` stage: the cluster browser of a finished clustering.

    python run.py report --cluster_dir runs/quickstart/cluster --sample_dir runs/quickstart/sample \\
        --aux_dir runs/quickstart/aux_fit --analysis_dir runs/quickstart/analyse --report_dir runs/quickstart/report

Writes ``report_dir/index.html`` (last) with the plots, one page per cluster and, beyond 500
clusters, the index's further pages ``index-<k>.html`` (lit_susc.report.browser).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from .browser import build_report
from .config import ReportConfig


@dataclass
class ReportStageConfig(ReportConfig):
    """The report's inputs and what it shows."""

    report_dir: str = ""
    """Where index.html, clusters/ and plots/ go."""
    cluster_dir: str = ""
    """A finished ``run.py cluster`` directory."""
    sample_dir: str = ""
    """The finished ``run.py sample`` directory (traces, LLCs, component names)."""
    aux_dir: str | None = None
    """The ``run.py aux fit`` directory, for its PCA and Pearson plots (optional)."""
    analysis_dir: str | None = None
    """The ``run.py analyse`` directory, for the leak table and plot (optional)."""


def main(argv: list[str] | None = None) -> Path:
    from ..stage_cli import parse_settings

    stage = parse_settings(ReportStageConfig, argv, "lit-susc report", __doc__)
    for name in ("report_dir", "cluster_dir", "sample_dir"):
        if not getattr(stage, name):
            raise ValueError(f"report needs --{name}")
    config = ReportConfig(**{f.name: getattr(stage, f.name) for f in fields(ReportConfig)})
    index = build_report(stage.report_dir, cluster_dir=stage.cluster_dir, sample_dir=stage.sample_dir,
                         aux_dir=stage.aux_dir, analysis_dir=stage.analysis_dir, config=config)
    print(f"\nlit-susc: cluster browser written; open {index.resolve().as_uri()}")
    return index
