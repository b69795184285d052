"""PNG figures without pyplot: a ``matplotlib.figure.Figure`` on the Agg canvas, written atomically.

Drawing through pyplot would need ``matplotlib.use("Agg")``, which switches the backend of the
whole process (a notebook's included); a bare ``Figure`` needs no backend at all.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .rundir import atomic_path

__all__ = ["Figure", "save_png"]


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically, like every file: lit_susc.rundir) and return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG; give a path ending in .png, not {path.name!r}")
    with atomic_path(path, suffix=".png") as tmp:  # savefig takes the format from the suffix
        FigureCanvasAgg(fig)
        fig.savefig(tmp, dpi=dpi)
    return path
