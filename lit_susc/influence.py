"""Bayesian influence functions on disk: the (train x query) matrix, the samples, the top influences.

BIF(z_i, q) = -Cov(l_i(w), l_q(w)) over the localized posterior's draws (design.md section 2;
the sums are in lit_susc.covariance). Negative values mean that upweighting the training sample
z_i lowers the query's expected loss (z_i helps q); positive values, that it raises it.

Layout of a finished BIF run directory::

    bif.safetensors          bif [components, train, query] float64
    bif.json                 components, granularity, shapes, description, LLC, config
    train.parquet            one row per training sample (or token): index, document, text, ...
    query.parquet            one row per query sample (or token)
    top_influences.parquet   per component and query, the top_k training samples by |BIF|
    top_influences.md        the same, readable, with the texts
    traces.parquet           per-chain SGLD traces
    summary.json             written last: its presence means the run finished
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from .rundir import (
    mark_finished,
    read_json,
    read_parquet,
    read_safetensors,
    require_finished,
    stage_remedy,
    write_json,
    write_parquet,
    write_safetensors,
    write_text,
)

DESCRIPTION = ("BIF(z_i, q) = -Cov(l_i, l_q) over the localized posterior (uncentred per-sample losses); "
               "negative: upweighting z_i lowers q's loss")


def top_influences(bif: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query (column of a [train, query] matrix), the k training rows of largest |BIF|.

    Returns (indices [k, query], values [k, query]), strongest first.
    """
    k = min(k, bif.shape[0])
    idx = bif.abs().topk(k, dim=0).indices
    return idx, bif.gather(0, idx)


def _texts(table: pa.Table | None, n: int) -> list[str]:
    if table is not None and "text" in table.column_names:
        return table.column("text").to_pylist()
    return [f"#{i}" for i in range(n)]


@dataclass
class BIFResult:
    """bif [n_components, n_train, n_query] (float64) with the samples it refers to."""

    bif: torch.Tensor
    components: list[str]
    granularity: str
    llc: dict[str, dict] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    train: pa.Table | None = None
    """One row per training sample (or token), aligned with bif's rows; a ``text`` column if known."""
    query: pa.Table | None = None
    """One row per query sample (or token), aligned with bif's columns."""

    def top_table(self, k: int = 10) -> pa.Table:
        """Per component and query, the k training samples of largest |BIF|, strongest first."""
        train_text, query_text = _texts(self.train, self.bif.shape[1]), _texts(self.query, self.bif.shape[2])
        cols: dict[str, list] = {n: [] for n in ("component", "query", "rank", "train", "bif", "effect",
                                                  "query_text", "train_text")}
        for c, name in enumerate(self.components):
            idx, val = top_influences(self.bif[c], k)
            for q in range(idx.shape[1]):
                for rank in range(idx.shape[0]):
                    i, v = int(idx[rank, q]), float(val[rank, q])
                    for key, value in (("component", name), ("query", q), ("rank", rank), ("train", i), ("bif", v),
                                       ("effect", "lowers query loss" if v < 0 else "raises query loss"),
                                       ("query_text", query_text[q]), ("train_text", train_text[i])):
                        cols[key].append(value)
        return pa.table(cols)

    def save(self, directory: str | Path, top_k: int = 10, markdown_queries: int = 50) -> Path:
        """Write the outputs (module docstring); ``summary.json`` last."""
        directory = Path(directory)
        write_safetensors(directory / "bif.safetensors", {"bif": self.bif.to(torch.float64)})
        _, n_train, n_query = self.bif.shape
        write_json(directory / "bif.json", {
            "components": self.components, "granularity": self.granularity, "n_train": n_train,
            "n_query": n_query, "description": DESCRIPTION, "llc": self.llc, "config": self.config})
        for name, table in (("train", self.train), ("query", self.query)):
            if table is not None:
                write_parquet(directory / f"{name}.parquet", table)
        top = self.top_table(top_k)
        write_parquet(directory / "top_influences.parquet", top)
        write_text(directory / "top_influences.md", _markdown(top, self.granularity, markdown_queries))
        mark_finished(directory, {"components": len(self.components), "train": n_train, "query": n_query,
                                  "granularity": self.granularity})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BIFResult:
        directory = Path(directory)
        require_finished(directory, "BIF run", "run or resume it first")
        if not (directory / "bif.json").exists():
            raise FileNotFoundError(f"{directory} holds no BIF run (bif.json is missing): is it a susceptibility run?")
        remedy = stage_remedy(directory)
        meta = read_json(directory / "bif.json", remedy)
        tables = {n: read_parquet(directory / f"{n}.parquet", remedy) if (directory / f"{n}.parquet").exists()
                  else None for n in ("train", "query")}
        return cls(bif=read_safetensors(directory / "bif.safetensors", remedy)["bif"], components=meta["components"],
                   granularity=meta["granularity"], llc=meta["llc"], config=meta["config"], **tables)


def _quote(text: str) -> str:
    return "> " + text.replace("\n", "\n> ")


def _markdown(top: pa.Table, granularity: str, max_queries: int) -> str:
    rows = top.to_pylist()
    lines = ["# Most influential training samples per query", "",
             f"{DESCRIPTION}. Granularity: {granularity}. Ranked by |BIF|.", ""]
    seen: set[tuple[str, int]] = set()
    for row in rows:
        key = (row["component"], row["query"])
        if key not in seen:
            if sum(1 for c, _ in seen if c == row["component"]) >= max_queries:
                continue
            seen.add(key)
            lines += ["", f"## component `{row['component']}`, query {row['query']}", "", _quote(row["query_text"]), ""]
        lines += [f"{row['rank'] + 1}. train {row['train']}, BIF {row['bif']:.4g} ({row['effect']})", "",
                  _quote(row["train_text"]), ""]
    return "\n".join(lines) + "\n"
