"""lit-susc: susceptibilities of language models with PyTorch Lightning.

Spec: "How to Scale Susceptibilities" (Gordon, Adam, Hoogland, Murfet 2026).
"""

from .api import estimate_susceptibilities
from .components import discover_components, resolve_components, select_components
from .config import SGLDConfig
from .langevin import SGLD, RMSPropSGLD
from .result import SusceptibilityResult, read_chi

__all__ = [
    "RMSPropSGLD", "SGLD", "SGLDConfig", "SusceptibilityResult", "discover_components",
    "estimate_susceptibilities", "read_chi", "resolve_components", "select_components",
]
