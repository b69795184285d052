"""Susceptibility results on disk: safetensors shards of chi, JSON metadata, Parquet tables.

Layout of a finished run directory::

    chi/shard-00000.safetensors   chi[:, tokens start:stop] (float64, components x tokens)
    chi_se/shard-00000.safetensors  its standard error, same shape, convention and sharding
    result.json                   components, convention, nbeta, observation shape, shard index,
                                  per-component reliability
    llc.json                      per-component LLC: mean, std, per_chain
    diagnostics.parquet           per component: R-hat, bulk ESS, autocorrelation time, step norms
    tokens.parquet                (language models) one row per observation token
    traces.parquet                per-chain SGLD traces
    summary.json                  written last: its presence means the run finished

Nothing is pickled. Shards are read lazily (``read_chi``), so large runs need not fit in memory.
Every file is verified against the checksum beside it when read (lit_susc.rundir, Checksums).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from .covariance import reliability as _reliability
from .rundir import (
    TOKENS_FILE,
    mark_finished,
    read_json,
    read_parquet,
    read_shards,
    require_finished,
    stage_remedy,
    write_json,
    write_parquet,
    write_shard,
)
from .statistics import DESCRIPTIONS, check_convention, convert_chi, convert_chi_se


@dataclass
class SusceptibilityResult:
    """chi [n_components, *observation shape] (float64) with everything needed to read it.

    ``chi_se`` is chi's standard error (batch means, lit_susc.covariance), same shape and
    convention; ``reliability[name]`` = max(0, 1 - mean_t chi_se^2 / var_t chi), the estimated
    share of that component's variance over tokens that is signal (the expected Pearson between
    two independent runs); NaN where the SE is unknown.
    """

    chi: torch.Tensor
    components: list[str]
    convention: str
    nbeta: float
    llc: dict[str, dict] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    tokens: pa.Table | None = None
    chi_se: torch.Tensor | None = None
    reliability: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, dict] = field(default_factory=dict)
    """Per component: rhat, ess, iat and the step norms (lit_susc.diagnostics)."""
    schedule: dict[str, dict] = field(default_factory=dict)
    """Per component: burn_in, steps_between_draws, rounds and draws per chain (lit_susc.schedule)."""

    def __post_init__(self) -> None:
        if self.chi_se is not None:
            if self.chi_se.shape != self.chi.shape:
                raise ValueError(f"chi_se has shape {tuple(self.chi_se.shape)}, chi {tuple(self.chi.shape)}")
            if not self.reliability:
                self.reliability = {name: _reliability(self.chi[i], self.chi_se[i])
                                    for i, name in enumerate(self.components)}

    @property
    def description(self) -> str:
        return DESCRIPTIONS[check_convention(self.convention)]

    @property
    def median_reliability(self) -> float | None:
        """The median over components of ``reliability`` (None when no component has one)."""
        finite = [r for r in self.reliability.values() if math.isfinite(r)]
        return statistics.median(finite) if finite else None

    def in_convention(self, convention: str) -> torch.Tensor:
        """chi in the given convention (lit_susc.statistics: baker = -seed / nbeta)."""
        return convert_chi(self.chi, self.nbeta, self.convention, convention)

    def se_in_convention(self, convention: str) -> torch.Tensor:
        """chi_se in the given convention (baker = seed / nbeta: a standard error has no sign)."""
        if self.chi_se is None:
            raise ValueError("this result holds no chi_se")
        return convert_chi_se(self.chi_se, self.nbeta, self.convention, convention)

    def save(self, directory: str | Path, shard_tokens: int = 1 << 20, extra: dict | None = None) -> Path:
        """Write the run's outputs; ``summary.json`` last, so a crash leaves no finished-looking run."""
        directory = Path(directory)
        tensors = {"chi": self.chi, **({"chi_se": self.chi_se} if self.chi_se is not None else {})}
        flat = {k: v.reshape(len(self.components), -1).to(torch.float64) for k, v in tensors.items()}
        n_tokens = flat["chi"].shape[1]
        shards = []
        for i, start in enumerate(range(0, max(n_tokens, 1), shard_tokens)):
            stop = min(start + shard_tokens, n_tokens)
            shard = {"start": start, "stop": stop}
            for key, values in flat.items():  # chi's file is "file"; its SE's "chi_se_file"
                shard["file" if key == "chi" else f"{key}_file"] = write_shard(
                    directory, key, i, values[:, start:stop],
                    metadata={"convention": self.convention, "start": str(start), "stop": str(stop)})
            shards.append(shard)
        meta = {
            "components": self.components, "convention": self.convention, "description": self.description,
            "nbeta": self.nbeta, "observation_shape": list(self.chi.shape[1:]), "n_tokens": n_tokens,
            "shards": shards, "reliability": _json_floats(self.reliability), "schedule": self.schedule,
            "config": self.config,
        }
        write_json(directory / "result.json", meta)
        write_json(directory / "llc.json", self.llc)
        if self.tokens is not None:
            write_parquet(directory / TOKENS_FILE, self.tokens)
        if self.diagnostics:
            write_parquet(directory / "diagnostics.parquet",
                          pa.Table.from_pylist([{"component": k, **v} for k, v in self.diagnostics.items()]))
        mark_finished(directory, {
            "components": len(self.components), "tokens": n_tokens, "convention": self.convention,
            "median_reliability": self.median_reliability, "reliability": _json_floats(self.reliability),
            **(extra or {}),
        })
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SusceptibilityResult:
        directory = Path(directory)
        meta = read_metadata(directory)
        shape = (len(meta["components"]), *meta["observation_shape"])
        chi = read_chi(directory).reshape(shape)
        has_se = all("chi_se_file" in shard for shard in meta["shards"])
        chi_se = read_chi_se(directory).reshape(shape) if has_se else None
        remedy = stage_remedy(directory)
        tokens = read_parquet(directory / TOKENS_FILE, remedy) if (directory / TOKENS_FILE).exists() else None
        llc = read_json(directory / "llc.json", remedy)
        diagnostics = {}
        if (directory / "diagnostics.parquet").exists():
            diagnostics = {row.pop("component"): row
                           for row in read_parquet(directory / "diagnostics.parquet", remedy).to_pylist()}
        return cls(diagnostics=diagnostics, chi=chi, components=meta["components"], convention=meta["convention"], nbeta=meta["nbeta"],
                   llc=llc, config=meta["config"], tokens=tokens, chi_se=chi_se,
                   reliability={k: float("nan") if v is None else v for k, v in meta.get("reliability", {}).items()},
                   schedule=meta.get("schedule", {}))


def _json_floats(values: dict[str, float]) -> dict[str, float | None]:
    """NaN as null: JSON has no NaN."""
    return {k: v if math.isfinite(v) else None for k, v in values.items()}


def read_metadata(directory: str | Path) -> dict:
    """result.json of a finished run (sampling or aux predict): components, shard index, ..."""
    require_finished(directory, "susceptibility run", "run or resume the sampling first")
    return read_json(Path(directory) / "result.json", stage_remedy(directory))


def shard_remedy(directory: str | Path, meta: dict) -> Callable[[int], str]:
    """What to do when shard i of the run ``meta`` describes (its result.json) is corrupt. A sampling
    run writes its shards again from its units (``stage_remedy``); an aux prediction predicts again
    the shards whose token table (its shard's marker) is missing, and only those."""
    directory = Path(directory)
    if meta.get("source") != "aux":
        remedy = stage_remedy(directory)
        return lambda i: remedy
    return lambda i: stage_remedy(directory, delete=[directory / meta["tokens"][i]["file"]],
                                  outcome="only that shard is predicted again")


def read_chi(directory: str | Path, start: int = 0, stop: int | None = None,
             components: list[int] | None = None) -> torch.Tensor:
    """chi[:, start:stop] as [n_components, stop-start], reading only the shards it overlaps."""
    return _read_shards(directory, "chi", start, stop, components)


def read_chi_se(directory: str | Path, start: int = 0, stop: int | None = None,
                components: list[int] | None = None) -> torch.Tensor:
    """chi_se[:, start:stop] (chi's standard error), read like ``read_chi``."""
    return _read_shards(directory, "chi_se", start, stop, components)


def _read_shards(directory: str | Path, key: str, start: int, stop: int | None,
                 components: list[int] | None) -> torch.Tensor:
    meta = read_metadata(directory)
    return read_shards(directory, meta["shards"], key, start, stop, file_key="file" if key == "chi" else f"{key}_file",
                       components=components, rows=len(components or meta["components"]), dtype=torch.float64,
                       remedy=shard_remedy(directory, meta))
