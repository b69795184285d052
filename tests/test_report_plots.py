"""The report's figures: each a non-empty PNG; per-component values laid out by one grid helper."""

import matplotlib
import matplotlib.image
import numpy as np
import pyarrow as pa
import pytest

from lit_susc.report.plots import (
    component_grid,
    component_map_svg,
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
