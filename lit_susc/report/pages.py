"""The report's HTML: the index page, one page per cluster and one per document, as strings.

Every page opens from disk (file://): no server, no network. The stylesheet (assets/report.css)
and the index's sort-and-search script (assets/index.js) are package data, inlined into each
page; every link is relative. Token text is escaped, with its whitespace and control characters
made visible.

The index lists every cluster on index.html up to ``INDEX_PAGE_CLUSTERS`` clusters; beyond, its
cluster table is paged, largest clusters first: index.html holds the first page with the run
summary, plots and glossary, ``index-<k>.html`` page k (``index_file``), and every page links to
the first, previous, next and last and to the pages around it.

Anchors other pages link to: on the index ``#run``, ``#token-identity``, ``#plots`` (and each
plot's own anchor), ``#glossary`` (each term ``#g-<term>``) and ``#clusters``; on every index page
each cluster's row ``#c<label>``; on cluster and document pages each example token's row is
``#t<row>``, its row in the token table.
"""

from __future__ import annotations

import functools
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
from .statistics import (
    IDENTITY_PURITY,
    Cluster,
    Clustering,
    Example,
    TokenIdentity,
    known_reliabilities,
    unreliable_components,
)

INDEX_PAGE_CLUSTERS = 500
"""Clusters per index page: a page of 500 rows is about 0.7 MB of HTML, where the spec's 57,236
clusters in one table would be ~75 MB in one file, which a browser lays out slowly and the report
would hold in memory as one string."""
PAGE_WINDOW = 4
"""Index pages linked on each side of the current one, besides the first and the last."""


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


def index_file(page: int) -> str:
    """The file of index page ``page`` (from 1), relative to the report directory."""
    return "index.html" if page == 1 else f"index-{page}.html"


def index_page(inputs: Inputs, clustering: Clustering, rows: list[Cluster], figures: list[PlotEntry],
               config: ReportConfig, n_pages: int = 1) -> str:
    """index.html, top to bottom: contents (a link to every section and plot), reliability warning,
    run summary, clusters against token identity, the plots (and leak table), the glossary, and
    the sortable and searchable cluster table last: ``rows``, every cluster, or with ``n_pages`` > 1
    the first index page's, with links to the others."""
    plot_links = " ".join(f'<a href="#{f.anchor}">{_e(f.title)}</a>' if f.file else
                          f'<span class="muted">{_e(f.title)} (none)</span>' for f in figures)
    if inputs.leak is not None:
        plot_links += ' <a href="#leak-table">Leak table</a>'
    sections = []
    for f in figures:
        if f.file is None:
            sections.append(f'<section id="{f.anchor}"><h3>{_e(f.title)}</h3><p class="muted">{_e(f.caption)}</p>'
                            "</section>")
        else:
            sections.append(f'<figure id="{f.anchor}"><h3>{_e(f.title)}</h3><a href="{f.file}"><img src="{f.file}" '
                            f'alt="{_e(f.title)}"></a><figcaption class="muted">{_e(f.caption)}</figcaption></figure>')
    profile = "z-scored" if config.profile == "zscore" else "raw"
    why = (" (each component's chi z-scored over all tokens before averaging: raw chi scales differ by orders of "
           "magnitude between components)" if config.profile == "zscore" else "")
    n_tokens = inputs.labels.num_rows
    table = (_paged_table(rows, 1, n_pages, len(clustering), n_tokens) if n_pages > 1 else
             _cluster_table(rows, n_tokens))
    body = f"""<h1>Susceptibility clusters</h1>
<p class="muted">Built {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Each cluster page shows its {profile} mean
susceptibility profile{why}, frequent tokens and tokens in context; the terms are explained in the
<a href="#glossary">glossary</a>.</p>
<nav id="contents" class="contents"><strong>Contents</strong> <a href="#run">Run</a>
<a href="#token-identity">Clusters and token identity</a> <a href="#plots">Plots</a>
<span class="sub">({plot_links})</span> <a href="#glossary">Glossary</a>
<a href="#clusters">Clusters ({len(clustering)})</a></nav>
{_reliability_banner(inputs, config)}
<h2 id="run">Run</h2>
{_summary(inputs, clustering)}
<h2 id="token-identity">Clusters and token identity</h2>
{_identity(clustering.identity)}
<h2 id="plots">Plots</h2>
<div class="plots">{''.join(sections)}</div>
{_leak_table(inputs)}
<h2 id="glossary">Glossary</h2>
{_glossary(inputs, config)}
<h2 id="clusters">Clusters</h2>
{table}"""
    return _page("Susceptibility clusters", body, _INDEX_JS if rows else "")


def later_index_page(rows: list[Cluster], page: int, n_pages: int, n_clusters: int, n_tokens: int) -> str:
    """index-<page>.html: page ``page`` (from 2) of the paged cluster table, ``rows``, with the links
    to the other pages; the run summary, plots and glossary stay on index.html."""
    nav = ('<nav><a href="index.html">↑ run, plots and the first clusters</a>'
           '<a href="index.html#glossary">glossary</a></nav>')
    body = f"""{nav}
<h1 id="clusters">Susceptibility clusters, page {page} of {n_pages}</h1>
{_paged_table(rows, page, n_pages, n_clusters, n_tokens)}
{nav}"""
    return _page(f"Susceptibility clusters, page {page} of {n_pages}", body, _INDEX_JS)


def _paged_table(rows: list[Cluster], page: int, n_pages: int, n_clusters: int, n_tokens: int) -> str:
    """One index page's cluster table between two bars of links to the other pages."""
    first = (page - 1) * INDEX_PAGE_CLUSTERS + 1
    where = (f'<p class="muted">Clusters {first}-{first + len(rows) - 1} of {n_clusters}, largest first, '
             f"{INDEX_PAGE_CLUSTERS} to a page; sorting and the search apply to this page's clusters.</p>")
    links = _page_links(page, n_pages)
    glossary = "" if page == 1 else "index.html"
    return f"{where}{links}\n{_cluster_table(rows, n_tokens, glossary)}\n{links}"


def _page_links(page: int, n_pages: int) -> str:
    """Links to the first, previous, next and last index pages, and to the pages within ``PAGE_WINDOW`` of
    ``page`` (gaps shown as …); the current page is marked, not linked."""
    def link(k: int, text: str, rel: str | None = None) -> str:
        kind = f' rel="{rel}"' if rel else ""
        return f'<a href="{index_file(k)}"{kind}>{text}</a>'

    def dead(text: str) -> str:
        return f'<span class="muted">{text}</span>'

    shown = sorted({1, n_pages, *range(max(1, page - PAGE_WINDOW), min(n_pages, page + PAGE_WINDOW) + 1)})
    numbers, last = [], 0
    for k in shown:
        if k > last + 1:
            numbers.append(dead("…"))
        numbers.append(f'<strong aria-current="page">{k}</strong>' if k == page else link(k, str(k)))
        last = k
    if page > 1:
        before = [link(1, "« first"), link(page - 1, "‹ previous", "prev")]
    else:
        before = [dead("« first"), dead("‹ previous")]
    if page < n_pages:
        after = [link(page + 1, "next ›", "next"), link(n_pages, "last »")]
    else:
        after = [dead("next ›"), dead("last »")]
    return f'<nav class="pages" aria-label="index pages">{"".join(before + numbers + after)}</nav>'


def _identity(identity: TokenIdentity | None) -> str:
    """The token-identity baseline in plain words (statistics.TokenIdentity for the formulas)."""
    if identity is None:
        return '<p class="muted">No clusters, so nothing to compare with token identity.</p>'
    score = identity.identity_score
    reading = ("every clustered token has the same text, so token identity and the clustering cannot be told apart"
               if not np.isfinite(score) else
               f"on a scale from a clustering blind to token text (0) to one by token identity alone (1), this one "
               f"sits at <strong>{score:.2f}</strong>")
    return (f'<p id="identity-summary"><strong>{identity.identity_clusters} of {identity.n_clusters} clusters '
            f"({100 * identity.identity_share:.0f}%)</strong> are one token type (purity &ge; {IDENTITY_PURITY:g}): "
            "they show token identity, not a feature. Mean purity (the share of the "
            f"{identity.clustered_tokens} clustered tokens that are their cluster's most frequent token): "
            f"<strong>{identity.mean_purity:.2f}</strong>; a clustering by token identity alone would have 1.00, "
            f"and clusters of the same sizes with their tokens drawn at random {identity.shuffled_purity:.2f}. So "
            f'{reading}. <a href="#g-baseline">How these are computed</a>; sort the table by purity to see the '
            "clusters that are more than one token.</p>")


def _glossary(inputs: Inputs, config: ReportConfig) -> str:
    """The terms of the index and cluster pages, each at ``#g-<term>``."""
    cfg = inputs.cluster_config
    threshold = cfg.get("conductance_threshold")
    min_size = cfg.get("min_size")
    terms = [
        ("size", "size", ("The tokens labelled with the cluster. The sweep prefix it came from can be larger: "
         "tokens an earlier cluster had already claimed keep their label.")),
        ("conductance", "conductance",
         "&Phi;(S) = cut(S) / min(vol S, vol G &minus; vol S) of the prefix S the cluster came from, on the k-NN "
         "graph of the chi vectors (after the stage's preprocessing): cut(S) is the weight of the graph's edges "
         "leaving S. 0: nothing leaves (well separated); 1: every edge of S leaves it. A prefix is a cluster only if "
         "&Phi; is below the cluster stage's <code>conductance_threshold</code>"
         + (f" ({threshold:g} here)" if isinstance(threshold, (int, float)) else "") + "."),
        ("volume", "volume", ("vol S = &sum;<sub>u&isin;S</sub> d(u): the sum of the degrees (the summed edge "
         "weights) of the prefix's tokens in the k-NN graph. It grows with the prefix's size and with how strongly its "
         "tokens are connected; conductance divides by it.")),
        ("seed-node", "seed node", ("The token whose personalized PageRank push found the cluster, as its row in the "
         "token table (<code>labels.parquet</code>; also its node in the graph), with its text. The push spreads "
         "PageRank from the seed; the sweep over the tokens in order of PageRank per degree picks the prefix of "
         "lowest conductance. The seed is usually, not always, one of the cluster's tokens.")),
        ("round", "round", ("When the cluster was found: each round pushes from <code>seeds_per_round</code> "
         "unvisited tokens drawn at random, and tokens claimed in earlier rounds keep their label, so later rounds "
         "form from what was left. It says nothing about quality by itself.")),
        ("purity", "purity", ("The share of the cluster's tokens that are its most frequent token, by token text "
         "(ids that decode to the same text count as one): max<sub>t</sub> n<sub>ct</sub> / n<sub>c</sub>. 1: the "
         "cluster is one token type.")),
        ("coverage", "coverage", ("Of all occurrences of the cluster's most frequent token in the run's token table, "
         "the share in this cluster. Purity 1 with coverage near 1 is that token type; purity 1 with low coverage "
         "picks out some occurrences of a token (by context), which token identity alone cannot.")),
        ("baseline", "token-identity baseline",
         ("Mean purity &sum;<sub>c</sub> max<sub>t</sub> n<sub>ct</sub> / &sum;<sub>c</sub> n<sub>c</sub> (the share "
         "of clustered tokens that are their cluster's most frequent token) against its two ends: a clustering by "
         "token identity alone (1) and the same cluster sizes with the labels shuffled among the clustered tokens "
         "(one seeded permutation: a clustering blind to token text). Score = (mean &minus; shuffled) / "
         f"(1 &minus; shuffled). Clusters of purity &ge; {IDENTITY_PURITY:g} are counted as one token type.")),
        ("profile", "profile", ("The mean over the cluster's tokens of each component's chi, z-scored over all "
         "tokens: 0 is the run's average, +1 one standard deviation above it. A mean of n unrelated tokens' "
         "z-scores lies within &plusmn;3/&radic;n of 0 (3 standard deviations), the noise level each page states."
                                 if config.profile == "zscore" else
                                 "The mean raw chi over the cluster's tokens, per component.")
         + f" Hatched grey: components of reliability below {config.min_reliability:g}, whose chi is mostly noise."
         + (" Every cluster page uses one colour scale (<code>shared_profile_scale</code>), so colours compare "
            "between pages." if config.shared_profile_scale else
            " Each page's colours span its own profile (<code>shared_profile_scale: true</code> puts every page on "
            "one scale).")),
        ("examples", "tokens in context", ("Example tokens at random (seeded), in reading order, each with the tokens "
         "before and after it within its context. The first column, <code>document:position</code>, links to the "
         "document's page, which lists that document's example tokens of every cluster in position order; its "
         "tooltip gives the token's row in <code>labels.parquet</code>.")),
        ("good", "what makes a good cluster",
         ("<ul><li>low conductance, well below the threshold: it is separated from the rest of the graph;</li>"
         f"<li>a size well above <code>min_size</code>{f' ({min_size})' if min_size is not None else ''}: a cluster "
         "at the minimum may be a fragment;</li>"
         "<li>purity below 1, or low coverage: a cluster that is one token type, all of its occurrences, shows token "
         "identity, not a feature;</li>"
         "<li>a profile above the noise: its largest entries beyond the page's noise level and on components that "
         "are not hatched.</li></ul>")),
    ]
    items = "".join(f'<dt id="g-{anchor}">{_e(term)}</dt><dd>{text}</dd>' for anchor, term, text in terms)
    return f'<dl class="glossary">{items}</dl>'


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


def _summary(inputs: Inputs, clustering: Clustering) -> str:
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
    clustered = summ.get("clustered_tokens", clustering.clustered_tokens)
    rows.append(("clustering", f"<code>{_e(inputs.cluster_dir)}</code>: " + _e(", ".join(
        f"{k} {cfg[k]}" for k in ("preprocessing", "k", "alpha", "eps", "min_size", "conductance_threshold")
        if k in cfg))))
    rows.append(("clusters", f"<strong>{len(clustering)}</strong> covering {clustered} of {meta['n_tokens']} tokens"))
    if inputs.aux is not None:
        aux = inputs.aux
        rows.append(("aux model", f"<code>{_e(inputs.aux_dir)}</code>: {len(aux['pc_variances'])} PCs, mean "
                                  f"validation Pearson {np.mean(aux['pearson']):.3f} (ridge "
                                  f"{np.mean(aux['ridge']['pearson']):.3f}"
                                  + (f"; noise ceiling {np.mean(aux['noise_ceiling']):.3f}" if "noise_ceiling" in aux
                                     else "") + ")"))
    return _facts(rows)


def _cluster_table(clusters: list[Cluster], n_tokens: int, glossary: str = "") -> str:
    """The sortable, searchable table of ``clusters``, each row ``#c<label>`` (``glossary``: the path to
    the page that holds the glossary; '' on it)."""
    if not clusters:
        return ('<p class="note" id="no-clusters"><strong>The clustering found no clusters</strong> (0 of '
                f"{n_tokens} tokens clustered). Try a larger alpha or eps, a smaller min_size or a higher "
                "conductance_threshold in the cluster stage.</p>")
    def sortable(key: str, term: bool = True) -> str:
        return (f'<th data-sort="{key}" class="num"><button data-sort-button="{key}">{key}<span class="arrow"></span>'
                f"</button>{_term_link(key, glossary) if term else ''}</th>")

    head = (f'<thead><tr>{sortable("label", term=False)}{sortable("size")}{sortable("conductance")}<th class="num">'
            f'volume{_term_link("volume", glossary)}</th>{sortable("purity")}<th>most frequent tokens</th></tr></thead>')
    rows = []
    for c in sorted(clusters, key=lambda c: (-c.size, c.label)):  # the scriptless order: largest first
        tokens = _e(json.dumps([t for t, _ in c.top_tokens], ensure_ascii=False))
        rows.append(f'<tr id="c{c.label}" data-label="{c.label}" data-size="{c.size}" '
                    f'data-conductance="{c.conductance!r}" data-purity="{c.purity!r}" data-tokens="{tokens}">'
                    f'<td class="num"><a href="clusters/{c.label}.html">{c.label}</a></td><td class="num">{c.size}</td>'
                    f'<td class="num">{_fmt(c.conductance)}</td><td class="num">{_fmt(c.volume)}</td>'
                    f'<td class="num">{c.purity:.2f}</td><td class="tokens">{_token_list(c.top_tokens, 8)}</td></tr>')
    controls = ('<div id="controls">sort by <button data-sort-button="size">size</button><button '
                'data-sort-button="conductance">conductance</button><button data-sort-button="purity">purity</button>'
                '<button data-sort-button="label">label</button> '
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


def cluster_page(inputs: Inputs, c: Cluster, i: int, labels: np.ndarray, config: ReportConfig,
                 limits: tuple[float, float] | None = None, listed_on: int | None = None) -> str:
    """clusters/<label>.html of ``c``, the ``i``-th of the clusters ``labels`` (in label order): its
    facts (each linked to the glossary), frequent tokens, profile and examples in context, each
    linked to its document's page.

    ``limits``: the profile's colour range (one for every page: ReportConfig.shared_profile_scale);
    None: its own. ``listed_on``: the index page (from 1) that lists it, when the index is paged.
    """
    n_tokens = inputs.labels.num_rows
    prev = (f'<a href="{labels[i - 1]}.html" rel="prev">← cluster {labels[i - 1]}</a>'
            if i > 0 else '<span class="muted">← (first)</span>')
    nxt = (f'<a href="{labels[i + 1]}.html" rel="next">cluster {labels[i + 1]} →</a>'
           if i + 1 < len(labels) else '<span class="muted">(last) →</span>')
    listed = ("" if listed_on is None else
              f'<a href="../{index_file(listed_on)}#c{c.label}">its row on index page {listed_on}</a>')
    nav = (f'<nav><a href="../index.html">↑ all clusters</a>{listed}<a href="../index.html#glossary">glossary</a>'
           f'{prev}{nxt}<span class="muted">{i + 1} of {len(labels)}, in label order</span></nav>')
    top = f'<code class="tok">{show_token(c.top_token, empty="∅")}</code>'
    threshold = inputs.cluster_config.get("conductance_threshold")
    facts = _facts([
        (_term("size"), f"{c.size} tokens ({100 * c.size / n_tokens:.2g}% of {n_tokens})"),
        (_term("purity"), f'<span id="purity">{c.purity:.2f}</span>: {top} is {c.top_count} of its {c.size} tokens'
         + (" (one token type: token identity, not a feature)" if c.purity >= IDENTITY_PURITY else "")),
        (_term("coverage"), (f"{c.coverage:.2f}: {c.top_count} of the {c.top_occurrences} occurrences of {top} "
                             "in the run are in this cluster")),
        (_term("conductance"), _fmt(c.conductance)
         + (f' <span class="muted">(threshold {threshold:g})</span>' if isinstance(threshold, (int, float)) else "")),
        (_term("volume"), _fmt(c.volume)),
        (_term("seed node", "seed-node"),
         f'row {c.seed_node}: <code class="tok">{show_token(c.seed_token, empty="∅")}</code>'),
        (_term("round"), str(c.round)),
    ])
    order = np.argsort(-np.nan_to_num(np.abs(c.profile), nan=-1.0))[:8]
    components = inputs.components
    strongest = ", ".join(f"<code>{_e(components[j])}</code> {c.profile[j]:+.3g}" for j in order
                          if np.isfinite(c.profile[j]))
    tokens = "".join(f'<tr><td><code class="tok">{show_token(t, empty="∅")}</code></td><td class="num">{n}</td>'
                     f'<td class="num">{100 * n / c.size:.1f}%</td></tr>' for t, n in c.top_tokens)
    shown = len(c.examples)
    examples = "\n".join(_example_row(x, _document_link(x)) for x in c.examples)
    scale = ("One colour scale for every cluster page (ReportConfig.shared_profile_scale)" if limits is not None
             else "Colours span this cluster's own profile (ReportConfig.shared_profile_scale: one scale for all)")
    body = f"""{nav}
<h1>Cluster {c.label}</h1>
{facts}
<h2>Most frequent tokens</h2>
<table class="data tokens"><thead><tr><th>token</th><th class="num">count</th><th class="num">share</th></tr></thead>
<tbody>{tokens}</tbody></table>
<h2>Mean susceptibility profile{_term_link("profile", "../index.html")}</h2>
<figure>{component_map_svg(c.profile, components, label=_profile_label(config, inputs),
                          diverging=config.profile == "zscore", muted=unreliable_components(inputs, config),
                          notes=_reliability_notes(inputs), limits=limits)}
<figcaption class="note">{_e(_profile_note(config, inputs.input_meta["convention"]))} {_e(scale)}.</figcaption></figure>
<p>Largest in magnitude: {strongest or '<span class="muted">none</span>'}</p>
{_noise_level(c, config)}
<h2>Tokens in context{_term_link("examples", "../index.html")}</h2>
<p class="muted">{shown} of {c.size} tokens{' (chosen at random)' if shown < c.size else ''}, in reading order;
up to {config.context_left} tokens before and {config.context_right} after, within the token's context
(… : the context goes on). Whitespace: · space, ⏎ newline, ⇥ tab. The first column (document:position) links to
the document's page.</p>
<table class="kwic"><tbody>
{examples}
</tbody></table>
{nav}"""
    return _page(f"Cluster {c.label}", body)


def document_page(doc_id: int, examples: list[Example], config: ReportConfig) -> str:
    """documents/<doc_id>.html: the example tokens of one document, of every cluster, in position order.

    Only the tokens shown on cluster pages, not the whole document (whose text can be far larger
    than the report): each row its position, its cluster (a link to that cluster page's row) and
    its context.
    """
    examples = sorted(examples, key=lambda x: (x.position if x.position is not None else -1, x.row))
    name = next((x.document for x in examples if x.document is not None), None)
    title = f"Document {name}" if name is not None else f"Document {doc_id}"
    rows = "\n".join(_example_row(x, (f'{"" if x.position is None else f"position {x.position} "}'
                                       f'<a href="../clusters/{x.label}.html#t{x.row}">cluster {x.label}</a>'))
                      for x in examples)
    nav = '<nav><a href="../index.html">↑ all clusters</a><a href="../index.html#glossary">glossary</a></nav>'
    body = f"""{nav}
<h1>{_e(title)}</h1>
<p class="muted">doc_id {doc_id}. The {len(examples)} example tokens of this document shown on cluster pages, in
position order, each with its cluster and its context (up to {config.context_left} tokens before and
{config.context_right} after); the other tokens of the document are in the token table (<code>labels.parquet</code>,
columns doc_id and position).</p>
<table class="kwic"><tbody>
{rows}
</tbody></table>
{nav}"""
    return _page(title, body)


def _document_link(x: Example) -> str:
    """Where an example token is, as a link to its row on its document's page (text only without a doc_id)."""
    where = f'title="labels.parquet row {x.row}"'
    if x.doc_id is None:
        return f"<span {where}>{_e(x.origin)}</span>"
    return f'<a href="../documents/{x.doc_id}.html#t{x.row}" {where}>{_e(x.origin)}</a>'


def _noise_level(c: Cluster, config: ReportConfig) -> str:
    """How far a mean of ``c.size`` unrelated z-scores strays from 0: 3 / sqrt(size), 3 standard deviations."""
    if config.profile != "zscore":
        return ""
    level = 3 / np.sqrt(c.size)
    above = int(np.sum(np.abs(np.nan_to_num(c.profile)) > level))
    return (f'<p class="muted">Noise level: a mean of {c.size} unrelated tokens\' z-scores lies within '
            f"&plusmn;3/&radic;{c.size} = &plusmn;{level:.2g} of 0; {above} of {len(c.profile)} components lie "
            "beyond it.</p>")


def _example_row(x: Example, where: str) -> str:
    """A row of a keyword-in-context table, anchored at ``#t<row>``: where (HTML), left context, the
    token marked, right context."""
    lead = "…" if x.more_left else ""
    tail = "…" if x.more_right else ""
    left = "".join(show_token(t) for t in x.left)
    right = "".join(show_token(t) for t in x.right)
    return (f'<tr id="t{x.row}"><td class="where">{where}</td><td class="left">{lead}{left}</td>'
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


@functools.lru_cache(maxsize=1 << 16)  # a vocabulary's worth: each example row shows ~17 tokens, on two pages
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
    """A two-column table; keys and values are HTML already."""
    cells = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="data facts">{cells}</table>'


def _term_link(anchor: str, index: str = "") -> str:
    """A small "?" linking to the glossary entry ``#g-<anchor>`` (``index``: the path to index.html; '' on it)."""
    return f' <a class="term" href="{index}#g-{anchor}" title="glossary">?</a>'


def _term(term: str, anchor: str | None = None) -> str:
    """A cluster page's fact name, linked to its glossary entry on the index."""
    return f'<a href="../index.html#g-{anchor or term}">{_e(term)}</a>'


def _token_list(tokens: list[tuple[str, int]], limit: int | None = None) -> str:
    shown = tokens[:limit] if limit is not None else tokens
    return " ".join(f'<code class="tok">{show_token(t, empty="∅")}</code><span class="muted">×{n}</span>'
                    for t, n in shown)
