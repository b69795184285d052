"""Susceptibility results on disk: safetensors shards of chi, JSON metadata, Parquet tables.

Layout of a finished run directory::

    chi/shard-00000.safetensors   chi[:, tokens start:stop] (float64, components x tokens)
    result.json                   components, convention, nbeta, observation shape, shard index
    llc.json                      per-component LLC: mean, std, per_chain
    tokens.parquet                (language models) one row per observation token
    traces.parquet                per-chain SGLD traces
    summary.json                  written last: its presence means the run finished

Nothing is pickled. Shards are read lazily (``read_chi``), so large runs need not fit in memory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.torch import save_file

FINISHED_MARKER = "summary.json"


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def write_parquet(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


@dataclass
class SusceptibilityResult:
    """chi [n_components, *observation shape] (float64) with everything needed to read it."""

    chi: torch.Tensor
    components: list[str]
    convention: str
    nbeta: float
    llc: dict[str, dict] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    tokens: pa.Table | None = None

    @property
    def description(self) -> str:
        if self.convention == "seed":
            return "chi = nbeta * Cov(phi_C, l_xy - L_n) (the spec's estimator, 'seed' convention)"
        return "chi = -Cov(phi_C, l_xy - L_n) (Baker et al. 2025 / devinterp, 'baker' convention)"

    def in_convention(self, convention: str) -> torch.Tensor:
        """chi converted to the other convention (baker = -seed / nbeta)."""
        if convention == self.convention:
            return self.chi
        if {convention, self.convention} != {"seed", "baker"}:
            raise ValueError(f"unknown convention {convention!r}; use 'seed' or 'baker'")
        return self.chi * (-1.0 / self.nbeta if convention == "baker" else -self.nbeta)

    def save(self, directory: str | Path, shard_tokens: int = 1 << 20, extra: dict | None = None) -> Path:
        """Write the run's outputs; ``summary.json`` last, so a crash leaves no finished-looking run."""
        directory = Path(directory)
        (directory / "chi").mkdir(parents=True, exist_ok=True)
        flat = self.chi.reshape(len(self.components), -1).to(torch.float64)
        n_tokens = flat.shape[1]
        shards = []
        for i, start in enumerate(range(0, max(n_tokens, 1), shard_tokens)):
            stop = min(start + shard_tokens, n_tokens)
            name = f"chi/shard-{i:05d}.safetensors"
            tmp = directory / (name + ".tmp")
            save_file({"chi": flat[:, start:stop].contiguous()}, str(tmp),
                      metadata={"convention": self.convention, "start": str(start), "stop": str(stop)})
            tmp.replace(directory / name)
            shards.append({"file": name, "start": start, "stop": stop})
        meta = {
            "components": self.components, "convention": self.convention, "description": self.description,
            "nbeta": self.nbeta, "observation_shape": list(self.chi.shape[1:]), "n_tokens": n_tokens,
            "shards": shards, "config": self.config,
        }
        write_json(directory / "result.json", meta)
        write_json(directory / "llc.json", self.llc)
        if self.tokens is not None:
            write_parquet(directory / "tokens.parquet", self.tokens)
        write_json(directory / FINISHED_MARKER, {
            "components": len(self.components), "tokens": n_tokens, "convention": self.convention,
            **(extra or {}),
        })
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SusceptibilityResult:
        directory = Path(directory)
        meta = read_metadata(directory)
        chi = read_chi(directory).reshape(len(meta["components"]), *meta["observation_shape"])
        tokens = pq.read_table(directory / "tokens.parquet") if (directory / "tokens.parquet").exists() else None
        llc = json.loads((directory / "llc.json").read_text())
        return cls(chi=chi, components=meta["components"], convention=meta["convention"], nbeta=meta["nbeta"],
                   llc=llc, config=meta["config"], tokens=tokens)


def read_metadata(directory: str | Path) -> dict:
    directory = Path(directory)
    if not (directory / FINISHED_MARKER).exists():
        raise FileNotFoundError(f"{directory} holds no finished susceptibility run ({FINISHED_MARKER} is missing); "
                                "run or resume the sampling first")
    return json.loads((directory / "result.json").read_text())


def read_chi(directory: str | Path, start: int = 0, stop: int | None = None,
             components: list[int] | None = None) -> torch.Tensor:
    """chi[:, start:stop] as [n_components, stop-start], reading only the shards it overlaps."""
    directory = Path(directory)
    meta = read_metadata(directory)
    stop = meta["n_tokens"] if stop is None else min(stop, meta["n_tokens"])
    parts = []
    for shard in meta["shards"]:
        lo, hi = max(start, shard["start"]), min(stop, shard["stop"])
        if lo >= hi:
            continue
        with safe_open(str(directory / shard["file"]), framework="pt") as f:
            part = f.get_slice("chi")[:, lo - shard["start"]:hi - shard["start"]]
        parts.append(part if components is None else part[components])
    if not parts:
        return torch.zeros(len(components or meta["components"]), 0, dtype=torch.float64)
    return torch.cat(parts, dim=1)
