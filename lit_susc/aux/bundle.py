"""A fitted aux model on disk: everything ``aux predict`` needs, no pickle.

    aux_model.safetensors      encoder/decoder weights (float32)
    pca.safetensors            the PC basis of chi (mean, scale, components, variances; float64)
    normalization.safetensors  feature_mean, feature_std (inputs), target_scale (outputs); float64
    aux.json                   config, base-model identity, layers, shapes, per-PC Pearson (aux, ridge)
    pearson.png                per-PC validation Pearson, aux model beside ridge
    summary.json               written last: its presence means the fit finished

Predicted PC scores are ``aux(normalised features) * target_scale``; ``pca.to_components`` maps
them to component space and ``pca.whiten`` to the clustering basis.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from ..rundir import (
    mark_finished,
    read_json,
    read_safetensors,
    require_finished,
    stage_remedy,
    write_json,
    write_safetensors,
)
from .model import AuxModel, AuxModelConfig
from .pca import PCABasis

WEIGHTS_FILE, PCA_FILE, NORMALIZATION_FILE, META_FILE = (
    "aux_model.safetensors", "pca.safetensors", "normalization.safetensors", "aux.json")


@dataclass
class AuxBundle:
    """A trained aux model with its input normalisation, output scale, PC basis and metadata."""

    model: AuxModel
    pca: PCABasis
    feature_mean: Tensor
    """[n_features], float64."""
    feature_std: Tensor
    """[n_features], float64."""
    target_scale: Tensor
    """[n_pcs], float64: PC scores = model output * target_scale."""
    meta: dict
    """The contents of aux.json."""

    def save(self, directory: str | Path, summary: dict) -> None:
        """Write the bundle's files, ``summary.json`` last."""
        directory = Path(directory)
        weights = {k: v for k, v in self.model.state_dict().items() if k.startswith(("encoder.", "decoder."))}
        write_safetensors(directory / WEIGHTS_FILE, weights)
        self.pca.save(directory / PCA_FILE)
        write_safetensors(directory / NORMALIZATION_FILE, {"feature_mean": self.feature_mean,
                                                           "feature_std": self.feature_std,
                                                           "target_scale": self.target_scale})
        write_json(directory / META_FILE, self.meta)
        mark_finished(directory, summary)

    @classmethod
    def load(cls, directory: str | Path) -> AuxBundle:
        directory = Path(directory)
        require_finished(directory, "aux model", "run `aux fit` first")
        remedy = stage_remedy(directory)
        meta = read_json(directory / META_FILE, remedy)
        model = AuxModel(meta["n_features"], meta["n_pcs"], AuxModelConfig(**meta["config"]["model"]))
        model.load_state_dict(read_safetensors(directory / WEIGHTS_FILE, remedy))
        norm = read_safetensors(directory / NORMALIZATION_FILE, remedy)
        return cls(model=model.eval(), pca=PCABasis.load(directory / PCA_FILE, remedy), meta=meta, **norm)
