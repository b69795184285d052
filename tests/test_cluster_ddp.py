"""The cluster stage split across ranks gives the single-process result, bit for bit."""

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lit_susc.cluster import cluster_graph, knn, knn_graph, whiten
from lit_susc.cluster.graph import load_graph
from lit_susc.cluster.knn import graph_from_knn, row_blocks

SCRIPT = Path(__file__).parent / "scripts" / "cluster_ddp_run.py"
# one thread everywhere, so whitening and k-NN arithmetic is the same in every process
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _planted(n_cloud=1500, sizes=(30, 60, 120), d=12, seed=0):
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n_cloud, d))]
    for s in sizes:
        c = rng.standard_normal(d)
        parts.append(10.0 * c / np.linalg.norm(c) + 0.3 * rng.standard_normal((s, d)))
    return whiten(np.vstack(parts))[0]


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_knn_row_blocks_concatenate_to_the_full_search(backend):
    X = _planted()
    idx, dist = knn(X, 45, backend)
    blocks = row_blocks(len(X), 3)
    assert blocks[0][0] == 0 and blocks[-1][1] == len(X)
    parts = [knn(X, 45, backend, rows=slice(a, b)) for a, b in blocks]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), idx)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), dist)
    A, B = knn_graph(X, 45, backend=backend), graph_from_knn(idx, dist)
    assert (A != B).nnz == 0


def _thread_ranks(A, world, **kw):
    """cluster_graph on `world` ranks played by threads, gathering through a barrier."""
    slots, barrier, out = [None] * world, threading.Barrier(world), [None] * world

    def gather(rank):
        def all_gather(obj):
            slots[rank] = obj
            barrier.wait()
            got = list(slots)
            barrier.wait()  # nobody overwrites a slot before everyone has read the round
            return got
        return all_gather

    def work(rank):
        out[rank] = cluster_graph(A, rank=rank, world_size=world, all_gather=gather(rank), n_threads=1, **kw)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.fixture(scope="module")
def graph():
    return knn_graph(_planted(), 45, backend="torch")


@pytest.mark.parametrize("world", [2, 3])
def test_seeds_split_across_ranks_give_the_single_process_labels(graph, world):
    kw = {"alpha": 1e-2, "eps": 1e-4, "seed": 5, "seeds_per_round": 8, "progress": False}
    labels, stats = cluster_graph(graph, **kw)
    assert len(stats) >= 3
    for rank_labels, rank_stats in _thread_ranks(graph, world, **kw):
        np.testing.assert_array_equal(rank_labels, labels)
        assert rank_stats == stats


def _script():
    spec = importlib.util.spec_from_file_location("cluster_ddp_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], check=False, env=ENV, timeout=300,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_two_process_ddp_stage_equals_one_process(tmp_path):
    run_dir = tmp_path / "run"
    _script().make(run_dir, n=2000, d=12)
    _run("cluster", run_dir, tmp_path / "one", 1)
    _run("cluster", run_dir, tmp_path / "two", 2)
    one, two = (pq.read_table(tmp_path / x / "labels.parquet") for x in ("one", "two"))
    assert one.equals(two)
    assert (one.column("label").to_numpy() >= 0).sum() > 0  # something was clustered
    stats = [pq.read_table(tmp_path / x / "clusters.parquet") for x in ("one", "two")]
    assert stats[0].equals(stats[1])
    A, B = (load_graph(tmp_path / x / "graph").to_scipy() for x in ("one", "two"))
    assert A.shape == B.shape and (A != B).nnz == 0
    assert (tmp_path / "two" / "summary.json").exists()
