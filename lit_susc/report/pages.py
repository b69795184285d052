"""The report's HTML: the index page and one page per cluster, as strings.

Every page opens from disk (file://): no server, no network. The stylesheet (assets/report.css)
and the index's sort-and-search script (assets/index.js) are package data, inlined into each
page; every link is relative. Token text is escaped, with its whitespace and control characters
made visible.
"""

from __future__ import annotations

import html
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

import numpy as np

from .config import ReportConfig
from .inputs import Inputs
from .plots import component_grid, component_map_svg
from .statistics import Cluster, Example, known_reliabilities, unreliable_components


def _asset(name: str) -> str:
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")


_CSS = _asset("report.css")
_INDEX_JS = _asset("index.js")


@dataclass
class PlotEntry:
    """A plot of the index page."""

    anchor: str
    title: str
    file: str | None
    """Path relative to the report directory; None when the input for it is missing."""
    caption: str


# ----------------------------------------------------------------------------- the index


def index_page(inputs: Inputs, clusters: list[Cluster], figures: list[PlotEntry], config: ReportConfig) -> str:
    """index.html: run summary, reliability warning, the cluster table, the plots and the leak table."""
    links = "".join(f'<a href="#{f.anchor}">{_e(f.title)}</a>' if f.file else
                    f'<span class="muted">{_e(f.title)} (none)</span>' for f in figures)
    sections = []
    for f in figures:
        if f.file is None:
            sections.append(f'<h3 id="{f.anchor}">{_e(f.title)}</h3><p class="muted">{_e(f.caption)}</p>')
        else:
            sections.append(f'<figure id="{f.anchor}"><h3>{_e(f.title)}</h3><a href="{f.file}"><img src="{f.file}" '
                            f'alt="{_e(f.title)}"></a><figcaption class="muted">{_e(f.caption)}</figcaption></figure>')
    profile = "z-scored" if config.profile == "zscore" else "raw"
    why = (" (each component's chi z-scored over all tokens before averaging: raw chi scales differ by orders of "
           "magnitude between components)" if config.profile == "zscore" else "")
    body = f"""<h1>Susceptibility clusters</h1>
<p class="muted">Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Each cluster page shows its {profile} mean
susceptibility profile{why}, frequent tokens and tokens in context.</p>
{_reliability_banner(inputs, config)}
<h2>Run</h2>
{_summary(inputs, clusters)}
<nav id="plot-links">Plots: {links}</nav>
<h2 id="clusters">Clusters</h2>
{_cluster_table(clusters, inputs.labels.num_rows)}
<h2 id="plots">Plots</h2>
{''.join(sections)}
{_leak_table(inputs)}"""
    return _page("Susceptibility clusters", body, _INDEX_JS if clusters else "")


def _reliability_banner(inputs: Inputs, config: ReportConfig) -> str:
    """A plain warning when the median component's chi is mostly noise."""
    known = known_reliabilities(inputs)
    if not known:
        return ('<p class="banner">This sampling run reports no reliability (no chi_se): nothing here says how much '
                'of chi is signal. Rerun the sample stage with a current lit-susc.</p>')
    median = float(np.median(known))
    if median >= config.warn_median_reliability:
        return ""
    return (f'<p class="banner"><strong>Mostly noise.</strong> The median component reliability is {median:.2f}: '
            f"about {100 * (1 - median):.0f}% of a typical component's chi variation across tokens is sampling noise, "
            "so profiles and clusters here say more about the noise (and token identity, through the aux model) than "
            "about susceptibilities. Sample with more draws or set <code>sgld.target_reliability</code> "
            "(README, \"How much of chi is signal\").</p>")


def _summary(inputs: Inputs, clusters: list[Cluster]) -> str:
    sample, meta = inputs.sample_meta, inputs.input_meta
    model = sample.get("config", {}).get("model", {})
    name = model.get("pretrained") or "(not recorded)"
    if model.get("revision"):
        name += f" @ {model['revision']}"
    grid = component_grid(sample["components"])
    kinds = f"{len(grid.cells)} heads on {grid.n_layers} layers, {len(grid.strip)} others" if grid.cells else ""
    sgld = sample.get("config", {}).get("sgld", {})
    known = known_reliabilities(inputs)
    rows = [
        ("model", _e(name)),
        ("sampling run", f"<code>{_e(inputs.sample_dir)}</code>: {sample['n_tokens']} tokens"
                         + (f", {sgld.get('chains')} chains x {sgld.get('draws')} draws" if sgld else "")),
        ("components", f"{len(sample['components'])}" + (f" ({kinds})" if kinds else "")),
        ("convention", _e(f"{sample['convention']} (nbeta {sample['nbeta']:g}): {sample.get('description', '')}")),
        ("reliability", f"median {np.median(known):.2f} over components (range {min(known):.2f}-{max(known):.2f}); "
                        "the share of chi's variance over tokens that is signal, the expected Pearson between two "
                        "independent runs" if known else "unknown (no chi_se)"),
    ]
    if meta.get("source") == "aux":
        rows.append(("clustered chi", (f"<code>{_e(inputs.input_dir)}</code>: {meta['n_tokens']} tokens predicted "
                                       "by the aux model")))
    cfg, summ = inputs.cluster_config, inputs.cluster_summary
    clustered = summ.get("clustered_tokens", sum(c.size for c in clusters))
    rows.append(("clustering", f"<code>{_e(inputs.cluster_dir)}</code>: " + _e(", ".join(
        f"{k} {cfg[k]}" for k in ("preprocessing", "k", "alpha", "eps", "min_size", "conductance_threshold")
        if k in cfg))))
    rows.append(("clusters", f"<strong>{len(clusters)}</strong> covering {clustered} of {meta['n_tokens']} tokens"))
    if inputs.aux is not None:
        aux = inputs.aux
        rows.append(("aux model", f"<code>{_e(inputs.aux_dir)}</code>: {len(aux['pc_variances'])} PCs, mean "
                                  f"validation Pearson {np.mean(aux['pearson']):.3f} (ridge "
                                  f"{np.mean(aux['ridge']['pearson']):.3f}"
                                  + (f"; noise ceiling {np.mean(aux['noise_ceiling']):.3f}" if "noise_ceiling" in aux
                                     else "") + ")"))
    return _facts(rows)


def _cluster_table(clusters: list[Cluster], n_tokens: int) -> str:
    if not clusters:
        return ('<p class="note" id="no-clusters"><strong>The clustering found no clusters</strong> (0 of '
                f"{n_tokens} tokens clustered). Try a larger alpha or eps, a smaller min_size or a higher "
                "conductance_threshold in the cluster stage.</p>")
    head = ('<thead><tr><th data-sort="label" class="num"><button data-sort-button="label">label<span class="arrow">'
            '</span></button></th><th data-sort="size" class="num"><button data-sort-button="size">size<span '
            'class="arrow"></span></button></th><th data-sort="conductance" class="num"><button '
            'data-sort-button="conductance">conductance<span class="arrow"></span></button></th><th class="num">'
            'volume</th><th>most frequent tokens</th></tr></thead>')
    rows = []
    for c in sorted(clusters, key=lambda c: (-c.size, c.label)):  # the scriptless order: largest first
        tokens = _e(json.dumps([t for t, _ in c.top_tokens], ensure_ascii=False))
        rows.append(f'<tr data-label="{c.label}" data-size="{c.size}" data-conductance="{c.conductance!r}" '
                    f'data-tokens="{tokens}"><td class="num"><a href="clusters/{c.label}.html">{c.label}</a></td>'
                    f'<td class="num">{c.size}</td><td class="num">{_fmt(c.conductance)}</td>'
                    f'<td class="num">{_fmt(c.volume)}</td><td class="tokens">{_token_list(c.top_tokens, 8)}</td></tr>')
    controls = ('<div id="controls">sort by <button data-sort-button="size">size</button><button '
                'data-sort-button="conductance">conductance</button><button data-sort-button="label">label</button> '
                '<input id="search" type="search" placeholder="filter by frequent token" size="28"> '
                f'<span id="shown" class="muted">{len(clusters)} clusters</span></div>')
    return (f"{controls}<table class=\"data\" id=\"cluster-table\">{head}<tbody>\n" + "\n".join(rows)
            + "\n</tbody></table>")


def _leak_table(inputs: Inputs) -> str:
    if inputs.leak is None:
        return ""
    table = inputs.leak
    head = "".join(f"<th>{_e(c)}</th>" for c in table.column_names)
    columns = [table.column(c).to_pylist() for c in table.column_names]
    rows = "".join("<tr>" + "".join(f'<td class="num">{_e(_fmt(v, 3))}</td>' for v in row) + "</tr>"
                   for row in zip(*columns))
    return (f'<h3 id="leak-table">Leak table</h3><p class="muted">From <code>{_e(inputs.analysis_dir)}/leak.parquet'
            f'</code>.</p><table class="data"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


# ----------------------------------------------------------------------------- a cluster


def cluster_page(inputs: Inputs, clusters: list[Cluster], i: int, config: ReportConfig) -> str:
    """clusters/<label>.html of ``clusters[i]``: its facts, frequent tokens, profile and examples in context."""
    c = clusters[i]
    n_tokens = inputs.labels.num_rows
    prev = (f'<a href="{clusters[i - 1].label}.html" rel="prev">← cluster {clusters[i - 1].label}</a>'
            if i > 0 else '<span class="muted">← (first)</span>')
    nxt = (f'<a href="{clusters[i + 1].label}.html" rel="next">cluster {clusters[i + 1].label} →</a>'
           if i + 1 < len(clusters) else '<span class="muted">(last) →</span>')
    nav = (f'<nav><a href="../index.html">↑ all clusters</a>{prev}{nxt}'
           f'<span class="muted">{i + 1} of {len(clusters)}, in label order</span></nav>')
    facts = _facts([
        ("size", f"{c.size} tokens ({100 * c.size / n_tokens:.2g}% of {n_tokens})"),
        ("conductance", _fmt(c.conductance)), ("volume", _fmt(c.volume)),
        ("seed node", str(c.seed_node)), ("round", str(c.round)),
    ])
    order = np.argsort(-np.nan_to_num(np.abs(c.profile), nan=-1.0))[:8]
    components = inputs.components
    strongest = ", ".join(f"<code>{_e(components[j])}</code> {c.profile[j]:+.3g}" for j in order
                          if np.isfinite(c.profile[j]))
    tokens = "".join(f'<tr><td><code class="tok">{show_token(t, empty="∅")}</code></td><td class="num">{n}</td>'
                     f'<td class="num">{100 * n / c.size:.1f}%</td></tr>' for t, n in c.top_tokens)
    shown = len(c.examples)
    examples = "\n".join(_example_row(x) for x in c.examples)
    body = f"""{nav}
<h1>Cluster {c.label}</h1>
{facts}
<h2>Most frequent tokens</h2>
<table class="data tokens"><thead><tr><th>token</th><th class="num">count</th><th class="num">share</th></tr></thead>
<tbody>{tokens}</tbody></table>
<h2>Mean susceptibility profile</h2>
<figure>{component_map_svg(c.profile, components, label=_profile_label(config, inputs), diverging=config.profile == "zscore",
                          muted=unreliable_components(inputs, config), notes=_reliability_notes(inputs))}
<figcaption class="note">{_e(_profile_note(config, inputs.input_meta["convention"]))}</figcaption></figure>
<p>Largest in magnitude: {strongest or '<span class="muted">none</span>'}</p>
<h2>Tokens in context</h2>
<p class="muted">{shown} of {c.size} tokens{' (chosen at random)' if shown < c.size else ''}, in reading order;
up to {config.context_left} tokens before and {config.context_right} after, within the token's context
(… : the context goes on). Whitespace: · space, ⏎ newline, ⇥ tab.</p>
<table class="kwic"><tbody>
{examples}
</tbody></table>
{nav}"""
    return _page(f"Cluster {c.label}", body)


def _example_row(x: Example) -> str:
    """A row of the keyword-in-context table: where, left context, the token marked, right context."""
    lead = "…" if x.more_left else ""
    tail = "…" if x.more_right else ""
    left = "".join(show_token(t) for t in x.left)
    right = "".join(show_token(t) for t in x.right)
    return (f'<tr><td class="where">{_e(x.origin)}</td><td class="left">{lead}{left}</td>'
            f'<td class="centre"><mark class="tok">{show_token(x.token, empty="∅")}</mark></td>'
            f'<td class="right">{right}{tail}</td></tr>')


def _reliability_notes(inputs: Inputs) -> dict[str, str]:
    return {c: "reliability unknown" if r is None else f"reliability {r:.2f}" for c, r in inputs.reliability.items()}


def _profile_label(config: ReportConfig, inputs: Inputs) -> str:
    return "mean z-scored chi" if config.profile == "zscore" else f"mean chi ({inputs.input_meta['convention']})"


def _profile_note(config: ReportConfig, convention: str) -> str:
    if config.profile == "zscore":
        return ("Each component's chi is z-scored over all tokens of the clustered run (minus its mean, divided by "
                "its standard deviation), then averaged over the cluster's tokens: 0 is the run's average, +1 one "
                "standard deviation above it. Raw chi scales differ by orders of magnitude between components, so "
                "raw means would mostly show which components have large chi everywhere. Grey: a component with "
                "no spread.")
    return (f"Mean raw chi ({convention} convention) over the cluster's tokens. Raw chi scales differ by orders of "
            "magnitude between components: the largest cells mostly mark components with large chi everywhere "
            "(ReportConfig.profile='zscore' compares each component with its own spread).")


# ----------------------------------------------------------------------------- html helpers

_WHITESPACE = re.compile(r"(\s+)")
_VISIBLE = {" ": "·", "\n": "⏎", "\t": "⇥", "\r": "␍"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def visible(text: str) -> str:
    """Whitespace made visible: space ·, newline ⏎, tab ⇥, carriage return ␍ (other whitespace: ␣)."""
    return "".join(_VISIBLE.get(ch, "␣") if ch.isspace() else ch for ch in text)


def _printable(text: str) -> str:
    # control characters (byte-level tokens can hold any) would vanish or garble the page
    return "".join(ch if unicodedata.category(ch) != "Cc" else f"\\x{ord(ch):02x}" for ch in text)


def show_token(text: str, empty: str = "") -> str:
    """A token as HTML: escaped, its whitespace shown as dimmed symbols (``visible``), control
    characters as ``\\xNN``; an empty token as ``empty``."""
    if not text:
        return f'<span class="ws">{empty}</span>' if empty else ""
    parts = _WHITESPACE.split(text)
    return "".join(f'<span class="ws">{_e(visible(p))}</span>' if i % 2 else _e(_printable(p))
                   for i, p in enumerate(parts))


def _fmt(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _page(title: str, body: str, script: str = "") -> str:
    script = f"<script>\n{script}</script>" if script else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
            f"<style>\n{_CSS}</style></head><body>\n{body}\n{script}</body></html>\n")


def _facts(rows: list[tuple[str, str]]) -> str:
    """A two-column table; values are HTML already."""
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="data facts">{cells}</table>'


def _token_list(tokens: list[tuple[str, int]], limit: int | None = None) -> str:
    shown = tokens[:limit] if limit is not None else tokens
    return " ".join(f'<code class="tok">{show_token(t, empty="∅")}</code><span class="muted">×{n}</span>'
                    for t, n in shown)
