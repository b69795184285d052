"""A training history read through its susceptibilities: one sample run per checkpoint, compared.

Given finished sample runs of the same components on the same observation tokens at checkpoints
with training steps s_1 < ... < s_K (``develop`` runs them; any ``SusceptibilityResult`` will do),
``development`` computes, per component c and checkpoint k:

    llc_k(c), llc_std_k(c)   the LLC's mean and standard deviation over chains; llc_se = std / sqrt(chains)
    reliability_k(c)         the share of chi's across-token variance that is signal (lit_susc.result)

per component and pair of consecutive checkpoints (k-1, k), the change of chi in units of its noise,

    change_k(c) = median_t |chi_k[c, t] - chi_{k-1}[c, t]| / median_t sqrt(se_k[c, t]^2 + se_{k-1}[c, t]^2)

(the two runs' chains are independent, so the variance of a difference is the sum of the two).
Where chi did not change, the difference is noise of standard deviation sqrt(se_k^2 + se_{k-1}^2)
and its absolute value has median 0.674 times that (half-normal): ``NOISE_CHANGE``, the level
below which a change is not told from noise;

and one PCA of every checkpoint's per-token susceptibility vectors together (the rows x_{k,t} =
chi_k[:, t], components as columns), each component standardised over all K x T rows: mean mu_j,
standard deviation s_j, the covariance C of u = (x - mu) / s (a correlation matrix),
C = V diag(lambda) V^T (lit_susc.statistics: its sign rule), and each token's trajectory
z_{k,t} = V_m^T u_{k,t} through the first m PCs. One basis for all checkpoints, so that a token's
path through it is its development. Standardised, because chi's scale differs by orders of
magnitude between components (embed and unembed against a head): unstandardised, PC1 would be
little more than the embedding's chi.

chi is compared in each run's own convention, which must be the same for all; with different
nbeta per checkpoint (per-checkpoint calibration) the seed convention's chi scales with nbeta, and
``development`` says so in ``notes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .result import SusceptibilityResult
from .rundir import (
    mark_finished,
    read_parquet,
    read_safetensors,
    read_summary,
    stage_remedy,
    write_parquet,
    write_safetensors,
)
from .statistics import Moments, column_covariance, principal_components

VERSION = 2
"""What ``development`` computes and writes, numbered: a develop run whose comparison was made by
another version makes it again (2: the joint PCA of standardised components)."""
NOISE_CHANGE = 0.674
"""median |N(0, 1)|: ``change`` where chi did not change at all (module docstring)."""
COMPONENTS_FILE, CHANGES_FILE, TRAJECTORIES_FILE, PCA_FILE = (
    "components.parquet", "changes.parquet", "trajectories.parquet", "joint_pca.safetensors")

TOKEN_CLASSES = ("space", "newline", "digit", "punctuation", "word start", "word piece", "other")
"""The classes ``token_class`` sorts a token's text into (the trajectory plot's colours)."""


def token_class(text: str) -> str:
    """A coarse class of a token's text: whitespace (``newline`` if it holds one, else ``space``),
    ``digit``, ``punctuation`` (no letter or digit), ``word start`` (letters after a leading space),
    ``word piece`` (letters without one), ``other``."""
    if not text or text.isspace():
        return "newline" if "\n" in text else "space"
    core = text.strip()
    if core.isdigit():
        return "digit"
    if not any(ch.isalnum() for ch in core):
        return "punctuation"
    if core.replace("_", "").isalpha():
        return "word start" if text[0].isspace() else "word piece"
    return "other"


@dataclass
class JointPCA:
    """One PCA of every checkpoint's per-token susceptibility vectors (module docstring)."""

    mean: torch.Tensor
    """mu [components]."""
    scale: torch.Tensor
    """s [components]: each component's standard deviation over all rows (1 where it is constant)."""
    basis: torch.Tensor
    """V_m^T [m, components]: the first m PCs, in descending variance."""
    variances: torch.Tensor
    """lambda [components]: every PC's variance (all of them, for the explained share)."""

    def scores(self, chi: torch.Tensor) -> torch.Tensor:
        """z = V_m^T (x - mu) / s for each token's vector: chi [components, tokens] -> [tokens, m]."""
        return ((chi.T.to(torch.float64) - self.mean) / self.scale) @ self.basis.T

    @property
    def explained(self) -> torch.Tensor:
        """lambda_j / sum(lambda) of the kept PCs [m]."""
        return self.variances[:len(self.basis)] / self.variances.clamp(min=0).sum()


def joint_pca(chis: Sequence[torch.Tensor], n_pcs: int) -> JointPCA:
    """The PCA of the rows chi_k[:, t] of every checkpoint k (module docstring); ``chis`` each
    [components, tokens]."""
    rows = [c.T.to(torch.float64) for c in chis]
    moments = Moments()
    for r in rows:
        moments.update(r)
    mean, scale = moments.mean(), moments.scale()
    variances, vectors = principal_components(column_covariance(rows, mean, scale))
    return JointPCA(mean=mean, scale=scale, basis=vectors[:min(n_pcs, len(variances))].contiguous(),
                    variances=variances)


def chi_change(chi_a: torch.Tensor, se_a: torch.Tensor, chi_b: torch.Tensor, se_b: torch.Tensor) -> dict[str, np.ndarray]:
    """Per component (rows of [components, tokens]): median_t |chi_b - chi_a|, median_t of
    sqrt(se_a^2 + se_b^2), and their ratio ``change`` (module docstring)."""
    abs_change = (chi_b - chi_a).abs().median(dim=1).values.double()
    noise = (se_a.double() ** 2 + se_b.double() ** 2).sqrt().median(dim=1).values
    return {"median_abs_change": abs_change.numpy(), "median_se": noise.numpy(), "change": (abs_change / noise).numpy()}


@dataclass
class Development:
    """LLC, reliability and chi's changes over checkpoints, and the joint PCA (module docstring)."""

    steps: list[int]
    components: list[str]
    per_component: pa.Table
    """One row per checkpoint and component: step, component, llc, llc_std, llc_se, chains, reliability."""
    changes: pa.Table
    """One row per consecutive pair and component: step_from, step, component, median_abs_change,
    median_se, change."""
    pca: JointPCA
    trajectories: pa.Table
    """One row per checkpoint and observation token: step, token (its index), pc1..pcm, and, for a
    language model, its text and class (``token_class``)."""
    notes: list[str] = field(default_factory=list)
    """What the reader must know to compare the checkpoints (different nbeta, ...)."""

    def llc(self, component: str) -> tuple[np.ndarray, np.ndarray]:
        """(llc, llc_se) of ``component`` over the steps."""
        rows = [r for r in self.per_component.to_pylist() if r["component"] == component]
        return np.array([r["llc"] for r in rows]), np.array([r["llc_se"] for r in rows])

    def save(self, directory: str | Path, summary: dict | None = None) -> Path:
        """Write the tables, the PCA and ``summary.json`` (last: the finished marker)."""
        directory = Path(directory)
        write_parquet(directory / COMPONENTS_FILE, self.per_component)
        write_parquet(directory / CHANGES_FILE, self.changes)
        write_parquet(directory / TRAJECTORIES_FILE, self.trajectories)
        write_safetensors(directory / PCA_FILE, {"mean": self.pca.mean, "scale": self.pca.scale,
                                                 "basis": self.pca.basis, "variances": self.pca.variances})
        mark_finished(directory, {"steps": self.steps, "components": self.components, "notes": self.notes,
                                  "pca_explained": self.pca.explained.tolist(), **(summary or {})})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Development:
        directory = Path(directory)
        remedy = stage_remedy(directory)
        summary = read_summary(directory)
        pca = read_safetensors(directory / PCA_FILE, remedy)
        return cls(steps=summary["steps"], components=summary["components"],
                   per_component=read_parquet(directory / COMPONENTS_FILE, remedy),
                   changes=read_parquet(directory / CHANGES_FILE, remedy), pca=JointPCA(**pca),
                   trajectories=read_parquet(directory / TRAJECTORIES_FILE, remedy), notes=summary["notes"])


def check_comparable(results: Sequence[SusceptibilityResult], names: Sequence[str]) -> None:
    """Raise ValueError unless every run has the first one's components, observation shape, convention
    and (where recorded) token ids: otherwise their chi do not describe the same things."""
    first, name0 = results[0], names[0]
    for res, name in zip(results[1:], names[1:]):
        if res.components != first.components:
            raise ValueError(f"{name} has components {res.components[:3]}..., {name0} {first.components[:3]}...: "
                             "every checkpoint must sample the same components")
        if res.chi.shape != first.chi.shape:
            raise ValueError(f"{name} observed {tuple(res.chi.shape[1:])} tokens, {name0} "
                             f"{tuple(first.chi.shape[1:])}: every checkpoint must observe the same tokens")
        if res.convention != first.convention:
            raise ValueError(f"{name}'s chi is in the {res.convention} convention, {name0}'s in {first.convention}")
        if (res.tokens is not None and first.tokens is not None
                and not res.tokens.column("token_id").equals(first.tokens.column("token_id"))):
            raise ValueError(f"{name} observed other tokens than {name0} (a different tokenizer or data): every "
                             "checkpoint must observe the same tokens")


def development(results: Sequence[SusceptibilityResult], steps: Sequence[int], n_pcs: int = 8,
                names: Sequence[str] | None = None) -> Development:
    """The development of ``results`` (one finished run per checkpoint, at ``steps``, ascending) as
    the module docstring defines it; ``n_pcs`` PCs of the joint PCA are kept."""
    steps = [int(s) for s in steps]
    names = list(names) if names is not None else [f"step {s}" for s in steps]
    if len(results) != len(steps) or not results:
        raise ValueError(f"development needs one result per step, got {len(results)} results and {len(steps)} steps")
    if sorted(set(steps)) != steps:
        raise ValueError(f"the checkpoints' steps must be distinct and ascending, got {steps}")
    check_comparable(results, names)
    components = results[0].components
    flat = [r.chi.reshape(len(components), -1) for r in results]
    flat_se = [r.chi_se.reshape(len(components), -1) if r.chi_se is not None else None for r in results]

    rows = []
    for step, res in zip(steps, results):
        for c in components:
            llc = res.llc.get(c, {})
            chains = len(llc.get("per_chain", [])) or None
            std = llc.get("std", math.nan)
            rows.append({"step": step, "component": c, "llc": llc.get("mean", math.nan), "llc_std": std,
                         "llc_se": std / math.sqrt(chains) if chains else math.nan, "chains": chains,
                         "reliability": res.reliability.get(c, math.nan)})
    change_rows = []
    for k in range(1, len(results)):
        if flat_se[k] is None or flat_se[k - 1] is None:
            continue
        change = chi_change(flat[k - 1], flat_se[k - 1], flat[k], flat_se[k])
        for i, c in enumerate(components):
            change_rows.append({"step_from": steps[k - 1], "step": steps[k], "component": c,
                                **{key: float(v[i]) for key, v in change.items()}})

    pca = joint_pca(flat, n_pcs)
    n_tokens = flat[0].shape[1]
    columns: dict[str, list] = {"step": [], "token": []}
    for step, chi in zip(steps, flat):
        columns["step"] += [step] * n_tokens
        columns["token"] += list(range(n_tokens))
    scores = torch.cat([pca.scores(chi) for chi in flat]).numpy()
    table = pa.table({"step": pa.array(columns["step"], pa.int64()), "token": pa.array(columns["token"], pa.int64()),
                      **{f"pc{j + 1}": pa.array(scores[:, j]) for j in range(scores.shape[1])}})
    tokens = results[0].tokens
    if tokens is not None and "token" in tokens.column_names:
        text = tokens.column("token").to_pylist() * len(steps)
        table = table.append_column("text", pa.array(text, pa.string()))
        table = table.append_column("class", pa.array([token_class(t) for t in text], pa.string()))

    notes = []
    nbetas = sorted({r.nbeta for r in results})
    if len(nbetas) > 1 and results[0].convention == "seed":
        notes.append(f"the checkpoints were sampled at different nbeta ({', '.join(f'{b:g}' for b in nbetas)}): "
                     "seed-convention chi scales with nbeta, so part of its change between them is that")
    return Development(steps=steps, components=components, per_component=pa.Table.from_pylist(rows),
                       changes=pa.Table.from_pylist(change_rows, schema=_CHANGES_SCHEMA), pca=pca,
                       trajectories=table, notes=notes)


_CHANGES_SCHEMA = pa.schema([("step_from", pa.int64()), ("step", pa.int64()), ("component", pa.string()),
                             ("median_abs_change", pa.float64()), ("median_se", pa.float64()),
                             ("change", pa.float64())])
