"""The report at scale: a clustering with more clusters than one index page holds.

Fixture: a synthetic finished clustering (``write_clustering``: random chi, clusters of sizes ~
1/rank written as the cluster stage writes them), the cheapest input the report accepts; with
1,200 clusters its index is paged (pages.INDEX_PAGE_CLUSTERS = 500 to a page).
benchmarks/bench_report.py times the same input at 10^4 clusters.
"""

import math
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_report_browser import COMPONENTS, Elements

from lit_susc import SusceptibilityResult
from lit_susc.cluster.stage import ClusterConfig
from lit_susc.report import browser, build_report
from lit_susc.report.pages import INDEX_PAGE_CLUSTERS, index_file
from lit_susc.report.statistics import Clustering
from lit_susc.rundir import mark_finished, write_json, write_parquet

MANY, FEW = 1200, 40

TOKENS_PER_CONTEXT, CONTEXTS_PER_DOC, VOCABULARY = 32, 8, 2000


def write_clustering(directory: Path, n_tokens: int, n_clusters: int, components: list[str] = COMPONENTS,
                     seed: int = 0) -> Path:
    """A finished sampling run in ``directory`` and a finished clustering of it in ``directory/clusters``; returns
    ``directory``.

    The run: ``n_tokens`` tokens drawn from a vocabulary of ``VOCABULARY`` words, in contexts of
    ``TOKENS_PER_CONTEXT`` and documents of ``CONTEXTS_PER_DOC`` contexts; chi standard normal,
    [components, tokens]. The clustering: a fifth of the tokens unclustered, the rest in
    ``n_clusters`` clusters of sizes ~ 1/rank, each at least one token, labelled 0..n_clusters-1.
    """
    rng = np.random.default_rng(seed)
    context = np.arange(n_tokens) // TOKENS_PER_CONTEXT
    offset = np.arange(n_tokens) % TOKENS_PER_CONTEXT + 1
    doc = context // CONTEXTS_PER_DOC
    words = pa.array([f" w{i}" if i % 7 else f"\nw{i}" for i in range(VOCABULARY)])
    tokens = pa.table({
        "doc_id": doc, "document": pa.array([f"doc{d}.txt" for d in range(int(doc[-1]) + 1)]).take(pa.array(doc)),
        "position": (context % CONTEXTS_PER_DOC) * TOKENS_PER_CONTEXT + offset,
        "token_id": rng.integers(0, VOCABULARY, n_tokens), "context": context, "offset": offset})
    tokens = tokens.add_column(4, "token", words.take(tokens.column("token_id")))
    chi = torch.randn(len(components), n_tokens, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    llc = {c: {"mean": 1.0, "std": 0.1, "per_chain": [0.9, 1.1]} for c in components}
    SusceptibilityResult(chi=chi, components=components, convention="seed", nbeta=10.0, llc=llc,
                         config={"model": {"pretrained": "synthetic"}}, tokens=tokens).save(directory)
    del chi

    clustered = rng.permutation(n_tokens)[:n_tokens - n_tokens // 5]
    if len(clustered) < n_clusters:
        raise ValueError(f"{n_clusters} clusters need at least {n_clusters} clustered tokens, not {len(clustered)}")
    share = 1 / np.arange(1, n_clusters + 1)
    labels = np.full(n_tokens, -1, np.int64)
    labels[clustered] = rng.choice(n_clusters, size=len(clustered), p=share / share.sum())
    labels[clustered[:n_clusters]] = np.arange(n_clusters)
    sizes = np.bincount(labels[clustered], minlength=n_clusters)
    out = directory / "clusters"
    write_parquet(out / "labels.parquet", tokens.append_column("label", pa.array(labels)))
    write_parquet(out / "clusters.parquet", pa.table({
        "label": np.arange(n_clusters), "size": sizes, "conductance": rng.uniform(0.01, 0.2, n_clusters),
        "volume": sizes * rng.uniform(5, 10, n_clusters), "seed_node": clustered[:n_clusters],
        "round": rng.integers(0, 10, n_clusters)}))
    write_json(out / "config.json", asdict(ClusterConfig(input_dir=str(directory))))
    mark_finished(out, {"tokens": n_tokens, "clusters": n_clusters, "clustered_tokens": len(clustered)})
    return directory


@pytest.fixture(scope="module")
def paged(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-scale")
    run = write_clustering(root / "run", n_tokens=6000, n_clusters=MANY)
    index = build_report(root / "report", cluster_dir=run / "clusters", sample_dir=run, progress=False)
    clusters = pq.read_table(run / "clusters" / "clusters.parquet").to_pylist()
    return {"run": run, "report": index.parent, "sizes": {c["label"]: c["size"] for c in clusters}}


def index_pages(report: Path) -> list[Path]:
    """The index pages in page order, as the report names them."""
    n = len(list(report.glob("index*.html")))
    return [report / index_file(k) for k in range(1, n + 1)]


def links(page: Path) -> list[dict]:
    """The attributes of every <a href> on ``page``."""
    return [a for t, a in Elements(page.read_text(encoding="utf-8")).tags if t == "a" and "href" in a]


def page_links(page: Path) -> list[dict]:
    """The links of ``page``'s bars of links to other index pages."""
    text = page.read_text(encoding="utf-8")
    bars = text.split('<nav class="pages"')[1:]
    return [a for bar in bars for t, a in Elements(bar.split("</nav>")[0]).tags if t == "a"]


def test_a_paged_index_lists_every_cluster_exactly_once_largest_first(paged):
    pages = index_pages(paged["report"])
    assert len(pages) == math.ceil(MANY / INDEX_PAGE_CLUSTERS) == 3
    rows = [[int(r["data-label"]) for r in Elements(p.read_text(encoding="utf-8")).rows()] for p in pages]
    assert [len(r) for r in rows] == [500, 500, 200]
    listed = [label for page in rows for label in page]
    assert sorted(listed) == sorted(paged["sizes"])  # each once
    sizes = [paged["sizes"][label] for label in listed]
    assert sizes == sorted(sizes, reverse=True)


def test_every_index_page_links_to_the_first_previous_next_and_last_page_and_every_link_resolves(paged):
    pages = index_pages(paged["report"])
    ids = {p.name: Elements(p.read_text(encoding="utf-8")).ids() for p in pages}
    for k, page in enumerate(pages, start=1):
        bar = page_links(page)
        rel = {a["rel"]: a["href"] for a in bar if "rel" in a}
        assert rel.get("prev") == (index_file(k - 1) if k > 1 else None)
        assert rel.get("next") == (index_file(k + 1) if k < len(pages) else None)
        assert {index_file(n) for n in range(1, len(pages) + 1) if n != k} <= {a["href"] for a in bar}
        for a in links(page):
            parts = urlsplit(a["href"])
            target = page.parent / parts.path if parts.path else page
            assert target.is_file(), f"{page.name}: {a['href']!r} points to no file"
            if parts.fragment:
                assert parts.fragment in ids[target.name], a["href"]


def test_following_next_from_index_html_visits_every_page_once(paged):
    seen, page = [], paged["report"] / "index.html"
    while page is not None:
        seen.append(page.name)
        nxt = [a["href"] for a in page_links(page) if a.get("rel") == "next"]
        page = paged["report"] / nxt[0] if nxt else None
    assert seen == [p.name for p in index_pages(paged["report"])]


def test_the_first_page_keeps_the_run_summary_and_later_pages_link_back_to_it(paged):
    first, *later = index_pages(paged["report"])
    ids = Elements(first.read_text(encoding="utf-8")).ids()
    assert {"run", "token-identity", "plots", "glossary", "clusters"} <= ids
    for page in later:
        hrefs = {a["href"] for a in links(page)}
        assert {"index.html", "index.html#glossary", "index.html#g-size"} <= hrefs
        assert "run" not in Elements(page.read_text(encoding="utf-8")).ids()


def test_every_cluster_has_a_page_that_links_to_its_row_on_the_index_page_listing_it(paged):
    report = paged["report"]
    rows = {p.name: {int(r["data-label"]) for r in Elements(p.read_text(encoding="utf-8")).rows()}
            for p in index_pages(report)}
    pages = {int(p.stem): p for p in (report / "clusters").glob("*.html")}
    assert set(pages) == set(paged["sizes"])
    for label, page in pages.items():
        # the link is in the bars above and below the page
        (listed,) = set(re.findall(r'href="\.\./(index[^"#]*)#c(\d+)"', page.read_text(encoding="utf-8")))
        assert int(listed[1]) == label and label in rows[listed[0]]


def test_cluster_pages_are_written_in_batches_as_they_are_rendered(paged, tmp_path, monkeypatch):
    """At most PAGES_PER_BATCH clusters' examples exist at once, and each batch's pages are on disk
    before the next batch is built."""
    built, report = [], tmp_path / "report"
    clusters = Clustering.clusters

    def recording(self, positions, examples=True):
        if examples:
            built.append((len(positions), len(list((report / "clusters").glob("*.html")))))
        return clusters(self, positions, examples)

    monkeypatch.setattr(Clustering, "clusters", recording)
    build_report(report, cluster_dir=paged["run"] / "clusters", sample_dir=paged["run"], progress=False)
    sizes = [n for n, _ in built]
    assert sum(sizes) == MANY and max(sizes) <= browser.PAGES_PER_BATCH < MANY
    assert [on_disk for _, on_disk in built] == np.cumsum([0, *sizes[:-1]]).tolist()


def test_a_run_with_few_clusters_keeps_a_single_index_without_page_links(tmp_path):
    run = write_clustering(tmp_path / "run", n_tokens=600, n_clusters=FEW)
    index = build_report(tmp_path / "report", cluster_dir=run / "clusters", sample_dir=run, progress=False)
    assert [p.name for p in index_pages(index.parent)] == ["index.html"]
    assert not list(index.parent.glob("index-*.html"))
    text = index.read_text(encoding="utf-8")
    assert len(Elements(text).rows()) == FEW and 'class="pages"' not in text
    assert not any("index page" in p.read_text(encoding="utf-8") for p in (index.parent / "clusters").glob("*.html"))


def test_rebuilding_a_paged_report_with_few_clusters_leaves_no_stale_index_pages(paged, tmp_path):
    report = shutil.copytree(paged["report"], tmp_path / "report")
    run = write_clustering(tmp_path / "run", n_tokens=600, n_clusters=FEW)
    build_report(report, cluster_dir=run / "clusters", sample_dir=run, progress=False)
    assert [p.name for p in report.glob("index*.html")] == ["index.html"]
    assert len(list((report / "clusters").glob("*.html"))) == FEW


def test_a_progress_bar_counts_the_cluster_pages(tmp_path, capsys):
    run = write_clustering(tmp_path / "run", n_tokens=600, n_clusters=FEW)
    build_report(tmp_path / "report", cluster_dir=run / "clusters", sample_dir=run)
    shown = capsys.readouterr().err
    assert "report: cluster pages: 100%" in shown and f"{FEW}/{FEW}" in shown
