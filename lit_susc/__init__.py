"""lit-susc: susceptibilities of language models with PyTorch Lightning.

Spec: "How to Scale Susceptibilities" (Gordon, Adam, Hoogland, Murfet 2026).
"""

from .api import estimate_bif, estimate_susceptibilities
from .calibration import calibrate
from .components import discover_components, resolve_components, select_components
from .config import ComputeConfig, SGLDConfig
from .develop import Checkpoint, DevelopConfig, develop_checkpoints
from .development import Development, development
from .influence import BIFResult
from .langevin import SGLD, RMSPropSGLD
from .pipeline_run import PipelineRun, load_run
from .result import SusceptibilityResult, read_chi, read_chi_se

__all__ = [
    "SGLD",
    "BIFResult",
    "Checkpoint",
    "ComputeConfig",
    "DevelopConfig",
    "Development",
    "PipelineRun",
    "RMSPropSGLD",
    "SGLDConfig",
    "SusceptibilityResult",
    "calibrate",
    "develop_checkpoints",
    "development",
    "discover_components",
    "estimate_bif",
    "estimate_susceptibilities",
    "load_run",
    "read_chi",
    "read_chi_se",
    "resolve_components",
    "select_components",
]
