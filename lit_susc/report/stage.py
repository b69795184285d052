"""The ``report`` stage: the cluster browser of a finished clustering.

    python run.py report --cluster_dir runs/quickstart/cluster --sample_dir runs/quickstart/sample \\
        --aux_dir runs/quickstart/aux_fit --analysis_dir runs/quickstart/analyse --report_dir runs/quickstart/report

Writes ``report_dir/index.html`` (last) with the plots and one page per cluster (lit_susc.report.browser).
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
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="run.py report", description=__doc__)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of the fields below")
    parser.add_class_arguments(ReportStageConfig)
    cfg = parser.parse_args(argv)
    for name in ("report_dir", "cluster_dir", "sample_dir"):
        if not cfg[name]:
            raise ValueError(f"report needs --{name}")
    config = ReportConfig(**{f.name: cfg[f.name] for f in fields(ReportConfig)})
    index = build_report(cfg.report_dir, cluster_dir=cfg.cluster_dir, sample_dir=cfg.sample_dir, aux_dir=cfg.aux_dir,
                         analysis_dir=cfg.analysis_dir, config=config)
    print(f"\nlit-susc: cluster browser written; open {index.resolve().as_uri()}")
    return index
