"""Lightning callbacks that turn the sampler's draws into results.

- :class:`SusceptibilityCallback`: streaming float64 covariance sums -> chi[component, token].
- :class:`LLCCallback`: per-component learning coefficients, per chain and mean/std.
- :class:`BIFCallback`: streaming cross-covariance sums -> BIF[component, train, query].
- :class:`DiagnosticsCallback`: loss traces, divergence detection.
"""

from .diagnostics import ChainDivergedError, DiagnosticsCallback
from .influence import BIFCallback
from .llc import LLCCallback
from .susceptibility import SusceptibilityCallback

__all__ = ["BIFCallback", "ChainDivergedError", "DiagnosticsCallback", "LLCCallback", "SusceptibilityCallback"]
