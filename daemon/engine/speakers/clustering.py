"""Which voice prints belong to one person: agglomerative clustering of the prints by cosine distance.

Average linkage merges the closest groups of prints until the closest two are further apart
than THRESHOLD (the `auto` setting), or until the number of speakers the settings ask for is
reached. A long recording's prints are clustered through at most MAX_ANCHORS of them, evenly
spread, and every print then goes to the nearest group: the distance matrix, quadratic in its
size, stays the same few megabytes for an hour of speech as for five minutes.
"""

from __future__ import annotations

import numpy as np

from daemon.transcript import Voice

# Cosine distance between the average prints of two groups above which they are two people. CAM++
# prints of one person's 1.5-s windows lie about 0.2-0.5 apart, of two people 0.7-1.0; the
# development set (bench/speakers.py) is labelled right at 0.7; at 0.6 one reader became two.
THRESHOLD = 0.7
MAX_ANCHORS = 800  # 800 prints (10 minutes of speech): a 2.6 MB distance matrix, ~0.1 s to cluster
# A group of fewer prints than this share of all of them (and fewer than MIN_PRINTS) is a stray
# (a cough, a laugh, a burst of noise), not a person: its prints go to the nearest real group.
MIN_SHARE = 0.02
MIN_PRINTS = 2


def vectors(voices: list[Voice]) -> np.ndarray:
    """(prints, 192) unit vectors."""
    v = np.stack([np.frombuffer(x.vector, "<f4") for x in voices]).astype(np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def cluster(voices: list[Voice], bounds: tuple[int, int]) -> np.ndarray:
    """A speaker number for each print: 0 for the first voice heard, 1 for the next one, and so on.
    `bounds`: the least and the most speakers the settings allow (1 and a large number for `auto`)."""
    if not voices:
        return np.zeros(0, int)
    v = vectors(voices)
    low, high = bounds
    anchors = v if len(v) <= MAX_ANCHORS else v[np.linspace(0, len(v) - 1, MAX_ANCHORS).round().astype(int)]
    if len(anchors) < 2 or (low <= 1 and (anchors @ anchors.T).min() >= 1 - THRESHOLD):
        # Every pair closer than THRESHOLD: average linkage would merge them all. A voice memo ends here.
        return np.zeros(len(v), int)
    from scipy.cluster.hierarchy import fcluster, linkage  # 0.7 s to import: only when there is a tree to cut

    tree = linkage(anchors, method="average", metric="cosine")
    groups = fcluster(tree, t=THRESHOLD, criterion="distance")
    found = len(set(groups))
    if found > high or found < low:
        groups = fcluster(tree, t=min(max(found, low), high, len(anchors)), criterion="maxclust")
    centroids = _real_groups(anchors, groups, keep_at_least=low)
    labels = np.argmax(v @ centroids.T, axis=1)
    return _in_order_of_appearance(labels)


def _real_groups(anchors: np.ndarray, groups: np.ndarray, keep_at_least: int) -> np.ndarray:
    """The unit centroid of each group big enough to be a person (the biggest `keep_at_least` always)."""
    ids, sizes = np.unique(groups, return_counts=True)
    order = np.argsort(-sizes, kind="stable")
    big = [ids[i] for n, i in enumerate(order)
           if n < max(1, keep_at_least) or sizes[i] >= max(MIN_PRINTS, MIN_SHARE * len(anchors))]
    centroids = np.stack([anchors[groups == g].mean(axis=0) for g in big])
    return centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)


def _in_order_of_appearance(labels: np.ndarray) -> np.ndarray:
    first = {}
    for label in labels.tolist():
        first.setdefault(label, len(first))
    return np.array([first[label] for label in labels.tolist()], int)
