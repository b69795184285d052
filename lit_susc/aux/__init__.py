"""The aux model (spec, "Upsampling Data Using an Auxiliary Model"): predict per-token
susceptibilities from residual-stream activations, then upsample to any number of tokens.

    fit:     features.py (activations) + pca.py (targets) + split.py -> model.py, ridge.py -> bundle.py
    predict: predict.py streams text through the base model and the aux model into shards
"""

from .bundle import AuxBundle
from .features import ResidualFeatures, feature_layers
from .fit import FeatureConfig, fit_aux, prepare_fit_data
from .model import AuxDataModule, AuxModel, AuxModelConfig
from .pca import PCABasis, TargetConfig, fit_pca
from .predict import StreamConfig, read_pcs, read_tokens, upsample
from .ridge import RidgeConfig, ridge_pearson
from .split import SplitConfig, document_split

__all__ = [
    "AuxBundle", "AuxDataModule", "AuxModel", "AuxModelConfig", "FeatureConfig", "PCABasis", "ResidualFeatures",
    "RidgeConfig", "SplitConfig", "StreamConfig", "TargetConfig", "document_split", "feature_layers", "fit_aux",
    "fit_pca", "prepare_fit_data", "read_pcs", "read_tokens", "ridge_pearson", "upsample",
]
