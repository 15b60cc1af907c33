"""Clusterers: learn and predict a whole (n, dim) float32 batch at once."""

from stream.clustering.base import BatchResult, Clusterer, ClusterState, Delta, apply_delta
from stream.clustering.denstream import DenStream
from stream.clustering.kmeans import OnlineKMeans

__all__ = [
    "BatchResult", "ClusterState", "Clusterer", "Delta", "DenStream", "OnlineKMeans", "apply_delta",
]
