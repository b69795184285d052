"""A finished pipeline run, read back: ``lit_susc.load_run("runs/quickstart")``.

    run = load_run("runs/quickstart")
    run.chi, run.chi_se        # float64 [components, contexts, tokens-1] (the sample stage)
    run.components, run.tokens # row names; pyarrow token table (doc_id, document, position, token, ...)
    run.llc, run.diagnostics   # per component: learning coefficient; R-hat, ESS, ...
    run.reliability            # per component: the share of chi's across-token variance that is signal
    run.labels, run.clusters   # cluster stage: the clustered tokens with their label; one row per cluster
    run.predicted_chi(0, 1000) # aux predict: predicted chi of the upsampled tokens, read lazily
    run.leak                   # analyse: the leak table (CKA, Jaccard-kNN by layer)
    run.report                 # the cluster browser's index.html

Every file is read through lit_susc.rundir (checksums verified). A stage that has not finished is
None here (``run.finished`` says which did); the sample stage must have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import torch

from .pipeline import MARKERS, STAGES
from .result import SusceptibilityResult, read_chi
from .rundir import is_finished, read_parquet, require_finished, stage_remedy


@dataclass
class PipelineRun:
    """What a finished pipeline wrote (module docstring)."""

    directory: Path
    sample: SusceptibilityResult
    """The ground-truth susceptibilities: chi, chi_se, tokens, LLCs, diagnostics, reliability, schedule."""
    finished: dict[str, bool]
    """stage -> whether its directory holds finished results (lit_susc.pipeline's markers)."""
    labels: pa.Table | None = None
    """The clustered tokens (the aux predictions' token table, or the sample's) with ``label`` (-1: none)."""
    clusters: pa.Table | None = None
    """One row per cluster: label, size, conductance, volume, seed_node, round."""
    leak: pa.Table | None = None
    """The leak check: CKA and Jaccard-kNN by layer, ground truth and aux."""

    @property
    def chi(self) -> torch.Tensor:
        return self.sample.chi

    @property
    def chi_se(self) -> torch.Tensor:
        return self.sample.chi_se

    @property
    def components(self) -> list[str]:
        return self.sample.components

    @property
    def tokens(self) -> pa.Table:
        return self.sample.tokens

    @property
    def llc(self) -> dict:
        return self.sample.llc

    @property
    def diagnostics(self) -> dict:
        return self.sample.diagnostics

    @property
    def reliability(self) -> dict:
        return self.sample.reliability

    @property
    def report(self) -> Path | None:
        """The cluster browser's index.html, when the report stage finished."""
        return self.directory / "report" / "index.html" if self.finished["report"] else None

    def predicted_chi(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Predicted chi [components, tokens start..stop) of the aux predict stage, read shard by shard."""
        require_finished(self.directory / "aux_predict", "aux prediction", "run the pipeline to completion first")
        return read_chi(self.directory / "aux_predict", start, stop)


def load_run(directory: str | Path) -> PipelineRun:
    """The outputs of the pipeline run in ``directory`` (its output_dir); see the module docstring."""
    directory = Path(directory)
    finished = {stage: is_finished(directory / stage, MARKERS[stage]) for stage in STAGES}  # stage s writes s/
    require_finished(directory / "sample", "sampling run", f"is {directory} a pipeline's output_dir? Run the "
                     "pipeline (python run.py pipeline --config ...) to at least its sample stage")
    run = PipelineRun(directory=directory, sample=SusceptibilityResult.load(directory / "sample"), finished=finished)
    cluster = directory / "cluster"
    if finished["cluster"]:
        run.labels = read_parquet(cluster / "labels.parquet", stage_remedy(cluster))
        run.clusters = read_parquet(cluster / "clusters.parquet", stage_remedy(cluster))
    analyse = directory / "analyse"
    if finished["analyse"]:
        run.leak = read_parquet(analyse / "leak.parquet", stage_remedy(analyse, marker=MARKERS["analyse"]))
    return run
