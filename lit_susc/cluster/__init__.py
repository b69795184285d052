"""Clustering of susceptibility vectors: whitening -> k-NN graph -> ACL push -> sweep cuts.

In memory (``whiten``, ``knn_graph``) or, for more tokens than memory holds, on disk: token blocks
whitened into a memory-mapped file (``whiten_to_file``), the neighbours stored into memory-mapped
arrays (``knn(..., out=...)``), the graph built and mapped from a directory (``build_graph``,
``load_graph``). The cluster stage (``cluster.stage``) takes the second path.
"""

from .appr import approximate_pagerank
from .clustering import cluster_graph, find_clusters
from .graph import Graph, build_graph, load_graph
from .knn import graph_from_knn, knn, knn_graph
from .sweep import sweep_cut
from .whiten import fit_whitening, whiten, whiten_to_file

__all__ = [
           "Graph",
           "approximate_pagerank",
           "build_graph",
           "cluster_graph",
           "find_clusters",
           "fit_whitening",
           "graph_from_knn",
           "knn",
           "knn_graph",
           "load_graph",
           "sweep_cut",
           "whiten",
           "whiten_to_file",
]
