"""The report's figures: each a non-empty PNG; per-component values laid out by one grid helper."""

import matplotlib
import matplotlib.image
import numpy as np
import pyarrow as pa
import pytest

from lit_susc.report.plots import (
    PC_AXIS_LABEL,
    color_limits,
    component_grid,
    component_map_figure,
    component_map_svg,
    component_panels,
    pc_ticks,
    pca_variance_figure,
    pearson_figure,
    plot_cluster_sizes,
    plot_component_map,
    plot_llc_heatmap,
    plot_pca_variance,
    plot_pearson,
    plot_profile,
    plot_traces,
)

COMPONENTS = [f"layers.{l}.heads.{h}" for l in range(2) for h in range(3)] + [
    "layers.1.mlp", "layers.0.mlp", "unembed", "embed"]


def _assert_png(path):
    assert path.exists() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels[..., :3].std() > 0.01  # something was drawn
    assert not list(path.parent.glob("*.tmp*"))  # written through a temporary name


def test_heads_go_to_layer_rows_and_head_columns():
    grid = component_grid(COMPONENTS)
    assert grid.cells["layers.1.heads.2"] == (1, 2)
    assert grid.cells["layers.0.heads.0"] == (0, 0)
    assert (grid.n_layers, grid.n_heads) == (2, 3)


def test_mlps_in_layer_order_then_embed_and_unembed_go_to_the_strip():
    grid = component_grid(COMPONENTS + ["pos_embed"])
    assert grid.strip == ["layers.0.mlp", "layers.1.mlp", "embed", "pos_embed", "unembed"]
    assert not set(grid.strip) & set(grid.cells)


def test_names_of_no_known_layout_go_to_the_end_of_the_strip_in_the_order_given():
    """Decision: not an error, so generic models ('all') and odd names still plot, after the known ones."""
    grid = component_grid(["zeta", "layers.0.heads.0", "all", "layers.x.heads.1", "embed"])
    assert grid.cells == {"layers.0.heads.0": (0, 0)}
    assert grid.strip == ["embed", "zeta", "all", "layers.x.heads.1"]
    only_other = component_grid(["all"])
    assert (only_other.n_layers, only_other.n_heads, only_other.strip) == (0, 0, ["all"])


def test_no_components_or_a_repeated_one_is_an_error():
    with pytest.raises(ValueError, match="no components"):
        component_grid([])
    with pytest.raises(ValueError, match="\\['embed'\\] appear more than once"):
        component_grid(["embed", "layers.0.mlp", "embed"])


def test_llc_heatmap_is_a_png(tmp_path):
    llc = {c: {"mean": float(i), "std": 0.1, "per_chain": [float(i)] * 2} for i, c in enumerate(COMPONENTS)}
    path = plot_llc_heatmap(llc, COMPONENTS, tmp_path / "llc.png")
    assert path == tmp_path / "llc.png"
    _assert_png(path)


def test_llc_heatmap_names_a_component_without_an_llc(tmp_path):
    llc = {c: {"mean": 1.0} for c in COMPONENTS[1:]}
    with pytest.raises(ValueError, match="layers.0.heads.0"):
        plot_llc_heatmap(llc, COMPONENTS, tmp_path / "llc.png")


def test_profile_is_a_png_and_tolerates_components_without_a_value(tmp_path):
    profile = np.linspace(-2, 2, len(COMPONENTS))
    profile[3] = np.nan  # a component with no spread has no z-score: drawn grey
    _assert_png(plot_profile(profile, COMPONENTS, tmp_path / "profile.png"))
    _assert_png(plot_profile(np.ones(2), ["all", "other"], tmp_path / "strip_only.png", diverging=False))


def test_one_value_per_component_and_png_paths_are_required(tmp_path):
    with pytest.raises(ValueError, match="3 values for 10 components"):
        plot_component_map([1, 2, 3], COMPONENTS, tmp_path / "x.png", title="t", colorbar_label="c")
    with pytest.raises(ValueError, match="PNG"):
        plot_profile(np.zeros(len(COMPONENTS)), COMPONENTS, tmp_path / "profile.svg")


def _traces(components, chains=2, steps=12):
    rows = [(c, k, s, 4.0 + 0.1 * np.sin(s + k), 4.2 if s >= 4 else float("nan"))
            for c in components for k in range(chains) for s in range(steps)]
    return pa.table(dict(zip(["component", "chain", "step", "loss", "ref_loss"], map(list, zip(*rows)))))


def test_traces_are_a_png_with_a_panel_per_chosen_component(tmp_path):
    path = plot_traces(_traces(COMPONENTS), ["layers.0.heads.0", "embed", "layers.1.mlp"], tmp_path / "t.png",
                       ref_loss_star=4.0)
    _assert_png(path)


def test_traces_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="no trace of \\['unembed'\\]"):
        plot_traces(_traces(["embed"]), ["embed", "unembed"], tmp_path / "t.png")
    with pytest.raises(ValueError, match="lacks columns \\['ref_loss'\\]"):
        plot_traces(_traces(["embed"]).drop(["ref_loss"]), ["embed"], tmp_path / "t.png")
    with pytest.raises(ValueError, match="no components"):
        plot_traces(_traces(["embed"]), [], tmp_path / "t.png")


def test_pca_variance_is_a_png_and_refuses_negative_variances(tmp_path):
    _assert_png(plot_pca_variance([5.0, 2.0, 1.0, 0.1, 0.0], tmp_path / "pca.png"))
    with pytest.raises(ValueError, match="pc_variances"):
        plot_pca_variance([1.0, -1.0], tmp_path / "bad.png")


def test_pearson_reuses_the_aux_figure_and_wants_one_r_per_pc_for_both_models(tmp_path):
    _assert_png(plot_pearson([0.9, 0.7, 0.5], [0.8, 0.5, 0.2], tmp_path / "pearson.png"))
    with pytest.raises(ValueError, match="3 \\(aux\\) and 2 \\(ridge\\)"):
        plot_pearson([0.9, 0.7, 0.5], [0.8, 0.5], tmp_path / "bad.png")


def test_cluster_sizes_are_a_png_and_no_clusters_is_said_plainly(tmp_path):
    _assert_png(plot_cluster_sizes(pa.table({"label": [0, 1, 2, 3], "size": [20, 25, 400, 31]}), tmp_path / "s.png"))
    with pytest.raises(ValueError, match="no clusters"):
        plot_cluster_sizes(pa.table({"size": pa.array([], pa.int64())}), tmp_path / "none.png")


def test_drawing_figures_leaves_the_process_backend_alone(tmp_path):
    """Every figure goes through lit_susc.figures (a bare Figure on the Agg canvas): a notebook's backend stays."""
    from lit_susc.analysis import plot_leak

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot_pearson([0.9, 0.7], [0.8, 0.5], tmp_path / "pearson.png")
        table = pa.table({"layer": [0, 1], "cka_ground_truth": [0.1, 0.2], "cka_aux": [0.3, 0.4],
                          "jaccard_ground_truth": [0.05, 0.06], "jaccard_aux": [0.2, 0.1]})
        plot_leak(table, tmp_path / "leak.png", k=5)
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    _assert_png(tmp_path / "leak.png")


def test_the_inline_svg_map_has_one_cell_per_component_where_the_grid_puts_it():
    """Oracle: component_grid's layout; each cell's tooltip names its component and value."""
    import xml.etree.ElementTree as ET

    values = np.arange(len(COMPONENTS), dtype=float) - 5.0
    values[2] = np.nan
    svg = ET.fromstring(component_map_svg(values, COMPONENTS, label="mean z-scored chi", diverging=True))
    ns = "{http://www.w3.org/2000/svg}"
    cells = {r.find(f"{ns}title").text.split(": ")[0]: r for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None}
    assert set(cells) == set(COMPONENTS)
    for i, name in enumerate(COMPONENTS):
        title = cells[name].find(f"{ns}title").text
        assert title == (f"{name}: n/a" if i == 2 else f"{name}: {values[i]:+.3g}")
    grid = component_grid(COMPONENTS)
    x = {n: float(cells[n].get("x")) for n in COMPONENTS}
    y = {n: float(cells[n].get("y")) for n in COMPONENTS}
    assert x["layers.1.heads.2"] > x["layers.1.heads.0"] and y["layers.1.heads.0"] > y["layers.0.heads.0"]
    assert y["layers.0.mlp"] > y["layers.1.heads.2"]  # the strip lies below the heads
    assert [n for n in sorted(grid.strip, key=x.get)] == grid.strip
    # diverging: red-blue centred on 0, the largest magnitude at an end; a missing value is grey
    rdbu = matplotlib.colormaps["RdBu_r"]
    assert cells[COMPONENTS[5]].get("fill") == matplotlib.colors.to_hex(rdbu(0.5))
    assert cells[COMPONENTS[0]].get("fill") == matplotlib.colors.to_hex(rdbu(0.0))  # -5, the largest magnitude
    assert cells[COMPONENTS[2]].get("fill") == matplotlib.colors.to_hex("lightgrey")
    with pytest.raises(ValueError, match="values for"):
        component_map_svg(values[:-1], COMPONENTS, label="x")


def _llc_values(heads=(0.2, 1.4), mlps=(4.7, 17.0), embed=41.0, unembed=40.0):
    """LLC-like values of COMPONENTS: heads spread over ``heads``, MLPs, embed and unembed far above them."""
    values = dict(zip([c for c in COMPONENTS if "heads" in c], np.linspace(*heads, 6)))
    values.update({"layers.0.mlp": mlps[0], "layers.1.mlp": mlps[1], "embed": embed, "unembed": unembed})
    return [values[c] for c in COMPONENTS]


def test_split_by_kind_the_heads_colour_scale_excludes_the_mlps_and_embeddings():
    """Oracle: the values planted per kind; heads 0.2-1.4 against embed's 41 (the quickstart's LLC spread)."""
    panels = {p.kind: p for p in component_panels(_llc_values(), COMPONENTS, by_kind=True)}
    assert list(panels) == ["heads", "mlps", "others"]
    assert panels["heads"].limits == (0.0, pytest.approx(1.4))  # non-negative values: from 0 to the kind's largest
    assert panels["mlps"].limits == (0.0, 17.0) and panels["others"].limits == (0.0, 41.0)
    assert panels["mlps"].names == ["layers.0.mlp", "layers.1.mlp"] and panels["others"].names == ["embed", "unembed"]
    # one scale (the reliability map): every panel spans all values
    shared = component_panels(_llc_values(), COMPONENTS)
    assert [p.kind for p in shared] == ["heads", "strip"] and {p.limits for p in shared} == {(0.2, 41.0)}
    # signed values split by kind stay centred on 0
    signed = {p.kind: p.limits for p in component_panels(np.linspace(-2, 3, len(COMPONENTS)), COMPONENTS,
                                                         diverging=True, by_kind=True)}
    assert all(lo == -hi for lo, hi in signed.values())


def test_the_llc_figure_colours_each_kind_on_its_own_scale(tmp_path):
    """Oracle: component_panels' limits, read back from the images' colour norms."""
    fig = component_map_figure(_llc_values(), COMPONENTS, title="LLC", colorbar_label="LLC", by_kind=True)
    norms = [(ax.get_title(loc="left"), ax.images[0].norm.vmax) for ax in fig.axes if ax.images]
    assert norms == [("heads", pytest.approx(1.4)), ("MLPs", 17.0), ("embeddings and others", 41.0)]
    llc = {c: {"mean": v, "per_chain": [v, v]} for c, v in zip(COMPONENTS, _llc_values())}
    _assert_png(plot_llc_heatmap(llc, COMPONENTS, tmp_path / "llc.png"))


def test_layer_axes_have_one_integer_tick_per_layer():
    many = [f"layers.{l}.heads.{h}" for l in range(7) for h in range(2)] + [f"layers.{l}.mlp" for l in range(7)]
    for by_kind in (False, True):
        fig = component_map_figure(np.arange(len(many), dtype=float), many, title="t", colorbar_label="c",
                                   by_kind=by_kind)
        heads = next(ax for ax in fig.axes if ax.get_ylabel() == "layer")
        assert heads.get_yticks().tolist() == list(range(7))
        assert [t.get_text() for t in heads.get_yticklabels()] == [str(k) for k in range(7)]
        assert heads.get_xticks().tolist() == [0, 1]
        strip = [t.get_text() for ax in fig.axes if ax.images and ax is not heads for t in ax.get_xticklabels()]
        assert strip == [f"mlp {k}" for k in range(7)]


def test_every_pc_axis_is_numbered_from_pc1_the_same_way():
    """The PCA and Pearson figures share one PC axis (pc_ticks): PC k at x = k, no tick at 0."""
    assert pc_ticks(4) == ([1, 2, 3, 4], ["PC1", "PC2", "PC3", "PC4"])
    assert pc_ticks(22)[0] == [1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]
    assert pc_ticks(250)[0] == [1, 50, 100, 150, 200, 250]
    for n in (4, 22, 250):
        axes = [pca_variance_figure(np.geomspace(10, 0.1, n)).axes[0],
                pearson_figure(np.full(n, 0.5), np.full(n, 0.4), np.full(n, 0.7)).axes[0]]
        for ax in axes:
            assert ax.get_xticks().tolist() == pc_ticks(n)[0]
            assert [t.get_text() for t in ax.get_xticklabels()] == pc_ticks(n)[1]
            assert ax.get_xlabel() == PC_AXIS_LABEL and ax.get_xlim()[0] > 0


def test_a_fixed_colour_range_is_kept_and_recorded_by_the_inline_svg():
    """Values beyond a shared range take its end colours; the range is on the <svg> as data-vmin/data-vmax."""
    import xml.etree.ElementTree as ET

    values = np.linspace(-1, 1, len(COMPONENTS))
    values[0] = -5.0
    svg = ET.fromstring(component_map_svg(values, COMPONENTS, label="z", diverging=True, limits=(-2.0, 2.0)))
    assert (svg.get("data-vmin"), svg.get("data-vmax")) == ("-2.0", "2.0")
    ns = "{http://www.w3.org/2000/svg}"
    fill = {r.find(f"{ns}title").text.split(": ")[0]: r.get("fill") for r in svg.iter(f"{ns}rect")
            if r.find(f"{ns}title") is not None}
    assert fill[COMPONENTS[0]] == matplotlib.colors.to_hex(matplotlib.colormaps["RdBu_r"](0.0))
    assert color_limits(values, diverging=True) == (-5.0, 5.0) and color_limits([3.0, 3.0], diverging=False) == (3.0, 4.0)
