"""PNG figures without pyplot: a ``matplotlib.figure.Figure`` on the Agg canvas, written atomically.

Drawing through pyplot would need ``matplotlib.use("Agg")``, which switches the backend of the
whole process (a notebook's included); a bare ``Figure`` needs no backend at all.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["Figure", "save_png"]


def save_png(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` (to a temporary name, then renamed, so a crash leaves no
    half-written figure) and return the path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figures are written as PNG; give a path ending in .png, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=dpi)
    tmp.replace(path)
    return path
