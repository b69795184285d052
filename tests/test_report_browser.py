"""The cluster browser: a static report that opens from disk and shows every cluster's tokens.

Fixture: a small language-model-shaped run (600 tokens in 40 contexts of 15 predicted tokens,
10 components named like a 2-layer, 3-head transformer) with three planted groups of tokens whose
chi vectors sit far from the rest, clustered by the real cluster stage. The rendered pages are
checked in headless Chromium, as a reader would open them (file://, JavaScript on).
"""

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import matplotlib.image
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lit_susc import SusceptibilityResult
from lit_susc.aux.fit import sample_run_digest
from lit_susc.cluster.stage import ClusterConfig, run_cluster_stage
from lit_susc.report import ReportConfig, build_report, pages
from lit_susc.report.inputs import read_inputs
from lit_susc.report.pages import visible
from lit_susc.report.statistics import (
    IDENTITY_PURITY,
    cluster_profiles,
    context_windows,
    frequent_tokens,
    token_identity,
    token_types,
    top_token_counts,
)
from lit_susc.rundir import file_digest, write_json

COMPONENTS = [f"layers.{l}.heads.{h}" for l in range(2) for h in range(3)] + [
    "layers.0.mlp", "layers.1.mlp", "embed", "unembed"]
CONTEXTS, PER_CONTEXT, CONTEXTS_PER_DOC = 40, 15, 10
PLANTED = {" the": 30, "\n": 40, "<b>&": 50}  # token -> group size; "<b>&" must come out escaped
BACKGROUND = ["x", "y", "z", "(", ")", "=", "1", "2", "foo", "bar", "\t", "  "]
CLUSTERING = {"k": 10, "alpha": 1e-2, "eps": 1e-5, "min_size": 10}
CHROMIUM_TIMEOUT_S = 60


def _token_table(tokens: list[str], contexts: np.ndarray | None = None) -> pa.Table:
    """Columns and row order of ``corpus.token_table``: row c * 15 + t - 1 is token t of context c."""
    context = np.repeat(np.arange(CONTEXTS), PER_CONTEXT) if contexts is None else contexts
    offset = np.tile(np.arange(1, PER_CONTEXT + 1), CONTEXTS)
    doc = np.repeat(np.arange(CONTEXTS), PER_CONTEXT) // CONTEXTS_PER_DOC
    position = (np.repeat(np.arange(CONTEXTS), PER_CONTEXT) % CONTEXTS_PER_DOC) * (PER_CONTEXT + 1) + offset
    return pa.table({"doc_id": doc, "document": [f"doc{d}.py" for d in doc], "position": position,
                     "token_id": np.zeros(len(tokens), dtype=np.int64), "token": tokens, "context": context,
                     "offset": offset})


def _planted_chi(seed: int = 1):
    """chi [tokens, components] with planted groups, component scales spanning 4 decades; token texts."""
    rng = np.random.default_rng(seed)
    n, d = CONTEXTS * PER_CONTEXT, len(COMPONENTS)
    X = rng.standard_normal((n, d))
    tokens = list(rng.choice(BACKGROUND, size=n))
    rows = rng.permutation(n)
    start = 0
    for token, size in PLANTED.items():
        members = rows[start:start + size]
        start += size
        centre = rng.standard_normal(d)
        X[members] = 10 * centre / np.linalg.norm(centre) + 0.3 * rng.standard_normal((size, d))
        for r in members:
            tokens[r] = token
    return X * 10.0 ** (np.arange(d) % 5 - 2), tokens


def _traces() -> pa.Table:
    rows = [(c, k, s, 4.0 + 0.1 * np.sin(s + k), 4.1 if s >= 4 else float("nan"))
            for c in COMPONENTS for k in range(2) for s in range(10)]
    return pa.table(dict(zip(["component", "chain", "step", "loss", "ref_loss"], map(list, zip(*rows)))))


def _write_sample_run(directory: Path, X: np.ndarray, tokens: list[str]) -> Path:
    llc = {c: {"mean": 1.0 + i, "std": 0.1, "per_chain": [0.9 + i, 1.1 + i]} for i, c in enumerate(COMPONENTS)}
    # the six heads' chi is mostly noise (reliability 1 - 0.9^2 = 0.19), the rest is signal (0.9975)
    se = X.std(axis=0) * np.where(np.arange(len(COMPONENTS)) < 6, 0.9, 0.05)
    SusceptibilityResult(chi=torch.as_tensor(X.T.copy()), chi_se=torch.as_tensor(np.broadcast_to(se, X.shape).T.copy()),
                         components=COMPONENTS, convention="seed", nbeta=10.0,
                         llc=llc, config={"model": {"pretrained": "tiny-test-lm", "revision": None}},
                         tokens=_token_table(tokens)).save(directory, shard_tokens=256,
                                                           extra={"ref_loss_at_w_star": 4.0})
    pq.write_table(_traces(), directory / "traces.parquet")
    write_json(directory / "run.json", {"sgld": {"seed": 0}, "model": {"pretrained": "tiny-test-lm"}})
    return directory


def _write_aux_fit(directory: Path, sample_dir: Path, pearson_mean: float = 0.675) -> Path:
    """An aux fit of ``sample_dir`` as ``aux fit`` records it: its config's sample_dir, and the digest of
    the run's run.json and result.json (lit_susc.aux.fit.sample_run_digest)."""
    directory.mkdir()
    (directory / "aux.json").write_text(json.dumps({
        "config": {"sample_dir": str(sample_dir)}, "sample_run": sample_run_digest(sample_dir),
        "components": COMPONENTS, "n_pcs": 4, "pc_variances": [9.0, 3.0, 1.0, 0.5],
        "pearson": [0.9, 0.8, 0.6, 0.4], "pearson_mean": pearson_mean, "ridge": {"pearson": [0.8, 0.6, 0.3, 0.1]},
        "noise_ceiling": [0.99, 0.95, 0.7, 0.5]}))
    (directory / "summary.json").write_text("{}")
    return directory


def _write_analysis(directory: Path) -> Path:
    directory.mkdir()
    matplotlib.image.imsave(directory / "leak.png", np.random.default_rng(0).random((40, 60)))
    pq.write_table(pa.table({"layer": [1, 2], "cka_ground_truth": [0.91, 0.85], "cka_aux": [0.88, 0.8],
                             "jaccard_ground_truth": [0.3, 0.25], "jaccard_aux": [0.28, 0.2]}),
                   directory / "leak.parquet")
    return directory


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    X, tokens = _planted_chi()
    run_dir = _write_sample_run(root / "run", X, tokens)
    run_cluster_stage(ClusterConfig(input_dir=str(run_dir), **CLUSTERING), progress=False)
    aux_dir, analysis_dir = _write_aux_fit(root / "aux", run_dir), _write_analysis(root / "analysis")
    index = build_report(root / "report", cluster_dir=run_dir / "clusters", sample_dir=run_dir, aux_dir=aux_dir,
                         analysis_dir=analysis_dir)
    clusters = pq.read_table(run_dir / "clusters" / "clusters.parquet").to_pylist()
    assert len(clusters) >= 2, "the fixture needs a few clusters; the planted groups were not found"
    return {"root": root, "run": run_dir, "aux": aux_dir, "analysis": analysis_dir, "index": index,
            "clusters": clusters, "labels": pq.read_table(run_dir / "clusters" / "labels.parquet")}


# ----------------------------------------------------------------------------- helpers


class Elements(HTMLParser):
    """Start tags with their attributes, ids, and the text inside each <mark class="tok">."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.marks: list[str] = []
        self._in_mark = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "mark" and attrs.get("class") == "tok":
            self._in_mark += 1
            self.marks.append("")

    def handle_endtag(self, tag):
        if tag == "mark" and self._in_mark:
            self._in_mark -= 1

    def handle_data(self, data):
        if self._in_mark:
            self.marks[-1] += data

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}

    def rows(self) -> list[dict]:
        return [a for t, a in self.tags if t == "tr" and "data-label" in a]


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed, so the report cannot be rendered: run `apt-get install -y chromium` "
                    "(the CI script installs it)")
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
                           "--enable-logging=stderr", "--v=0", *args, url],
                          check=False, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    assert proc.returncode == 0, f"chromium failed on {url}:\n{proc.stderr[-3000:]}"
    errors = [line for line in proc.stderr.splitlines() if "Uncaught" in line]
    assert not errors, f"the page's script failed: {errors}"
    return proc.stdout


def members(work, label: int) -> list[str]:
    labels = work["labels"]
    mask = np.asarray(labels.column("label").to_pylist()) == label
    return list(np.asarray(labels.column("token").to_pylist(), dtype=object)[mask])


# ----------------------------------------------------------------------------- rendered pages


def test_index_renders_as_a_non_blank_page(work, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, work["index"].as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 0.05
    assert np.mean(pixels.min(axis=2) < 0.9) > 0.02  # a page's worth of ink, not a blank or an error stub


def test_rendered_index_lists_every_cluster_with_its_size_and_a_link_to_its_page(work, tmp_path):
    dom = Elements(chromium(tmp_path, work["index"].as_uri(), "--dump-dom"))
    rows = {int(r["data-label"]): r for r in dom.rows()}
    assert {c["label"]: c["size"] for c in work["clusters"]} == {k: int(r["data-size"]) for k, r in rows.items()}
    assert all("hidden" not in r for r in rows.values())
    links = {a["href"] for t, a in dom.tags if t == "a" and "href" in a}
    assert {f"clusters/{c['label']}.html" for c in work["clusters"]} <= links
    sizes = [int(r["data-size"]) for r in dom.rows()]
    assert sizes == sorted(sizes, reverse=True)  # the script's default order: largest first


def test_the_url_hash_sorts_by_conductance_and_filters_by_frequent_token(work, tmp_path):
    dom = Elements(chromium(tmp_path, work["index"].as_uri() + "#sort=conductance&dir=asc", "--dump-dom"))
    conductance = [float(r["data-conductance"]) for r in dom.rows()]
    assert conductance == sorted(conductance) and len(conductance) == len(work["clusters"])
    headers = {a["data-sort"]: a.get("aria-sort") for t, a in dom.tags if t == "th" and "data-sort" in a}
    assert headers == {"label": "none", "size": "none", "conductance": "ascending", "purity": "none"}

    dom = Elements(chromium(tmp_path, work["index"].as_uri() + "#q=THE", "--dump-dom"))
    shown = {int(r["data-label"]) for r in dom.rows() if "hidden" not in r}
    expected = {c["label"] for c in work["clusters"]
                if any("the" in t.lower() for t, _ in frequent_tokens(work["labels"], 15)[c["label"]])}
    assert shown == expected and 0 < len(shown) < len(work["clusters"])

    dom = Elements(chromium(tmp_path, work["index"].as_uri() + "#q=" + quote("⏎"), "--dump-dom"))
    shown = {int(r["data-label"]) for r in dom.rows() if "hidden" not in r}
    expected = {c["label"] for c in work["clusters"]
                if any("\n" in t for t, _ in frequent_tokens(work["labels"], 15)[c["label"]])}
    assert shown == expected and len(shown) > 0  # searched by the symbol the pages show for a newline


def test_each_cluster_page_shows_its_own_tokens_highlighted_in_context(work, tmp_path):
    for c in work["clusters"]:
        page = work["index"].parent / "clusters" / f"{c['label']}.html"
        dom = Elements(chromium(tmp_path, page.as_uri(), "--dump-dom"))
        assert len(dom.marks) == min(c["size"], ReportConfig().examples_per_cluster)
        own = {visible(t) or "∅" for t in members(work, c["label"])}
        assert set(dom.marks) <= own, f"cluster {c['label']} highlights tokens that are not its own"
        assert f"Cluster {c['label']}" in page.read_text()


def test_each_cluster_page_draws_its_profile_inline(work):
    """Oracle: cluster_profiles (checked against an in-memory z-scoring below); one SVG cell per component."""
    pages = work["index"].parent / "clusters"
    assert not list(pages.glob("*.png"))
    meta = json.loads((work["run"] / "result.json").read_text())
    for c in work["clusters"]:
        text = (pages / f"{c['label']}.html").read_text()
        titles = re.findall(r"<title>([^<]+): ([^<]+)</title>", text)
        assert [name for name, _ in titles] == [n for n in meta["components"] if n in dict(titles)]
        assert {name for name, _ in titles} == set(meta["components"])


def test_token_text_is_escaped_and_whitespace_is_visible(work):
    pages = {p.name: p.read_text() for p in (work["index"].parent / "clusters").glob("*.html")}
    text = "".join(pages.values())
    assert "&lt;b&gt;&amp;" in text and "<b>" not in text
    assert not any(t == "b" for p in pages.values() for t, _ in Elements(p).tags)
    shown = html.unescape(re.sub(r"<[^>]+>", "", text))  # the text a reader sees
    assert "·the" in shown and "⏎" in shown and "<b>&" in shown


def test_every_relative_link_and_image_resolves_to_a_file_and_nothing_is_fetched_from_the_network(work):
    report = work["index"].parent
    pages = sorted(report.rglob("*.html"))
    documents = set(work["labels"].column("doc_id").to_pylist())
    assert len(pages) == 1 + len(work["clusters"]) + len(list((report / "documents").glob("*.html")))
    assert {int(p.stem) for p in (report / "documents").glob("*.html")} <= documents
    for page in pages:
        dom = Elements(page.read_text())
        for tag, attrs in dom.tags:
            for key in ("href", "src"):
                if key not in attrs:
                    continue
                parts = urlsplit(attrs[key])
                assert not parts.scheme and not parts.netloc, f"{page.name}: {tag} {key}={attrs[key]!r} is not local"
                target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
                assert target.is_file(), f"{page.relative_to(report)}: {attrs[key]!r} points to no file"
                assert report.resolve() in target.parents or target == page
                if parts.fragment:
                    assert parts.fragment in Elements(target.read_text()).ids(), f"{attrs[key]!r}: no such anchor"


def test_cluster_pages_link_back_to_the_index_and_to_their_neighbours(work):
    labels = [c["label"] for c in work["clusters"]]
    for i, label in enumerate(labels):
        anchors = [a for t, a in Elements((work["index"].parent / "clusters" / f"{label}.html").read_text()).tags
                   if t == "a" and "href" in a]
        links = {a["rel"]: a["href"] for a in anchors if "rel" in a}
        assert "../index.html" in {a["href"] for a in anchors}
        assert links.get("prev") == (f"{labels[i - 1]}.html" if i > 0 else None)
        assert links.get("next") == (f"{labels[i + 1]}.html" if i + 1 < len(labels) else None)


def test_index_embeds_every_plot_and_the_leak_table(work):
    report = work["index"].parent
    images = {a["src"] for t, a in Elements(work["index"].read_text()).tags if t == "img"}
    assert images == {"plots/traces.png", "plots/llc.png", "plots/reliability.png", "plots/reliability_map.png",
                      "plots/pca_variance.png", "plots/pearson.png", "plots/cluster_sizes.png", "plots/leak.png"}
    assert (report / "plots" / "leak.png").read_bytes() == (work["analysis"] / "leak.png").read_bytes()
    text = work["index"].read_text()
    assert "cka_ground_truth" in text and "0.91" in text and "jaccard_aux" in text


def test_index_warns_plainly_when_the_median_component_is_mostly_noise(work):
    text = work["index"].read_text(encoding="utf-8")
    assert 'class="banner"' in text and "Mostly noise" in text and "median component reliability is 0.19" in text
    assert 'src="plots/reliability.png"' in text and (work["root"] / "report" / "plots" / "reliability.png").exists()
    assert "noise ceiling 0.785" in text  # the aux model's Pearson beside the best any predictor can reach


def test_profiles_hatch_the_components_whose_chi_is_mostly_noise(work):
    page = (work["root"] / "report" / "clusters" / f"{work['clusters'][0]['label']}.html").read_text(encoding="utf-8")
    assert page.count('fill="url(#muted)"') == 6  # the six heads, below ReportConfig.min_reliability = 0.3
    assert "layers.0.heads.0: " in page and "reliability 0.19" in page and "reliability 1.00" in page


def test_index_is_written_last(work):
    report = work["index"].parent
    others = [p for p in report.rglob("*") if p.is_file() and p != work["index"]]
    assert max(p.stat().st_mtime_ns for p in others) <= work["index"].stat().st_mtime_ns
    assert not list(report.rglob("*.tmp*"))


GLOSSARY_TERMS = ("size", "conductance", "volume", "seed-node", "round", "purity", "coverage", "baseline", "profile",
                  "examples", "good")


def _glossary(text: str) -> dict[str, str]:
    """glossary anchor -> the visible text of its definition, from the index's <dl class="glossary">."""
    dl = re.search(r'<dl class="glossary">(.*?)</dl>', text, re.DOTALL).group(1)
    return {m.group(1): html.unescape(re.sub(r"<[^>]+>", "", m.group(2))).strip()
            for m in re.finditer(r'<dt id="g-([^"]+)">.*?</dt><dd>(.*?)</dd>', dl, re.DOTALL)}


def test_the_glossary_defines_every_term_and_every_cluster_page_links_to_it(work):
    entries = _glossary(work["index"].read_text(encoding="utf-8"))
    assert set(GLOSSARY_TERMS) <= set(entries)
    assert all(len(entries[t]) > 40 for t in GLOSSARY_TERMS)
    assert "cut(S) / min(vol S, vol G − vol S)" in entries["conductance"] and "0.2 here" in entries["conductance"]
    assert "personalized PageRank" in entries["seed-node"] and "by token text" in entries["purity"]
    assert "min_size (10)" in entries["good"] and "purity below 1" in entries["good"]
    for c in work["clusters"]:
        links = {a["href"] for t, a in Elements((work["index"].parent / "clusters" / f"{c['label']}.html").read_text())
                 .tags if t == "a" and "href" in a}
        assert "../index.html#glossary" in links
        assert {f"../index.html#g-{t}" for t in ("size", "conductance", "volume", "seed-node", "round", "purity",
                                                  "coverage", "profile", "examples")} <= links


def test_the_contents_at_the_top_link_to_every_section_and_plot_and_the_plots_come_before_the_table(work):
    text = work["index"].read_text(encoding="utf-8")
    nav = re.search(r'<nav id="contents".*?</nav>', text, re.DOTALL)
    assert nav.start() < text.index('<h2 id="run">')  # the first thing after the title
    links = [a["href"] for t, a in Elements(nav.group(0)).tags if t == "a"]
    ids = Elements(text).ids()
    assert all(h.startswith("#") and h[1:] in ids for h in links), [h for h in links if h[1:] not in ids]
    figures = {a["id"] for t, a in Elements(text).tags if t == "figure"}
    assert figures and {f"#{f}" for f in figures} <= set(links)
    assert {"#run", "#token-identity", "#plots", "#glossary", "#clusters", "#leak-table"} <= set(links)
    table = text.index('id="cluster-table"')
    assert all(text.index(f'id="{f}"') < table for f in figures)


def test_purity_on_the_index_and_each_page_is_the_hand_counted_share_of_the_most_frequent_token(work):
    """Oracle: collections.Counter over each cluster's token texts in labels.parquet."""
    from collections import Counter

    rows = {int(r["data-label"]): r for r in Elements(work["index"].read_text(encoding="utf-8")).rows()}
    for c in work["clusters"]:
        ((_, n),) = Counter(members(work, c["label"])).most_common(1)
        assert float(rows[c["label"]]["data-purity"]) == pytest.approx(n / c["size"])
        page = (work["index"].parent / "clusters" / f"{c['label']}.html").read_text(encoding="utf-8")
        assert f'<span id="purity">{n / c["size"]:.2f}</span>' in page
        assert f"is {n} of its {c['size']} tokens" in page


def test_purity_coverage_and_ties_on_a_mixed_hand_counted_table():
    """Oracle: counted by hand. Cluster 0: a a b (purity 2/3); 1: b c c c a (3/5); 2: y x (a tie: 'x',
    the first in text order, as frequent_tokens lists it); 'a' occurs 5 times in all, 2 of them in cluster 0."""
    tokens = ["a", "a", "b", "b", "c", "c", "c", "a", "y", "x", "a", "a"]
    index = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, -1, -1])
    types, texts = token_types(pa.table({"token": tokens}))
    assert texts == sorted(set(tokens)) and [texts[t] for t in types] == tokens
    count, top = top_token_counts(types, index, 3)
    assert count.tolist() == [2, 3, 1] and [texts[t] for t in top] == ["a", "c", "x"]
    assert np.bincount(types)[top[0]] == 5  # coverage of cluster 0: 2 / 5
    table = pa.table({"label": index, "token": tokens})
    assert [frequent_tokens(table, 1)[k][0][0] for k in range(3)] == ["a", "c", "x"]


def test_the_token_identity_baseline_tells_single_token_clusters_from_mixed_ones():
    """Four clusters of 60 tokens of two texts: one text each (purity 1) or half and half (purity 0.5)."""
    single = np.repeat([0, 1, 0, 1], 60)
    mixed = np.tile([0, 1], 120)
    index = np.repeat(np.arange(4), 60)
    for types, purity, identity_clusters in ((single, 1.0, 4), (mixed, 0.5, 0)):
        count, _ = top_token_counts(types, index, 4)
        baseline = token_identity(types, index, count, seed=0)
        assert baseline.mean_purity == purity and baseline.identity_clusters == identity_clusters
        # shuffled labels: about half of each cluster is its most frequent text, a little more by chance
        assert 0.5 <= baseline.shuffled_purity < 0.65
    assert token_identity(single, index, top_token_counts(single, index, 4)[0], seed=0).identity_score == 1.0
    assert abs(token_identity(mixed, index, top_token_counts(mixed, index, 4)[0], seed=0).identity_score) < 0.3
    same = np.zeros(240, np.int64)
    assert np.isnan(token_identity(same, index, top_token_counts(same, index, 4)[0], seed=0).identity_score)
    assert IDENTITY_PURITY == 0.8


def test_the_index_states_the_token_identity_baseline_of_the_run(work):
    """The planted groups are one token each: every cluster is a token type."""
    text = html.unescape(re.sub(r"<[^>]+>", "", re.search(r'<p id="identity-summary">(.*?)</p>',
                                                          work["index"].read_text(encoding="utf-8"), re.DOTALL).group(1)))
    n = len(work["clusters"])
    assert f"{n} of {n} clusters (100%) are one token type (purity ≥ 0.8)" in text
    assert "Mean purity" in text and ": 1.00;" in text and "token identity alone would have 1.00" in text


def test_each_example_links_to_its_row_on_its_document_page_which_links_back(work):
    """Oracle: labels.parquet's doc_id, document and position of each example's row."""
    labels = work["labels"].to_pydict()
    report = work["index"].parent
    for c in work["clusters"]:
        page = report / "clusters" / f"{c['label']}.html"
        links = [a for t, a in Elements(page.read_text(encoding="utf-8")).tags
                 if t == "a" and a.get("href", "").startswith("../documents/")]
        assert len(links) == min(c["size"], ReportConfig().examples_per_cluster)
        for a in links:
            m = re.fullmatch(r"\.\./documents/(\d+)\.html#t(\d+)", a["href"])
            doc, row = int(m.group(1)), int(m.group(2))
            assert labels["label"][row] == c["label"] and labels["doc_id"][row] == doc
            assert a["title"] == f"labels.parquet row {row}"
            target = (report / "documents" / f"{doc}.html").read_text(encoding="utf-8")
            shown = re.search(rf'<tr id="t{row}"><td class="where">(.*?)</td>', target).group(1)
            assert f"position {labels['position'][row]} " in shown
            assert f'href="../clusters/{c["label"]}.html#t{row}"' in shown
            assert f"Document {labels['document'][row]}" in target
        rows = {a["id"] for t, a in Elements(page.read_text(encoding="utf-8")).tags if t == "tr" and "id" in a}
        assert {"t" + a["href"].rsplit("#t", 1)[1] for a in links} == rows  # each example's own row is anchored


def test_a_shared_profile_scale_gives_every_cluster_page_the_same_colour_range(work, tmp_path):
    """Oracle: the default pages, whose ranges are each cluster's own max |profile|; shared, every page takes the largest."""
    def ranges(report: Path) -> dict[int, tuple[float, float]]:
        out = {}
        for c in work["clusters"]:
            svg = re.search(r'<svg [^>]*data-vmin="([^"]+)" data-vmax="([^"]+)"',
                            (report / "clusters" / f"{c['label']}.html").read_text(encoding="utf-8"))
            out[c["label"]] = (float(svg.group(1)), float(svg.group(2)))
        return out

    own = ranges(work["index"].parent)
    assert len(set(own.values())) > 1 and all(lo == -hi for lo, hi in own.values())
    build_report(tmp_path / "shared", cluster_dir=work["run"] / "clusters", sample_dir=work["run"],
                 config=ReportConfig(shared_profile_scale=True))
    shared = ranges(tmp_path / "shared")
    bound = max(hi for _, hi in own.values())
    assert set(shared.values()) == {(-bound, bound)}
    assert "One colour scale for every cluster page" in (tmp_path / "shared" / "clusters" /
                                                         f"{work['clusters'][0]['label']}.html").read_text()


# ----------------------------------------------------------------------------- what is computed


def test_profiles_are_mean_z_scores_computed_from_chi_read_in_blocks(work):
    """Oracle: z-scoring the whole chi matrix in memory, then averaging each cluster's rows."""
    chi = SusceptibilityResult.load(work["run"]).chi.numpy().T
    labels = np.asarray(work["labels"].column("label").to_pylist())
    cluster_labels = np.array([c["label"] for c in work["clusters"]])
    index = np.where(labels >= 0, np.searchsorted(cluster_labels, labels), -1)
    sizes = np.array([c["size"] for c in work["clusters"]], dtype=np.float64)
    z = (chi - chi.mean(0)) / chi.std(0)
    expected = np.stack([z[labels == label].mean(0) for label in cluster_labels])
    got = cluster_profiles(work["run"], index, sizes, ReportConfig(chi_block_tokens=7))  # 86 blocks, 3 shards
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    raw = cluster_profiles(work["run"], index, sizes, ReportConfig(profile="raw", chi_block_tokens=100))
    np.testing.assert_allclose(raw, np.stack([chi[labels == label].mean(0) for label in cluster_labels]), rtol=1e-12)


def test_a_context_window_stops_at_its_context_whatever_the_context_numbering():
    """Rows of tokens 1..5 of contexts [7, 8] (global numbering) or [0, 0] (numbering restarting per shard)."""
    for ids in ([7] * 5 + [8] * 5, [0] * 5 + [0] * 5):
        context = np.array([-1] + ids + [-1])  # the table's ends are padded with -1
        offset = np.array([-1] + [1, 2, 3, 4, 5] * 2 + [-1])
        windows = np.lib.stride_tricks.sliding_window_view(np.arange(12), 7)  # left 2, right 2, one extra each side
        before, after = context_windows(context[windows], offset[windows], left=2, right=2)
        # centres: rows 3..8 of the padded table, i.e. tokens 3, 4, 5 of the first context and 1, 2, 3 of the second
        assert before.tolist() == [2, 3, 3, 0, 1, 2]
        assert after.tolist() == [2, 1, 0, 3, 3, 2]


# ----------------------------------------------------------------------------- other inputs


def _clustered_prediction(directory: Path, aux_dir: Path, X: np.ndarray, tokens: list[str]) -> Path:
    """An aux-predict directory of ``aux_dir``'s model (chi shards, token-table shards under tokens/ with
    global context numbers, result.json's config naming the aux fit as ``aux predict`` records it),
    clustered into ``<directory>-clusters``."""
    SusceptibilityResult(chi=torch.as_tensor(X.T.copy()), components=COMPONENTS, convention="seed",
                         nbeta=10.0).save(directory, shard_tokens=300)
    table, shards = _token_table(tokens), []
    (directory / "tokens").mkdir()
    for s, start in enumerate((0, 300)):
        name = f"tokens/shard-{s:05d}.parquet"
        pq.write_table(table.slice(start, 300), directory / name)
        shards.append({"file": name, "start": start, "stop": start + 300})
    meta = json.loads((directory / "result.json").read_text())
    write_json(directory / "result.json", {**meta, "source": "aux", "tokens": shards,  # with its checksum
                                           "config": {"aux": file_digest(aux_dir / "aux.json"),
                                                      "aux_dir": str(aux_dir)}})
    clusters = directory.with_name(directory.name + "-clusters")
    run_cluster_stage(ClusterConfig(input_dir=str(directory), output_dir=str(clusters), **CLUSTERING), progress=False)
    return clusters


def test_a_clustering_of_aux_predicted_chi_is_reported_with_its_own_token_table(work, tmp_path):
    X, tokens = _planted_chi(seed=2)
    predicted = tmp_path / "predict"
    clusters = _clustered_prediction(predicted, work["aux"], X, tokens)
    index = build_report(tmp_path / "report", cluster_dir=clusters, sample_dir=work["run"], aux_dir=work["aux"])
    text = index.read_text()
    assert "predicted by the aux model" in text and str(predicted) in text
    found = pq.read_table(clusters / "clusters.parquet").to_pylist()
    assert len(Elements(text).rows()) == len(found) >= 2
    labels = pq.read_table(clusters / "labels.parquet")
    for c in found:
        marks = Elements((index.parent / "clusters" / f"{c['label']}.html").read_text()).marks
        own = {visible(t) or "∅" for t, lab in zip(tokens, labels.column("label").to_pylist()) if lab == c["label"]}
        assert marks and set(marks) <= own


def test_no_clusters_is_said_plainly_and_gives_no_cluster_pages(work, tmp_path):
    out = tmp_path / "none"
    # no prefix fits: the largest a cluster may be (1% of 600 tokens) is below min_size
    run_cluster_stage(ClusterConfig(input_dir=str(work["run"]), output_dir=str(out), **CLUSTERING,
                                    max_fraction=0.01), progress=False)
    index = build_report(tmp_path / "report", cluster_dir=out, sample_dir=work["run"])
    text = index.read_text()
    assert "found no clusters" in text and "0 of 600 tokens" in text
    assert not list((index.parent / "clusters").iterdir())
    assert not (index.parent / "plots" / "cluster_sizes.png").exists()


def test_a_failed_rebuild_leaves_no_index_behind(work, tmp_path, monkeypatch):
    report = tmp_path / "report"
    shutil.copytree(work["index"].parent, report)

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pages, "component_map_svg", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report(report, cluster_dir=work["run"] / "clusters", sample_dir=work["run"])
    assert not (report / "index.html").exists()


def test_a_directory_that_is_not_a_report_is_left_alone(work, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and holds no report"):
        build_report(tmp_path, cluster_dir=work["run"] / "clusters", sample_dir=work["run"])
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_inputs_that_do_not_belong_together_are_refused_before_anything_is_written(work, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(work["run"] / "clusters", unfinished)
    (unfinished / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="no finished clustering"):
        build_report(tmp_path / "r1", cluster_dir=unfinished, sample_dir=work["run"])
    with pytest.raises(FileNotFoundError, match="sample_dir .*missing-run does not exist"):
        build_report(tmp_path / "r2", cluster_dir=work["run"] / "clusters", sample_dir=tmp_path / "missing-run")
    other = _write_sample_run(tmp_path / "other", *_planted_chi(seed=3))
    with pytest.raises(ValueError, match="is of the sampling run"):
        build_report(tmp_path / "r3", cluster_dir=work["run"] / "clusters", sample_dir=other)
    with pytest.raises(ValueError, match="trace_components pattern 'layers.9.\\*'"):
        build_report(tmp_path / "r4", cluster_dir=work["run"] / "clusters", sample_dir=work["run"],
                     config=ReportConfig(trace_components=["layers.9.*"]))
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


@pytest.fixture(scope="module")
def other_run(work):
    """Another finished sampling run with the same components (other chi, so another result.json), clustered."""
    other = _write_sample_run(work["root"] / "other-run", *_planted_chi(seed=3))
    run_cluster_stage(ClusterConfig(input_dir=str(other), **CLUSTERING), progress=False)
    return other


def _forget_the_run_digest(aux: Path) -> None:
    """aux.json as a fit from before it recorded the digest of its sample run wrote it."""
    meta = json.loads((aux / "aux.json").read_text())
    del meta["sample_run"]
    (aux / "aux.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("record", ["digest", "none"], ids=[
    "by the fit's digest of the run", "by its config's sample_dir, in a fit from before the digest"])
def test_a_sample_dir_that_is_not_the_run_the_aux_model_was_fit_on_is_refused(work, other_run, tmp_path, record):
    """The report would show the other run's draws and LLCs beside the aux model's plots. A clustering
    of aux predictions is refused the same way, whether the aux fit is passed or found where the
    prediction names it."""
    aux = tmp_path / "aux"
    shutil.copytree(work["aux"], aux)
    if record == "none":
        _forget_the_run_digest(aux)
    refused = f"the aux model in {aux} was fit on the sampling run {work['run']}, not on sample_dir {other_run}"
    with pytest.raises(ValueError, match=re.escape(refused)) as err:
        build_report(tmp_path / "r1", cluster_dir=other_run / "clusters", sample_dir=other_run, aux_dir=aux)
    assert f"pass sample_dir={str(work['run'])!r}" in str(err.value)
    clusters = _clustered_prediction(tmp_path / "predict", aux, *_planted_chi(seed=2))
    for aux_dir in (aux, None):
        with pytest.raises(ValueError, match=re.escape(refused)):
            build_report(tmp_path / "r2", cluster_dir=clusters, sample_dir=other_run, aux_dir=aux_dir)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_a_clustering_of_another_aux_models_predictions_is_refused(work, tmp_path):
    other_fit = _write_aux_fit(tmp_path / "other-aux", work["run"], pearson_mean=0.5)
    clusters = _clustered_prediction(tmp_path / "predict", other_fit, *_planted_chi(seed=2))
    with pytest.raises(ValueError, match=re.escape(f"is of chi that the aux model in {other_fit} predicted")) as err:
        build_report(tmp_path / "r", cluster_dir=clusters, sample_dir=work["run"], aux_dir=work["aux"])
    assert f"but aux_dir is {work['aux']}, another fit; pass aux_dir={str(other_fit)!r}" in str(err.value)
    assert not (tmp_path / "r").exists()


def test_a_run_and_its_aux_fit_moved_elsewhere_are_still_the_run_it_was_fit_on(work, tmp_path):
    """What decides is the digest the fit recorded, not the path: the run (with its clustering inside it)
    and the fit are copied elsewhere. Without the digest, the copy is recognised as the run the fit's
    config names by its run.json and result.json."""
    run, aux = shutil.copytree(work["run"], tmp_path / "run"), shutil.copytree(work["aux"], tmp_path / "aux")
    inputs = read_inputs(cluster_dir=run / "clusters", sample_dir=run, aux_dir=aux)
    assert inputs.sample_dir == run and inputs.aux is not None
    _forget_the_run_digest(aux)  # without the digest, the sample_dir recorded decides
    read_inputs(cluster_dir=run / "clusters", sample_dir=run, aux_dir=aux)
