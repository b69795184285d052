"""Lightning callbacks that turn the sampler's draws into results.

- :class:`SusceptibilityCallback`: streaming float64 covariance sums -> chi[component, token].
- :class:`LLCCallback`: per-component learning coefficients, per chain and mean/std.
- :class:`BIFCallback`: streaming cross-covariance sums -> BIF[component, train, query].
- :class:`DiagnosticsCallback`: loss traces, divergence detection.
- :class:`ChainProgressBar`: the progress bar, by round, with component, chains and draw.
"""

# The callbacks are built on lit_susc's core, and lit_susc's engine runs them: the package comes
# first, so that whichever of the two a program imports first, no callback module runs half
# initialised (lit_susc's modules import callbacks by submodule for the same reason).
import lit_susc  # noqa: F401

from .diagnostics import ChainDivergedError, DiagnosticsCallback
from .influence import BIFCallback
from .llc import LLCCallback
from .progress import ChainProgressBar
from .susceptibility import SusceptibilityCallback

__all__ = ["BIFCallback", "ChainDivergedError", "ChainProgressBar", "DiagnosticsCallback", "LLCCallback", "SusceptibilityCallback"]
