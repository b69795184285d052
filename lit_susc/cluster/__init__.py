"""Clustering of susceptibility vectors: whitening -> k-NN graph -> ACL push -> sweep cuts."""

from .appr import approximate_pagerank
from .clustering import cluster_graph, find_clusters
from .knn import graph_from_knn, knn, knn_graph
from .sweep import sweep_cut
from .whiten import whiten

__all__ = [
           "approximate_pagerank",
           "cluster_graph",
           "find_clusters",
           "graph_from_knn",
           "knn",
           "knn_graph",
           "sweep_cut",
           "whiten",
]
