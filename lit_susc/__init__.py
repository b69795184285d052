"""lit-susc: susceptibilities of language models with PyTorch Lightning.

Spec: "How to Scale Susceptibilities" (Gordon, Adam, Hoogland, Murfet 2026).
"""

from .components import discover_components, resolve_components, select_components
from .config import ComputeConfig, SGLDConfig
from .influence import BIFResult
from .langevin import SGLD, RMSPropSGLD
from .result import SusceptibilityResult, read_chi, read_chi_se

__all__ = [
    "SGLD",
    "BIFResult",
    "ComputeConfig",
    "RMSPropSGLD",
    "SGLDConfig",
    "SusceptibilityResult",
    "calibrate",
    "discover_components",
    "estimate_bif",
    "estimate_susceptibilities",
    "read_chi",
    "read_chi_se",
    "resolve_components",
    "select_components",
]


def __getattr__(name: str):
    # The API pulls in the top-level ``callbacks`` package, which itself imports from lit_susc;
    # importing it lazily keeps ``import callbacks`` and ``import lit_susc`` order-free.
    if name in ("estimate_susceptibilities", "estimate_bif"):
        from . import api

        return getattr(api, name)
    if name == "calibrate":  # it calls the API, so it comes in lazily too
        from .calibration import calibrate

        return calibrate
    raise AttributeError(f"module 'lit_susc' has no attribute {name!r}")
