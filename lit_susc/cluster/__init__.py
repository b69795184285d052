"""Clustering of susceptibility vectors: whitening -> k-NN graph -> ACL push -> sweep cuts."""

from .appr import approximate_pagerank
from .clustering import cluster_graph, find_clusters
from .knn import graph_from_knn, knn, knn_graph
from .sweep import sweep_cut
from .whiten import whiten

__all__ = ["whiten", "knn", "knn_graph", "graph_from_knn", "approximate_pagerank", "sweep_cut", "find_clusters",
           "cluster_graph"]
