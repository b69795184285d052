"""The report's figures: PNG files written with matplotlib's Agg backend (no display needed).

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot, so
importing this module changes no global backend (a notebook keeps its own). Every function
writes one PNG (to a temporary name, then renamed, so a crash leaves no
half-written figure) and returns its path.

Per-component values (the LLC, a cluster's mean susceptibility profile) are drawn on one layout,
``component_grid``: attention heads on a layer x head heatmap, and every other component on a
strip below it: the MLPs in layer order, then ``embed``, ``pos_embed``, ``unembed``, then any
name outside the component naming scheme of ``lit_susc.models`` (``all`` of a generic model,
say), in the order given. So the figures work for any run, and a transformer's heads line up.
One colour scale spans every component, except in the LLC heatmap, where heads, MLPs and the
rest each get their own (``component_panels``). PC axes are numbered from PC1 (``pc_ticks``).
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pyarrow as pa

from ..figures import Figure, save_png

_HEAD = re.compile(r"layers\.(\d+)\.heads\.(\d+)")
_MLP = re.compile(r"layers\.(\d+)\.mlp")
_NAMED_STRIP = ("embed", "pos_embed", "unembed")
# Cells are labelled with their values only while the numbers stay legible.
_MAX_ANNOTATED_CELLS, _MAX_ANNOTATED_COLUMNS = 64, 16


@dataclass(frozen=True)
class ComponentGrid:
    """Where each component is drawn: heads on a layer x head grid, the rest on a strip."""

    n_layers: int
    """Rows of the head grid: 1 + the largest layer index of any head (0 without heads)."""
    n_heads: int
    """Columns of the head grid: 1 + the largest head index (0 without heads)."""
    cells: dict[str, tuple[int, int]]
    """Head component -> (row = layer, column = head)."""
    strip: list[str]
    """All other components, in drawing order: ``layers.{l}.mlp`` by layer, then ``embed``,
    ``pos_embed``, ``unembed``, then any other name in the order given (the 'other' part)."""


def component_grid(components: Sequence[str]) -> ComponentGrid:
    """Lay out component names: ``layers.{l}.heads.{h}`` at (l, h); everything else on the strip.

    Names that match no known layout are not an error: they go to the end of the strip, so runs
    of generic models (one component ``all``) still plot. Empty or repeated names are.

    Raises:
        ValueError: if ``components`` is empty or names a component twice.
    """
    components = list(components)
    if not components:
        raise ValueError("no components to lay out; pass the run's component names (result.json 'components')")
    repeated = sorted(c for c, n in Counter(components).items() if n > 1)
    if repeated:
        raise ValueError(f"component names must be unique, but {repeated[:5]} appear more than once")
    cells, mlps, named, other = {}, [], [], []
    for name in components:
        if m := _HEAD.fullmatch(name):
            cells[name] = (int(m.group(1)), int(m.group(2)))
        elif m := _MLP.fullmatch(name):
            mlps.append((int(m.group(1)), name))
        elif name in _NAMED_STRIP:
            named.append(name)
        else:
            other.append(name)
    named.sort(key=_NAMED_STRIP.index)
    n_layers = 1 + max((r for r, _ in cells.values()), default=-1)
    n_heads = 1 + max((c for _, c in cells.values()), default=-1)
    return ComponentGrid(n_layers=n_layers, n_heads=n_heads, cells=cells,
                         strip=[n for _, n in sorted(mlps)] + named + other)


def strip_label(name: str) -> str:
    """Short axis label of a strip component: ``layers.3.mlp`` -> ``mlp 3``."""
    m = _MLP.fullmatch(name)
    return f"mlp {m.group(1)}" if m else name


def _annotate(ax, matrix: np.ndarray, image) -> None:
    for (r, c), v in np.ndenumerate(matrix):
        if math.isfinite(v):
            red, green, blue, _ = image.cmap(image.norm(v))
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
            ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7, color="white" if dark else "black")


def _laid_out(values: Sequence[float], components: Sequence[str]) -> tuple[np.ndarray, list[str], ComponentGrid]:
    """(values as float64, component names, their grid), checking one value per component."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    components = list(components)
    if len(values) != len(components):
        raise ValueError(f"{len(values)} values for {len(components)} components; give one value per component")
    return values, components, component_grid(components)


def color_limits(values: Sequence[float], diverging: bool) -> tuple[float, float]:
    """(vmin, vmax) of a colour scale over ``values``' finite entries.

    diverging: (-B, B) with B = max |v| (1 where no value is finite and non-zero), so 0 sits in
    the middle; otherwise (min v, max v), widened to (v, v + 1) when all values are equal (0, 1
    when none is finite).
    """
    finite = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = finite[np.isfinite(finite)]
    if diverging:
        bound = float(np.abs(finite).max()) if finite.size else 0.0
        return (-bound, bound) if bound > 0 else (-1.0, 1.0)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return lo, hi if hi > lo else lo + 1.0


def _color_scale(values: np.ndarray, diverging: bool, limits: tuple[float, float] | None = None):
    """(norm, colormap) of a component map: red-blue centred on 0 when ``diverging``, else viridis;
    over ``limits`` when given, else ``color_limits(values)``; non-finite values map to light grey."""
    lo, hi = color_limits(values, diverging) if limits is None else limits
    cmap = matplotlib.colormaps["RdBu_r" if diverging else "viridis"]
    return matplotlib.colors.Normalize(lo, hi), cmap.with_extremes(bad="lightgrey")


@dataclass(frozen=True)
class Panel:
    """One part of a component map, drawn with its own axes and, in ``by_kind`` maps, its own colour bar."""

    kind: str
    """'heads' (the layer x head grid), 'strip' (every other component), or, split by kind, 'mlps'
    and 'others' (embed, pos_embed, unembed and names of no known layout)."""
    names: list[str]
    """Its components: heads in grid order (layer, then head), the rest in strip order."""
    matrix: np.ndarray
    """[layers, heads] for 'heads' (NaN where a cell has no component), else [1, len(names)]."""
    limits: tuple[float, float]
    """The (vmin, vmax) its colours span."""


def component_panels(values: Sequence[float], components: Sequence[str], *, diverging: bool = False,
                     by_kind: bool = False) -> list[Panel]:
    """The panels of a component map and the colour limits of each (``color_limits``).

    One scale over every component (``by_kind`` False: a head and an MLP compare by colour), or
    one per kind of component: heads, MLPs, the others. Split for values whose scale differs by
    kind: a head's LLC (0.2-1.4 in the quickstart) against embed's 41 would make one scale
    colour every head alike. Split, a panel of non-negative values (not ``diverging``) spans
    (0, its largest value), so that two nearly equal values (embed's and unembed's LLC) are not
    drawn at the two ends of a scale of their own. Empty panels are left out.

    Raises:
        ValueError: if ``values`` and ``components`` differ in length (or ``component_grid`` refuses the names).
    """
    values, components, grid = _laid_out(values, components)
    index = {c: i for i, c in enumerate(components)}
    heads = np.full((grid.n_layers, grid.n_heads), np.nan)
    for name, (r, c) in grid.cells.items():
        heads[r, c] = values[index[name]]
    head_names = sorted(grid.cells, key=grid.cells.get)
    if by_kind:
        mlps = [n for n in grid.strip if _MLP.fullmatch(n)]
        groups = [("heads", head_names), ("mlps", mlps), ("others", [n for n in grid.strip if n not in set(mlps)])]
    else:
        groups = [("heads", head_names), ("strip", grid.strip)]
    shared = color_limits(values, diverging)
    panels = []
    for kind, names in groups:
        if not names:
            continue
        mine = np.array([values[index[n]] for n in names])
        limits = shared
        if by_kind:
            limits = color_limits(mine, diverging)
            if not diverging and limits[0] >= 0:
                limits = (0.0, limits[1])
        panels.append(Panel(kind=kind, names=names, matrix=heads if kind == "heads" else mine[None, :],
                            limits=limits))
    return panels


def component_map_svg(values: Sequence[float], components: Sequence[str], *, label: str,
                      diverging: bool = False, muted: Sequence[str] = (), notes: Mapping[str, str] | None = None,
                      limits: tuple[float, float] | None = None) -> str:
    """``plot_component_map`` as inline SVG text: heads on the layer x head grid, the strip below, one
    ``<rect>`` per component whose tooltip gives its name and value, and a colour bar.

    Text instead of a PNG: 2.4 ms per map of Pythia-1.4B's 410 components, so the profiles of the
    spec's ~57k clusters take about 2 minutes rather than hours of matplotlib figures.

    Components in ``muted`` (e.g. those whose chi is mostly noise) are drawn hatched grey whatever
    their value; ``notes`` adds a line per component to its tooltip (e.g. its reliability).
    ``limits`` fixes the colour bar's range (one scale for many maps; values outside it take the
    end colours); None: ``color_limits`` of these values. The ``<svg>`` carries the range it
    used as ``data-vmin`` and ``data-vmax``.

    Raises:
        ValueError: if ``values`` and ``components`` differ in length (or ``component_grid`` refuses the names).
    """
    values, components, grid = _laid_out(values, components)
    norm, cmap = _color_scale(values, diverging, limits)
    rgb = np.round(255 * cmap(norm(np.ma.masked_invalid(values)))[:, :3]).astype(int)
    muted, notes = set(muted), notes or {}
    colors = ["url(#muted)" if name in muted else f"#{r:02x}{g:02x}{b:02x}" for name, (r, g, b) in zip(components, rgb)]
    index = {c: i for i, c in enumerate(components)}
    w, h, left, top = 24, 18, 50, 18
    rects, text = [], []

    def cell(name: str, x: float, y: float) -> None:
        i = index[name]
        value = f"{values[i]:+.3g}" if math.isfinite(values[i]) else "n/a"
        note = f"\n{notes[name]}" if name in notes else ""
        rects.append(f'<rect x="{x:g}" y="{y:g}" width="{w}" height="{h}" fill="{colors[i]}">'
                     f"<title>{html.escape(name)}: {value}{html.escape(note)}</title></rect>")

    for name, (r, c) in grid.cells.items():
        cell(name, left + c * w, top + r * h)
    text += [f'<text x="{left + (c + 0.5) * w:g}" y="{top - 4}" text-anchor="middle">{c}</text>'
             for c in range(grid.n_heads)]
    if grid.n_heads:
        text.append(f'<text x="{left - 4}" y="{top - 4}" text-anchor="end">head</text>')
    text += [f'<text x="{left - 4}" y="{top + (r + 0.75) * h:g}" text-anchor="end">layer {r}</text>'
             for r in range(grid.n_layers)]
    strip_y = top + grid.n_layers * h + (12 if grid.n_layers else 0)
    for k, name in enumerate(grid.strip):
        cell(name, left + k * w, strip_y)
        x, y = left + (k + 0.5) * w, strip_y + h + 4
        text.append(f'<text x="{x:g}" y="{y:g}" transform="rotate(60 {x:g} {y:g})">{html.escape(strip_label(name))}</text>')
    longest = max((len(strip_label(n)) for n in grid.strip), default=0)
    bar_x = left + max(grid.n_heads, len(grid.strip)) * w + 24
    bar_h = max(grid.n_layers * h, 4 * h)
    stops = "".join(f'<stop offset="{t:g}" stop-color="{matplotlib.colors.to_hex(cmap(t))}"/>'
                    for t in np.linspace(0, 1, 11))
    lo, hi = norm.vmin, norm.vmax
    text += [f'<text x="{bar_x + 16}" y="{top + 8}">{hi:+.3g}</text>',
             f'<text x="{bar_x + 16}" y="{top + bar_h}">{lo:+.3g}</text>',
             f'<text x="{bar_x}" y="{top + bar_h + 16}">{html.escape(label)}</text>']
    width = bar_x + 16 + max(60, 7 * len(label))
    height = max(strip_y + h + 8 + 5 * longest, top + bar_h + 24)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:g}" height="{height:g}" '
            f'data-vmin="{lo!r}" data-vmax="{hi!r}" font-family="sans-serif" font-size="10" role="img" aria-label="{html.escape(label)} per component">'
            f'<defs><linearGradient id="bar" x1="0" y1="1" x2="0" y2="0">{stops}</linearGradient>'
            '<pattern id="muted" width="4" height="4" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
            '<rect width="4" height="4" fill="#e4e4e4"/><line x1="0" y1="0" x2="0" y2="4" stroke="#b0b0b0" '
            'stroke-width="1.5"/></pattern></defs>'
            f'<rect x="{bar_x}" y="{top}" width="12" height="{bar_h}" fill="url(#bar)"/>'
            + "".join(rects) + "".join(text) + "</svg>")


def component_map_figure(values: Sequence[float], components: Sequence[str], *, title: str,
                         colorbar_label: str, diverging: bool = False, by_kind: bool = False) -> Figure:
    """The figure of ``plot_component_map``: one row of axes per ``component_panels`` panel.

    Layer axes carry one integer tick per layer (the heads' rows; the MLP strip is labelled
    ``mlp <layer>``), heads one per head.
    """
    panels = component_panels(values, components, diverging=diverging, by_kind=by_kind)
    grid = component_grid(components)
    cmap = matplotlib.colormaps["RdBu_r" if diverging else "viridis"].with_extremes(bad="lightgrey")
    widest = max(p.matrix.shape[1] for p in panels)
    width = min(16.0, max(5.0, 0.42 * widest + 2.5))
    heights = [max(1.2, 0.32 * grid.n_layers) if p.kind == "heads" else 0.5 for p in panels]
    # constrained layout keeps one colour bar per row beside its own axes
    fig = Figure(figsize=(width, sum(heights) + 1.2 + 0.5 * by_kind * len(panels)),
                 layout="constrained" if by_kind else None)
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    names = {"heads": "heads", "mlps": "MLPs", "others": "embeddings and others"}
    image = None
    for ax, panel in zip(axes, panels):
        norm = matplotlib.colors.Normalize(*panel.limits)
        image = ax.imshow(np.ma.masked_invalid(panel.matrix), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        if panel.matrix.size <= _MAX_ANNOTATED_CELLS and panel.matrix.shape[1] <= _MAX_ANNOTATED_COLUMNS:
            _annotate(ax, panel.matrix, image)
        if panel.kind == "heads":
            ax.set_ylabel("layer")
            ax.set_xlabel("head")
            ax.set_xticks(range(grid.n_heads))
            ax.set_yticks(range(grid.n_layers))
            ax.tick_params(labelsize=7)
        else:
            ax.set_yticks([])
            ax.set_xticks(range(len(panel.names)))
            many = len(panel.names) > 8
            ax.set_xticklabels([strip_label(n) for n in panel.names], rotation=90 if many else 0, fontsize=7)
        if by_kind:
            ax.set_title(names[panel.kind], fontsize=8, loc="left")
            fig.colorbar(image, ax=ax, label=colorbar_label if panel.kind == "heads" else None, aspect=10)
    if not by_kind:
        fig.colorbar(image, ax=list(axes), label=colorbar_label, shrink=0.9)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_component_map(values: Sequence[float], components: Sequence[str], path: str | Path, *, title: str,
                       colorbar_label: str, diverging: bool = False, by_kind: bool = False) -> Path:
    """Per-component values on the ``component_grid`` layout: head heatmap above, strip below.

    One colour scale serves every part, so a head and an MLP compare by colour; ``by_kind`` gives
    heads, MLPs and the other components a panel and colour bar each instead (``component_panels``).
    ``diverging`` centres a red-blue scale on 0 (for signed values such as z-scores); otherwise
    viridis. Non-finite values are drawn grey; panels of at most 64 cells in 16 columns are labelled with their
    values.

    Raises:
        ValueError: if ``values`` and ``components`` differ in length (or ``component_grid`` refuses the names).
    """
    return save_png(component_map_figure(values, components, title=title, colorbar_label=colorbar_label,
                                         diverging=diverging, by_kind=by_kind), path)


def plot_llc_heatmap(llc: Mapping[str, Mapping], components: Sequence[str], path: str | Path) -> Path:
    """Per-component LLC (``llc.json``: {component: {"mean", "std", "per_chain"}}), mean over chains.

    Heads, MLPs and the other components each get their own colour scale (``component_panels``
    with ``by_kind``): a component's LLC grows with its parameter count, so embed and unembed sit
    one to two orders of magnitude above a head, and one scale would draw every head alike.

    Raises:
        ValueError: if a component has no entry (or no "mean") in ``llc``.
    """
    missing = [c for c in components if "mean" not in llc.get(c, {})]
    if missing:
        raise ValueError(f"llc.json has no LLC mean for {missing[:5]} ({len(missing)} of {len(components)} "
                         "components); is it the llc.json of the same run as the component list?")
    chains = {len(llc[c].get("per_chain", [])) for c in components}
    n = f"{chains.pop()} chains" if len(chains) == 1 else "chains"
    return plot_component_map([float(llc[c]["mean"]) for c in components], components, path,
                              title=f"Local learning coefficient per component (mean over {n})\n"
                                    "heads, MLPs and embeddings each on their own colour scale",
                              colorbar_label="LLC", by_kind=True)


def plot_reliability(reliability: Mapping[str, float | None], components: Sequence[str], path: str | Path, *,
                     threshold: float) -> Path:
    """Each component's reliability (the share of its chi's variance over tokens that is signal) as
    bars in component order, those below ``threshold`` in grey; unknown values (null) are left out."""
    values = np.array([np.nan if reliability.get(c) is None else float(reliability[c]) for c in components])
    fig = Figure(figsize=(max(6.0, 0.16 * len(components) + 2), 3.2))
    ax = fig.subplots()
    x = np.arange(len(components))
    ax.bar(x, np.nan_to_num(values), color=np.where(values >= threshold, "tab:blue", "tab:gray"))
    ax.axhline(threshold, color="black", lw=0.8, ls="--", label=f"threshold {threshold:g}")
    finite = values[np.isfinite(values)]
    if finite.size:
        ax.axhline(float(np.median(finite)), color="tab:blue", lw=0.8, label=f"median {np.median(finite):.2f}")
    every = max(1, len(x) // 40)
    short = [re.sub(r"^layers\.(\d+)\.heads\.(\d+)$", r"h\1.\2", strip_label(c)) for c in components]
    ax.set_xticks(x[::every], short[::every], rotation=70, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("reliability")
    ax.set_title("Reliability of chi per component (share of its variance that is signal)", fontsize=9)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_profile(profile: Sequence[float], components: Sequence[str], path: str | Path, *,
                 title: str = "Mean susceptibility profile", colorbar_label: str = "mean z-scored chi",
                 diverging: bool = True) -> Path:
    """One cluster's mean susceptibility per component, on the same layout as the LLC heatmap."""
    return plot_component_map(profile, components, path, title=title, colorbar_label=colorbar_label,
                              diverging=diverging)


def plot_traces(traces_table: pa.Table, components: Sequence[str], path: str | Path, *,
                ref_loss_star: float | None = None) -> Path:
    """SGLD traces of ``components`` (``traces.parquet``), one panel per component, one colour per chain.

    Lines are every step's minibatch loss; dots are L_ref at the draws; ``ref_loss_star`` (the
    run's L_ref(w*), summary.json) is drawn dashed, so a chain drifting away from w* shows.

    Raises:
        ValueError: if ``components`` is empty, the table lacks a column, or holds no trace of a component.
    """
    components = list(components)
    if not components:
        raise ValueError("no components chosen for the trace plot; name at least one")
    needed = {"component", "chain", "step", "loss", "ref_loss"}
    if not needed <= set(traces_table.column_names):
        raise ValueError(f"the traces table lacks columns {sorted(needed - set(traces_table.column_names))}; "
                         "pass the traces.parquet of a sampling run")
    data = {c: traces_table.column(c).to_numpy(zero_copy_only=False) for c in needed}
    missing = [c for c in components if not (data["component"] == c).any()]
    if missing:
        raise ValueError(f"traces.parquet holds no trace of {missing[:5]}; traced components: "
                         f"{sorted(set(data['component'].tolist()))[:12]}")
    cols = min(2, len(components))
    rows = math.ceil(len(components) / cols)
    fig = Figure(figsize=(5.5 * cols, 2.6 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, components):
        mine = data["component"] == name
        for k, chain in enumerate(np.unique(data["chain"][mine])):
            sel = mine & (data["chain"] == chain)
            order = np.argsort(data["step"][sel])
            step, loss, ref = data["step"][sel][order], data["loss"][sel][order], data["ref_loss"][sel][order]
            colour = f"C{k % 10}"
            ax.plot(step, loss, lw=0.7, alpha=0.7, color=colour, label=f"chain {chain}")
            drawn = np.isfinite(ref)
            ax.plot(step[drawn], ref[drawn], ".", ms=3, color=colour)
        if ref_loss_star is not None:
            ax.axhline(ref_loss_star, color="black", lw=0.8, ls="--", label="L_ref(w*)")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(components):]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle("SGLD traces: minibatch loss (lines), L_ref at draws (dots)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


PC_AXIS_LABEL = "principal component (PC1: the largest variance)"
"""The PC axis of every report figure: PCs are numbered from 1, in the order of their variance."""


def pc_ticks(n_pcs: int, max_ticks: int = 12) -> tuple[list[int], list[str]]:
    """(positions, labels) of a PC axis of ``n_pcs`` PCs, numbered from 1 in every figure.

    PC k (1-based) is drawn at x = k and labelled ``PCk``. Ticks: PC1, then every multiple of
    the smallest step in 1, 2, 5, 10, 20, 50, ... that leaves at most ``max_ticks`` of them.
    """
    step = 1
    while len(positions := [1] + [k for k in range(step, n_pcs + 1, step) if k > 1]) > max_ticks:
        step = step * 5 // 2 if str(step).startswith("2") else step * 2  # 1, 2, 5, 10, 20, 50, ...
    return positions, [f"PC{k}" for k in positions]


def _pc_axis(ax, n_pcs: int) -> None:
    positions, labels = pc_ticks(n_pcs)
    ax.set_xticks(positions, labels, fontsize=7)
    ax.set_xlim(0.4, n_pcs + 0.6)  # no room left of PC1, where a tick at 0 would suggest a PC0
    ax.set_xlabel(PC_AXIS_LABEL)


def pca_variance_figure(pc_variances: Sequence[float], *, total_variance: float | None = None) -> Figure:
    """The figure of ``plot_pca_variance``."""
    v = np.asarray(pc_variances, dtype=np.float64).reshape(-1)
    if v.size == 0 or not np.isfinite(v).all() or (v < 0).any() or v.sum() <= 0:
        raise ValueError(f"pc_variances must be non-negative finite numbers with a positive sum, got {v[:8]}...; "
                         "pass aux.json's 'pc_variances'")
    total = float(v.sum()) if total_variance is None else float(total_variance)
    share, k = v / total, np.arange(1, v.size + 1)
    fig = Figure(figsize=(max(6.0, 0.12 * v.size + 2), 3.5))
    ax = fig.subplots()
    positive = share > 0  # a log axis cannot show a zero; such PCs get no bar
    ax.bar(k[positive], share[positive], color="tab:blue")
    ax.set_yscale("log")
    _pc_axis(ax, v.size)
    ax.set_ylabel("share of " + ("chi's variance" if total_variance is not None else "the kept PCs' variance"))
    twin = ax.twinx()
    twin.plot(k, np.cumsum(share), color="tab:orange", marker=".")
    twin.set_ylim(0, 1.02)
    twin.set_ylabel("cumulative share")
    ax.set_title(f"Variance of chi's {v.size} kept PCs: per PC (bars, left), cumulative (line, right)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_pca_variance(pc_variances: Sequence[float], path: str | Path, *, total_variance: float | None = None) -> Path:
    """Each PC's share of the variance (bars, log scale) and the cumulative share (line).

    Shares are of ``total_variance`` when given, else of the kept PCs' sum (aux.json stores only
    the kept PCs' variances: with every PC kept, the two agree), and the axis says which. PCs
    are numbered from 1 (``pc_ticks``), as in ``plot_pearson``.

    Raises:
        ValueError: if there are no variances, or any is negative or not finite.
    """
    return save_png(pca_variance_figure(pc_variances, total_variance=total_variance), path)


def pearson_figure(aux_pearson: Sequence[float], ridge_pearson: Sequence[float],
                   ceiling: Sequence[float] | None = None) -> Figure:
    """The figure of ``plot_pearson``."""
    aux = np.asarray(aux_pearson, dtype=np.float64).reshape(-1)
    ridge = np.asarray(ridge_pearson, dtype=np.float64).reshape(-1)
    if aux.size == 0 or aux.shape != ridge.shape:
        raise ValueError(f"need one Pearson r per PC for both models, got {aux.size} (aux) and {ridge.size} "
                         "(ridge); pass aux.json's 'pearson' and 'ridge'/'pearson'")
    k = np.arange(1, aux.size + 1)
    fig = Figure(figsize=(max(6.0, 0.12 * aux.size + 2), 3.5))
    ax = fig.subplots()
    ax.bar(k - 0.2, aux, width=0.4, label=f"aux model (mean {aux.mean():.3f})", color="tab:blue")
    ax.bar(k + 0.2, ridge, width=0.4, label=f"ridge (mean {ridge.mean():.3f})", color="tab:gray")
    ax.axhline(float(aux.mean()), color="tab:blue", lw=0.8, ls="--")
    ax.axhline(float(ridge.mean()), color="tab:gray", lw=0.8, ls="--")
    if ceiling is not None:
        ceiling = np.asarray(ceiling, dtype=np.float64).reshape(-1)
        ax.scatter(k, ceiling, marker="_", s=120, color="black", zorder=3,
                   label=f"noise ceiling sqrt(reliability) (mean {ceiling.mean():.3f})")
    _pc_axis(ax, aux.size)
    ax.set_ylabel("validation Pearson r")
    ax.set_ylim(min(0.0, float(min(aux.min(), ridge.min())) - 0.05), 1.0)
    ax.set_title("Aux model accuracy per PC (held-out documents)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_pearson(aux_pearson: Sequence[float], ridge_pearson: Sequence[float], path: str | Path,
                 ceiling: Sequence[float] | None = None) -> Path:
    """Per-PC validation Pearson of the aux model beside the ridge baseline (aux.json's 'pearson' and
    'ridge'/'pearson') and each PC's noise ceiling ('noise_ceiling', when the run has chi_se).

    The aux stage's figure (``lit_susc.aux.plot``), drawn here on the report's PC axis
    (``pc_ticks``: numbered from 1, as in ``plot_pca_variance``).

    Raises:
        ValueError: if the two lists are empty or differ in length.
    """
    return save_png(pearson_figure(aux_pearson, ridge_pearson, ceiling), path, dpi=120)


def plot_cluster_sizes(clusters_table: pa.Table, path: str | Path) -> Path:
    """Histogram of cluster sizes (``clusters.parquet``), logarithmic bins when sizes span a decade.

    Raises:
        ValueError: if the table has no ``size`` column or no cluster (nothing to draw: say so instead).
    """
    if "size" not in clusters_table.column_names:
        raise ValueError(f"the clusters table has no 'size' column (columns: {clusters_table.column_names}); "
                         "pass the clusters.parquet of the cluster stage")
    sizes = np.asarray(clusters_table.column("size").to_pylist(), dtype=np.float64)
    if sizes.size == 0:
        raise ValueError("the clustering found no clusters, so there is no size histogram to draw")
    lo, hi = sizes.min(), sizes.max()
    log = hi >= 10 * lo
    bins = np.geomspace(lo, hi * 1.001, 30) if log else min(30, max(1, int(hi - lo) + 1))
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(sizes, bins=bins, color="tab:green", edgecolor="white")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel("cluster size (tokens)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{sizes.size} clusters, {int(sizes.sum())} tokens in all (median size {np.median(sizes):.0f})",
                 fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)
