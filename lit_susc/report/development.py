"""The development page: how a model's components change over its training checkpoints.

Four figures of a ``lit_susc.development.Development``, on one HTML page (``index.html`` of the
develop run's ``development/`` directory):

- LLC curves against training step: one panel per layer with a line per head, then a panel of the
  MLPs and one of every other component (embed and unembed have LLCs many times a head's); the
  band is +- one standard error of the mean over chains;
- the layer x head heatmap of the LLC at each checkpoint, small multiples on one colour scale;
- tokens' trajectories through the joint PCA's PC1 and PC2, each class's mean path in bold;
- the change of chi between consecutive checkpoints in units of its noise, per component
  (``lit_susc.development.chi_change``; about 0.67 where chi did not change).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from ..development import NOISE_CHANGE, TOKEN_CLASSES, Development
from ..figures import Figure, save_png
from ..rundir import write_text
from .pages import _facts, _page
from .plots import component_grid, strip_label

FIGURES = {"llc_curves.png": "LLC against training step", "llc_heads.png": "LLC of every head at each checkpoint",
           "trajectories.png": "Tokens through the joint PCA", "changes.png": "How much chi changed, in units of its noise"}


def _steps_axis(ax, steps: list[int]) -> None:
    """A log-like x axis when the steps span decades (Pythia's 0, 1, 2, 4, ..., 143000), else linear."""
    if len(steps) > 2 and steps[-1] > 100 * max(1, steps[1]):
        ax.set_xscale("symlog", linthresh=max(1, steps[1]))
    ax.set_xlabel("training step")


def plot_llc_curves(dev: Development, path: str | Path) -> Path:
    grid = component_grid(dev.components)
    heads_by_layer: dict[int, list[str]] = {}
    for name, (layer, _) in sorted(grid.cells.items(), key=lambda kv: kv[1]):
        heads_by_layer.setdefault(layer, []).append(name)
    mlps = [c for c in grid.strip if c.startswith("layers.")]
    rest = [c for c in grid.strip if c not in mlps]
    panels = [(f"layer {layer} heads", names) for layer, names in sorted(heads_by_layer.items())]
    panels += [(title, names) for title, names in (("MLPs", mlps), ("other components", rest)) if names]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.9 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, names) in zip(axes, panels):
        for name in names:
            llc, se = dev.llc(name)
            label = name.rsplit(".", 1)[-1] if name in grid.cells else strip_label(name)
            (line,) = ax.plot(dev.steps, llc, marker="o", ms=3, label=f"head {label}" if name in grid.cells else label)
            ok = np.isfinite(se)
            ax.fill_between(np.array(dev.steps)[ok], (llc - se)[ok], (llc + se)[ok], color=line.get_color(), alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("LLC")
        _steps_axis(ax, dev.steps)
        ax.legend(fontsize=7, ncol=2 if len(names) > 4 else 1)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("LLC per component against training step (band: +- 1 SE over chains)", fontsize=11)
    return save_png(fig, path)


def plot_llc_heads(dev: Development, path: str | Path) -> Path | None:
    """Small multiples of the layer x head LLC, one per checkpoint, on one colour scale; None without heads."""
    grid = component_grid(dev.components)
    if not grid.cells:
        return None
    matrices = []
    for step in dev.steps:
        m = np.full((grid.n_layers, grid.n_heads), np.nan)
        for r in dev.per_component.to_pylist():
            if r["step"] == step and r["component"] in grid.cells:
                m[grid.cells[r["component"]]] = r["llc"]
        matrices.append(m)
    finite = np.concatenate([m[np.isfinite(m)] for m in matrices])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cols = min(6, len(dev.steps))
    rows = math.ceil(len(dev.steps) / cols)
    fig = Figure(figsize=(2.3 * cols + 1, 2.1 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for ax, step, m in zip(axes, dev.steps, matrices):
        image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_title(f"step {step}", fontsize=9)
        ax.set_xticks(range(grid.n_heads))
        ax.set_yticks(range(grid.n_layers))
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    for ax in axes[len(dev.steps):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes[:len(dev.steps)].tolist(), label="LLC", shrink=0.8)
    fig.suptitle("LLC of each head, one panel per checkpoint (one colour scale)", fontsize=11)
    return save_png(fig, path)


def plot_trajectories(dev: Development, path: str | Path, n_tokens: int = 300, seed: int = 0) -> Path:
    """PC1 against PC2: ``n_tokens`` random tokens, each a faint line through the checkpoints, and in
    bold each token class's mean path over all its tokens (its steps marked): a single token's path
    is mostly chain noise where chi is, a class's mean much less so."""
    table = dev.trajectories
    n_all = int(max(table.column("token").to_pylist()) + 1)
    steps = len(dev.steps)
    pc1 = table.column("pc1").to_numpy().reshape(steps, n_all)
    pc2 = (table.column("pc2").to_numpy().reshape(steps, n_all) if "pc2" in table.column_names
           else np.zeros_like(pc1))
    classes = (np.array(table.column("class").to_pylist()[:n_all]) if "class" in table.column_names
               else np.array(["token"] * n_all))
    chosen = np.sort(np.random.default_rng(seed).choice(n_all, min(n_tokens, n_all), replace=False))
    fig = Figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.subplots()
    colours = dict(zip([*TOKEN_CLASSES, "token"], [f"C{i}" for i in range(len(TOKEN_CLASSES) + 1)]))
    for cls in [c for c in colours if c in set(classes)]:
        mine = classes == cls
        for j in chosen[mine[chosen]]:
            ax.plot(pc1[:, j], pc2[:, j], color=colours[cls], lw=0.5, alpha=0.15)
        mean1, mean2 = pc1[:, mine].mean(1), pc2[:, mine].mean(1)
        ax.plot(mean1, mean2, color=colours[cls], lw=2.5, marker="o", ms=4,
                label=f"{cls} ({int(mine.sum())} tokens)")
        ax.annotate(f"{dev.steps[-1]}", (mean1[-1], mean2[-1]), fontsize=7, color=colours[cls])
        ax.annotate(f"{dev.steps[0]}", (mean1[0], mean2[0]), fontsize=7, color=colours[cls], alpha=0.7)
    explained = dev.pca.explained.tolist()
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of the variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}%)" if len(explained) > 1 else "")
    ax.legend(fontsize=8, title="class mean over checkpoints (bold; first and last step marked)",
              title_fontsize=8)
    ax.set_title(f"Tokens through one joint PCA of steps {dev.steps[0]}-{dev.steps[-1]} "
                 f"(faint: {len(chosen)} single tokens)", fontsize=10)
    return save_png(fig, path)


def plot_changes(dev: Development, path: str | Path) -> Path | None:
    """Components x consecutive pairs: median |change of chi| / median SE of the change; None with one checkpoint."""
    if dev.changes.num_rows == 0:
        return None
    pairs = sorted({(r["step_from"], r["step"]) for r in dev.changes.to_pylist()})
    grid = component_grid(dev.components)
    order = sorted(grid.cells, key=grid.cells.get) + grid.strip
    m = np.full((len(order), len(pairs)), np.nan)
    for r in dev.changes.to_pylist():
        m[order.index(r["component"]), pairs.index((r["step_from"], r["step"]))] = r["change"]
    fig = Figure(figsize=(1.1 * len(pairs) + 3.5, 0.22 * len(order) + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.log10(np.clip(m / NOISE_CHANGE, 1e-3, None)), cmap="magma", aspect="auto", vmin=0)
    ax.set_yticks(range(len(order)), [n if n in grid.cells else strip_label(n) for n in order], fontsize=7)
    ax.set_xticks(range(len(pairs)), [f"{a}->{b}" for a, b in pairs], rotation=45, ha="right", fontsize=8)
    fig.colorbar(image, ax=ax, label="log10(change / noise level)")
    ax.set_title(f"chi's change between checkpoints / its noise (black: within noise, ~{NOISE_CHANGE})", fontsize=10)
    return save_png(fig, path)


def write_development_page(dev: Development, directory: str | Path, trajectory_tokens: int = 300) -> Path:
    """The figures and ``index.html`` of ``dev`` in ``directory``; returns the page."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    drawn = {"llc_curves.png": plot_llc_curves(dev, directory / "llc_curves.png"),
             "llc_heads.png": plot_llc_heads(dev, directory / "llc_heads.png"),
             "trajectories.png": plot_trajectories(dev, directory / "trajectories.png", trajectory_tokens),
             "changes.png": plot_changes(dev, directory / "changes.png")}
    figures = "".join(f'<h2 id="{name[:-4]}">{html.escape(FIGURES[name])}</h2><img src="{name}" alt="{name}">'
                      for name, path in drawn.items() if path is not None)
    contents = " · ".join(f'<a href="#{name[:-4]}">{html.escape(FIGURES[name])}</a>'
                          for name, path in drawn.items() if path is not None)
    rows = dev.per_component.to_pylist()
    header = "".join(f"<th>step {s}</th>" for s in dev.steps)
    body = ""
    for c in dev.components:
        cells = "".join(f"<td>{r['llc']:.3g} ± {r['llc_se']:.2g} <small>(rel {r['reliability']:.2f})</small></td>"
                        for r in rows if r["component"] == c)
        body += f"<tr><th>{html.escape(c)}</th>{cells}</tr>"
    facts = _facts([("checkpoints", html.escape(", ".join(map(str, dev.steps)))),
                    ("components", str(len(dev.components))),
                    ("joint PCA", html.escape(f"{len(dev.pca.basis)} PCs, "
                                              f"{100 * float(dev.pca.explained.sum()):.0f}% of the variance")),
                    *[("note", html.escape(n)) for n in dev.notes]])
    page = _page("lit-susc: development", f"""
<h1>Development over {len(dev.steps)} checkpoints</h1>
{facts}
<p>{contents} · <a href="#table">LLC table</a></p>
<p>Each checkpoint is a sample run with the same components, observation tokens, reference batch
and seeds; only the weights differ. An LLC's band and ± are one standard error of the mean over
chains; <em>rel</em> is chi's reliability at that checkpoint (the share of its variance over
tokens that is signal). A change of chi below about {NOISE_CHANGE} noise units is what chains of
an unchanged model would show.</p>
{figures}
<h2 id="table">LLC ± SE (reliability) per component and checkpoint</h2>
<table class="data"><tr><th>component</th>{header}</tr>{body}</table>""")
    out = directory / "index.html"

    write_text(out, page)
    return out
