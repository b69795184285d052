"""A report's inputs: the cluster, sampling, aux-fit and analysis directories, read and cross-checked.

Everything is read and checked here, before the report writes anything, so inputs that do not
belong together leave no half-built report behind.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..aux.bundle import META_FILE
from ..aux.fit import sample_run_digest
from ..engine import RUN_FILE
from ..result import read_metadata
from ..rundir import (
    file_digest,
    read_json,
    read_parquet,
    read_summary,
    reading,
    require_finished,
    stage_remedy,
)
from .config import ReportConfig

TOKEN_COLUMNS = ("token", "context", "offset")
"""Token-table columns the report needs to show tokens in their context."""
WHERE_COLUMNS = ("document", "doc_id", "position")
"""Token-table columns that say where a token is, shown when present."""
CLUSTER_COLUMNS = ("label", "size", "conductance", "volume", "seed_node", "round")
"""clusters.parquet columns the report shows."""


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
    """labels.parquet's columns that the report uses: ``label``, ``TOKEN_COLUMNS`` and those of
    ``WHERE_COLUMNS`` it has (``document`` dictionary-encoded: one document name per token would be
    most of the table)."""
    clusters: pa.Table
    """clusters.parquet, sorted by label."""
    llc: dict
    traces: pa.Table | None
    aux: dict | None
    """aux.json of the aux fit."""
    leak: pa.Table | None
    """leak.parquet of the analysis, if it wrote one."""

    @property
    def components(self) -> list[str]:
        return self.input_meta["components"]

    @property
    def reliability(self) -> dict[str, float | None]:
        """component -> the sampling run's reliability of its chi (None: unknown); {} when it reports none."""
        return self.sample_meta.get("reliability") or {}


def read_inputs(cluster_dir: str | Path, sample_dir: str | Path, aux_dir: str | Path | None = None,
                analysis_dir: str | Path | None = None) -> Inputs:
    """Read and cross-check a report's inputs (see ``build_report``)."""
    cluster_dir = _require_dir(cluster_dir, "cluster_dir")
    sample_dir = _require_dir(sample_dir, "sample_dir")
    require_finished(cluster_dir, "clustering", "run `python run.py cluster --input_dir <run>` to completion first")
    cluster_config = _read_json(cluster_dir / "config.json", "the cluster stage writes it; rerun the stage",
                                stage_remedy(cluster_dir))
    input_dir = clustered_run(cluster_dir, cluster_config)
    input_meta = read_metadata(input_dir)
    sample_meta = read_metadata(sample_dir)
    aux = None
    if aux_dir is not None:
        aux_dir = _require_dir(aux_dir, "aux_dir")
        require_finished(aux_dir, "aux fit", "run `python run.py aux fit` to completion first")
        aux = _read_json(aux_dir / META_FILE, "`aux fit` writes it", stage_remedy(aux_dir))
        missing = [k for k in ("pc_variances", "pearson", "ridge") if k not in aux]
        if missing:
            raise ValueError(f"{aux_dir}/{META_FILE} lacks {missing}; is it the output of `aux fit`?")
    if input_meta.get("source") == "aux":
        fit_dir = _predicting_fit(cluster_dir, input_dir, input_meta, aux_dir)
        if fit_dir is not None:
            _check_fitted_on(fit_dir, sample_dir)
    elif not _same_run(input_dir, sample_dir):
        raise ValueError(f"the clustering in {cluster_dir} is of the sampling run {input_dir}, but sample_dir is "
                         f"{sample_dir}, another run; pass sample_dir={str(input_dir)!r}")
    elif aux_dir is not None:
        _check_fitted_on(aux_dir, sample_dir)
    if input_meta["components"] != sample_meta["components"]:
        raise ValueError(f"the clustered run {input_dir} and the sampling run {sample_dir} have different components "
                         f"({len(input_meta['components'])} vs {len(sample_meta['components'])}); pass the sampling "
                         "run the aux model was fitted on")

    labels = _read_labels(cluster_dir / "labels.parquet", stage_remedy(cluster_dir))
    missing = [c for c in ("label", *TOKEN_COLUMNS) if c not in labels.column_names]
    if missing:
        raise ValueError(f"{cluster_dir}/labels.parquet lacks columns {missing}: the report shows tokens in their "
                         "context, so it needs a clustering of a language-model run (`run.py sample` or `aux "
                         "predict`, whose token tables have token, context and offset)")
    if labels.num_rows != input_meta["n_tokens"]:
        raise ValueError(f"{cluster_dir}/labels.parquet has {labels.num_rows} rows but the clustered run {input_dir} "
                         f"has {input_meta['n_tokens']} tokens; the clustering is not of this run (rerun the stage)")
    clusters = _read_parquet(cluster_dir / "clusters.parquet", stage_remedy(cluster_dir))
    missing = [c for c in CLUSTER_COLUMNS if c not in clusters.column_names]
    if missing:
        raise ValueError(f"{cluster_dir}/clusters.parquet lacks columns {missing}; rerun the cluster stage")
    clusters = clusters.sort_by("label") if clusters.num_rows else clusters
    _check_labels(cluster_dir, labels, clusters)

    traces = (read_parquet(sample_dir / "traces.parquet", stage_remedy(sample_dir))
              if (sample_dir / "traces.parquet").exists() else None)
    leak = None
    if analysis_dir is not None:
        analysis_dir = _require_dir(analysis_dir, "analysis_dir")
        if (analysis_dir / "leak.parquet").exists():
            # leak.json is the leak check's marker (lit_susc.analysis.leak.LEAK_JSON; that module loads models)
            leak = read_parquet(analysis_dir / "leak.parquet", stage_remedy(analysis_dir, marker="leak.json"))
    return Inputs(
        cluster_dir=cluster_dir, sample_dir=sample_dir, input_dir=input_dir,
        aux_dir=Path(aux_dir) if aux_dir is not None else None, analysis_dir=analysis_dir,
        sample_meta=sample_meta, sample_summary=read_summary(sample_dir),
        input_meta=input_meta, cluster_config=cluster_config, cluster_summary=read_summary(cluster_dir),
        labels=labels, clusters=clusters,
        llc=_read_json(sample_dir / "llc.json", "every finished sampling run has one", stage_remedy(sample_dir)),
        traces=traces, aux=aux,
        leak=leak,
    )


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


def _run_digest(directory: Path) -> str | None:
    """``sample_run_digest`` of a directory that holds a sampling run's records, else None."""
    return sample_run_digest(directory) if (directory / RUN_FILE).exists() else None


def _same_run(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` hold one sampling run: the same directory, or a copy of it (moved elsewhere)."""
    return a.resolve() == b.resolve() or (_run_digest(a) is not None and _run_digest(a) == _run_digest(b))


def _check_fitted_on(aux_dir: Path, sample_dir: Path) -> None:
    """Refuse a ``sample_dir`` that is not the run the aux model in ``aux_dir`` was fit on.

    The digest of that run in aux.json (``sample_run``) decides, so the run may have moved since; a
    fit from before aux.json recorded it is judged by the ``sample_dir`` its config names, when that
    directory is still there. A fit that names no run at all is let through: nothing says which it was.
    """
    aux = read_json(aux_dir / META_FILE, stage_remedy(aux_dir))
    fitted_on = (aux.get("config") or {}).get("sample_dir")
    digest = aux.get("sample_run")
    if digest is not None:
        same = digest == _run_digest(sample_dir)
    elif fitted_on is not None and Path(fitted_on).is_dir():
        same = _same_run(Path(fitted_on), sample_dir)
    else:
        return
    if same:
        return
    if fitted_on:
        raise ValueError(f"the aux model in {aux_dir} was fit on the sampling run {fitted_on}, not on sample_dir "
                         f"{sample_dir} (another run); pass sample_dir={fitted_on!r} (or where that run is now)")
    raise ValueError(f"the aux model in {aux_dir} was not fit on sample_dir {sample_dir} (another run); pass the "
                     "sampling run it was fit on")


def _predicting_fit(cluster_dir: Path, input_dir: Path, input_meta: dict, aux_dir: Path | None) -> Path | None:
    """The aux fit whose model predicted the chi that ``cluster_dir`` clustered (``input_dir``, an aux
    prediction, records the digest of its aux.json): ``aux_dir``, refused when it is another fit;
    without one, the fit directory the prediction names, if it is still that fit; else None."""
    recorded = input_meta.get("config") or {}
    digest, named = recorded.get("aux"), recorded.get("aux_dir")
    if aux_dir is not None:
        if digest is not None and digest != file_digest(aux_dir / META_FILE):
            raise ValueError(f"the clustering in {cluster_dir} is of chi that the aux model in {named} predicted "
                             f"({input_dir}), but aux_dir is {aux_dir}, another fit; pass aux_dir={named!r} (or "
                             "where that fit is now), or the clustering of this aux model's predictions")
        return aux_dir
    if named is not None and (Path(named) / META_FILE).is_file() and file_digest(Path(named) / META_FILE) == digest:
        return Path(named)
    return None


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


def _require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {path} does not exist or is not a directory; pass the directory that "
                                f"stage wrote")
    return path


def _read_json(path: Path, hint: str, remedy: str) -> dict:
    """``path``, verified (``remedy``: what to do when it is corrupt); ``hint`` says who writes it."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; {hint}")
    return read_json(path, remedy)


def _read_parquet(path: Path, remedy: str) -> pa.Table:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the cluster stage writes it (rerun it)")
    return read_parquet(path, remedy)


def _read_labels(path: Path, remedy: str) -> pa.Table:
    """labels.parquet's columns that the report uses (``Inputs.labels``), verified."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; the cluster stage writes it (rerun it)")
    with reading(path, remedy) as checked:
        present = pq.read_schema(checked).names
        wanted = [c for c in ("label", *TOKEN_COLUMNS, *WHERE_COLUMNS) if c in present]
        return pq.read_table(checked, columns=wanted, read_dictionary=["document"] if "document" in present else None)


def _check_labels(cluster_dir: Path, labels: pa.Table, clusters: pa.Table) -> None:
    """labels.parquet and clusters.parquet must describe the same clusters, with the same sizes."""
    counts = pc.value_counts(labels.column("label").combine_chunks())
    found = {int(v["values"]): int(v["counts"]) for v in counts.to_pylist() if v["values"] >= 0}
    listed = dict(zip(map(int, clusters.column("label").to_pylist()), map(int, clusters.column("size").to_pylist())))
    if found != listed:
        differ = sorted(k for k in set(found) | set(listed) if found.get(k) != listed.get(k))
        raise ValueError(f"{cluster_dir}: labels.parquet and clusters.parquet disagree on clusters {differ[:5]} "
                         "(label missing or size different); the directory is inconsistent, rerun the stage")
