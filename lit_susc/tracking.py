"""Weights & Biases records of the pipeline's stages, through Lightning's WandbLogger.

Every stage gets one wandb run in the pipeline's group (named ``<group>/<stage>``). Stages with a
Lightning Trainer (sample, aux_fit) log their steps to it live; once a stage has finished, the
pipeline adds the stage's summary numbers, its plots and its tables to the same run (same id):

    model        the tiny LM's training summary
    sample       summary (reliability per component and its median), per-component table (LLC,
                 reliability, R-hat, ESS), SGLD loss traces, LLC heatmap, reliability bars
    aux_fit      per-PC Pearson (aux and ridge), the mean noise ceiling, PCA explained variance
    aux_predict  summary
    cluster      summary, the cluster table (with each cluster's most frequent tokens), size histogram
    analyse      the leak table, CKA and Jaccard-kNN by layer
    report       summary and the path of the cluster browser

A develop run (lit_susc.develop) logs each checkpoint's sample run as ``<group>/step<N>`` and
its comparison as ``<group>/development`` (``log_development``: the LLC curves against step).

``WANDB_MODE=offline`` (or ``wandb.mode: offline``) needs no login; sync later with ``wandb sync``.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from .rundir import read_json, read_parquet, read_summary, stage_remedy
from .tinylm import SUMMARY_FILE


def _numbers(obj: dict, prefix: str) -> dict[str, float]:
    """The numeric leaves of a (nested) JSON object, as flat ``prefix/key`` metrics."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[f"{prefix}/{key}"] = float(value)
        elif isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}/{key}"))
    return out


def cluster_table(cluster_dir: Path, top_tokens: int = 8) -> pa.Table:
    """clusters.parquet plus each cluster's most frequent tokens (one string)."""
    from .report.statistics import frequent_tokens

    remedy = stage_remedy(cluster_dir)
    clusters = read_parquet(cluster_dir / "clusters.parquet", remedy)
    frequent = frequent_tokens(read_parquet(cluster_dir / "labels.parquet", remedy, columns=["label", "token"]),
                               top_tokens)
    return clusters.append_column("top_tokens", pa.array(
        [" ".join(repr(t) for t, _ in frequent.get(label, [])) for label in clusters.column("label").to_pylist()],
        pa.string()))


def stage_record(pipeline, stage: str) -> tuple[dict[str, float], dict[str, Path], dict[str, pa.Table]]:
    """(metrics, images, tables) of a finished stage; plots are drawn into the pipeline's state directory."""
    from .pipeline import MARKERS
    from .report import plots

    d = pipeline.stage_dir(stage)
    remedy = stage_remedy(d, marker=MARKERS[stage])
    figures = pipeline.state_dir / "plots" / stage
    figures.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, float] = {}
    images: dict[str, Path] = {}
    tables: dict[str, pa.Table] = {}
    if stage == "model":
        metrics = _numbers({k: v for k, v in read_json(d / SUMMARY_FILE, remedy).items() if k != "config"}, stage)
    elif stage == "sample":
        summary = read_summary(d)
        metrics = _numbers(summary, stage)
        llc = read_json(d / "llc.json", remedy)
        components = list(llc)
        reliability = summary.get("reliability", {})
        diagnostics = ({r.pop("component"): r for r in read_parquet(d / "diagnostics.parquet", remedy).to_pylist()}
                       if (d / "diagnostics.parquet").exists() else {})
        tables["sample/llc"] = pa.table({"component": components, "llc_mean": [llc[c]["mean"] for c in components],
                                         "llc_std": [llc[c]["std"] for c in components],
                                         "reliability": [reliability.get(c) for c in components],
                                         "rhat": [diagnostics.get(c, {}).get("rhat") for c in components],
                                         "ess": [diagnostics.get(c, {}).get("ess") for c in components]})
        if reliability:
            images["sample/reliability"] = plots.plot_reliability(reliability, components, figures / "reliability.png",
                                                                  threshold=0.3)
        images["sample/traces"] = plots.plot_traces(read_parquet(d / "traces.parquet", remedy), components[:4],
                                                    figures / "traces.png")
        images["sample/llc"] = plots.plot_llc_heatmap(llc, components, figures / "llc.png")
    elif stage == "aux_fit":
        aux = read_json(d / "aux.json", remedy)
        metrics = {f"{stage}/pearson_mean": aux["pearson_mean"], f"{stage}/ridge_pearson_mean": aux["ridge"]["pearson_mean"],
                   f"{stage}/n_pcs": float(aux["n_pcs"]),
                   **({f"{stage}/noise_ceiling_mean": aux["noise_ceiling_mean"]} if "noise_ceiling_mean" in aux else {})}
        images["aux_fit/pearson"] = d / "pearson.png"
        images["aux_fit/pca_variance"] = plots.plot_pca_variance(aux["pc_variances"], figures / "pca_variance.png")
        tables["aux_fit/pearson"] = pa.table({"pc": list(range(1, len(aux["pearson"]) + 1)), "aux": aux["pearson"],
                                              "ridge": aux["ridge"]["pearson"]})
    elif stage == "aux_predict":
        metrics = _numbers(read_summary(d), stage)
    elif stage == "cluster":
        metrics = _numbers(read_summary(d), stage)
        table = cluster_table(d)
        tables["cluster/clusters"] = table
        images["cluster/sizes"] = plots.plot_cluster_sizes(table, figures / "cluster_sizes.png")
    elif stage == "analyse":
        leak = read_parquet(d / "leak.parquet", remedy)
        tables["analyse/leak"] = leak
        images["analyse/leak"] = d / "leak.png"
        for row in leak.to_pylist():
            metrics.update({f"analyse/{k}/layer{row['layer']}": float(v) for k, v in row.items()
                            if k.startswith(("cka", "jaccard"))})
    return metrics, images, tables


def log_stage(pipeline, stage: str) -> None:
    """Add a finished stage's numbers, plots and tables to its wandb run (module docstring)."""
    from lightning.pytorch.loggers import WandbLogger

    metrics, images, tables = stage_record(pipeline, stage)
    logger = WandbLogger(**pipeline.wandb_args(stage))
    if metrics:
        logger.log_metrics(metrics)
    for key, path in images.items():
        if Path(path).exists():
            logger.log_image(key=key, images=[str(path)])
    for key, table in tables.items():
        logger.log_table(key=key, columns=table.column_names, data=[list(r.values()) for r in table.to_pylist()])
    logger.experiment.summary.update(metrics)
    logger.experiment.finish()


def log_development(wandb, output_dir: Path, dev, directory: Path) -> None:
    """A develop run's comparison as one wandb run ``<group>/development`` (lit_susc.develop): per
    component, the LLC, its standard error and chi's reliability against training step (the wandb
    step is the training step, so the curves plot against it), the change of chi between
    checkpoints, the development page's figures and the per-component table."""
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(**wandb.run_args(output_dir, "development", read_summary(directory)["fingerprint"],
                                          output_dir / "develop"))
    rows = dev.per_component.to_pylist()
    changes = {(r["step"], r["component"]): r["change"] for r in dev.changes.to_pylist()}
    for step in dev.steps:
        metrics = {}
        for r in (r for r in rows if r["step"] == step):
            metrics |= {f"llc/{r['component']}": r["llc"], f"llc_se/{r['component']}": r["llc_se"],
                        f"reliability/{r['component']}": r["reliability"]}
            if (step, r["component"]) in changes:
                metrics[f"chi_change/{r['component']}"] = changes[step, r["component"]]
        logger.log_metrics(metrics, step=step)
    for png in sorted(directory.glob("*.png")):
        logger.log_image(key=f"development/{png.stem}", images=[str(png)])
    logger.log_table(key="development/components", columns=dev.per_component.column_names,
                     data=[list(r.values()) for r in rows])
    logger.experiment.finish()
