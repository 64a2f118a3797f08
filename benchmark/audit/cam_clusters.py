"""Clusters of one model's CAMs: which strategies it uses for one predicted class (SpRAy).

Lapuschkin et al. ("Unmasking Clever Hans predictors", 2019) cluster a model's explanations to
find its strategies: the maps of images decided by a text marker look alike, and unlike those
decided by the lungs. Here: each map on the 16 x 16 grid, scaled to unit mass, so that maps are
compared by where their mass lies; a Gaussian affinity with a local scale per map (Zelnik-Manor and
Perona's self-tuning spectral clustering: sigma_i is the distance to the map's 7th neighbour); the
number of clusters k from the largest gap in the normalised Laplacian's eigenvalues (1 to
MAX_CLUSTERS); then the Ng-Jordan-Weiss embedding (the Laplacian's first k eigenvectors, each row
scaled to unit length) split by scikit-learn's KMeans. The affinity and the eigendecomposition run
with torch on the device asked for (a GPU where there is one).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

MAX_CLUSTERS = 6       # the eigengap may choose 1 .. MAX_CLUSTERS clusters
MIN_IMAGES = 8         # fewer maps than this in a class: one cluster, nothing to separate
MIN_CLUSTER_SIZE = 3   # k is bounded so that clusters of this size at least are possible
FEATURE_GRID = 16      # maps are compared on this grid
LOCAL_SCALE_NEIGHBOUR = 7


@dataclass(frozen=True)
class Clustering:
    labels: np.ndarray      # cluster per map, 0 .. k-1, clusters numbered by size (0: the largest)
    k: int
    distance: np.ndarray    # each map's distance to its cluster's mean feature
    eigenvalues: np.ndarray  # the smallest eigenvalues of the normalised Laplacian (the eigengap's)


def map_features(grid_maps: np.ndarray, grid: int = FEATURE_GRID) -> np.ndarray:
    """N x G x G maps -> N x grid^2 features, each map scaled to unit mass (an all-zero map stays 0)."""
    if len(grid_maps) == 0:
        return np.zeros((0, grid * grid), dtype=np.float64)
    t = torch.from_numpy(np.clip(np.asarray(grid_maps, dtype=np.float32), 0, None))[:, None]
    small = F.adaptive_avg_pool2d(t, (grid, grid))[:, 0].flatten(1).double()
    mass = small.sum(dim=1, keepdim=True)
    return torch.where(mass > 0, small / mass.clamp_min(1e-12), small).numpy()


def affinity(features: np.ndarray, device: str | torch.device = "cpu") -> torch.Tensor:
    """Self-tuning Gaussian affinity (zero diagonal), on `device`."""
    x = torch.as_tensor(features, dtype=torch.float64, device=device)
    d2 = torch.cdist(x, x).pow(2)
    n = x.shape[0]
    kth = min(LOCAL_SCALE_NEIGHBOUR, n - 1)
    sigma = torch.sort(d2, dim=1).values[:, kth].sqrt().clamp_min(1e-12)
    a = torch.exp(-d2 / (sigma[:, None] * sigma[None, :]))
    a.fill_diagonal_(0.0)
    return a


def laplacian_spectrum(a: torch.Tensor, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` smallest eigenvalues of I - D^-1/2 A D^-1/2 and their eigenvectors (columns)."""
    deg = a.sum(dim=1).clamp_min(1e-12)
    inv = deg.rsqrt()
    lap = torch.eye(a.shape[0], dtype=a.dtype, device=a.device) - inv[:, None] * a * inv[None, :]
    values, vectors = torch.linalg.eigh(lap)
    return values[:count].cpu().numpy(), vectors[:, :count].cpu().numpy()


def choose_k(eigenvalues: np.ndarray, n: int) -> int:
    """The eigengap rule: k where the gap between the k-th and (k+1)-th smallest eigenvalue is
    largest, bounded by MAX_CLUSTERS and by n / MIN_CLUSTER_SIZE."""
    upper = max(1, min(MAX_CLUSTERS, n // MIN_CLUSTER_SIZE, len(eigenvalues) - 1))
    gaps = np.diff(eigenvalues[:upper + 1])
    return int(np.argmax(gaps)) + 1 if len(gaps) else 1


def cluster_maps(grid_maps: np.ndarray, *, seed: int = 0, device: str | torch.device = "cpu") -> Clustering:
    """Cluster N maps (N x G x G, image coordinates); fewer than MIN_IMAGES maps: one cluster."""
    from sklearn.cluster import KMeans

    n = len(grid_maps)
    features = map_features(grid_maps)
    if n < MIN_IMAGES:
        return _finish(features, np.zeros(n, dtype=int), np.array([]))
    eigenvalues, vectors = laplacian_spectrum(affinity(features, device), MAX_CLUSTERS + 1)
    k = choose_k(eigenvalues, n)
    if k == 1:
        return _finish(features, np.zeros(n, dtype=int), eigenvalues)
    embedding = vectors[:, :k]
    embedding = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding)
    return _finish(features, labels, eigenvalues)


def _finish(features: np.ndarray, labels: np.ndarray, eigenvalues: np.ndarray) -> Clustering:
    """Number clusters by size (largest first; ties by first member) and measure each map's
    distance to its cluster's mean feature."""
    ids, counts = np.unique(labels, return_counts=True)
    first = [int(np.flatnonzero(labels == i)[0]) for i in ids]
    order = sorted(range(len(ids)), key=lambda j: (-counts[j], first[j]))
    renumber = {int(ids[j]): new for new, j in enumerate(order)}
    labels = np.array([renumber[int(v)] for v in labels], dtype=int)
    distance = np.zeros(len(labels))
    for c in range(len(ids)):
        members = labels == c
        centre = features[members].mean(axis=0)
        distance[members] = np.linalg.norm(features[members] - centre, axis=1)
    return Clustering(labels=labels, k=len(ids), distance=distance, eigenvalues=np.asarray(eigenvalues))
