"""Clustering on a similarity matrix: complete-linkage agglomeration, the silhouette that chooses how
many groups, and the adjusted Rand index that scores a grouping against a known split, all from
scikit-learn (imported on first use: parsing a config does not pay for it).

Complete linkage on ``-similarity`` is what the clustered-FL reference code uses for its bipartition
(Sattler et al., github.com/felisat/clustered-federated-learning, ``cluster_clients``:
``AgglomerativeClustering(affinity="precomputed", linkage="complete")``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cosines_from_gramian(gram: torch.Tensor) -> torch.Tensor:
    """``G_ij / (|u_i| |u_j|)`` in float64; a zero row has cosine 0 with everything (1 with itself)."""
    gram = gram.double()
    norms = gram.diagonal().clamp_min(0).sqrt()
    outer = torch.outer(norms, norms)
    cosines = torch.where(outer > 0, gram / outer.clamp_min(1e-300), torch.zeros_like(gram))
    return cosines.fill_diagonal_(1.0)


def complete_linkage(distance: torch.Tensor, groups: int) -> list[tuple[int, ...]]:
    """``n`` items cut into ``groups`` clusters by complete-linkage agglomeration on ``distance``;
    the clusters as sorted index tuples, ordered by their smallest index."""
    n = distance.shape[0]
    if not 1 <= groups <= n:
        raise ValueError(f"cannot cut {n} items into {groups} groups")
    if groups == n:
        return [(i,) for i in range(n)]
    if groups == 1:
        return [tuple(range(n))]
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=groups, metric="precomputed", linkage="complete").fit_predict(
        distance.double().numpy()
    )
    return _clusters(labels.tolist())


def silhouette(distance: torch.Tensor, clusters: Sequence[Sequence[int]]) -> float:
    """Mean silhouette ``(b - a) / max(a, b)`` over the items (Rousseeuw, 1987); needs two clusters or more."""
    from sklearn.metrics import silhouette_score

    labels = [0] * distance.shape[0]
    for c, members in enumerate(clusters):
        for i in members:
            labels[i] = c
    return float(silhouette_score(distance.double().numpy(), labels, metric="precomputed"))


def adjusted_rand_index(labels: Sequence[object], truth: Sequence[object]) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings of the same items (1 = the same partition)."""
    from sklearn.metrics import adjusted_rand_score

    if len(labels) != len(truth):
        raise ValueError(f"{len(labels)} labels against {len(truth)} true labels")
    return float(adjusted_rand_score([str(x) for x in truth], [str(x) for x in labels]))


def _clusters(labels: Sequence[int]) -> list[tuple[int, ...]]:
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    return sorted((tuple(m) for m in by_label.values()), key=lambda c: c[0])
