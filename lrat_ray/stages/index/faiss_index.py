"""FAISS: building a shard's index (flat, ivf or hnsw; on GPU FAISS when asked), its search
settings, and merging the shards' top k by score."""

from __future__ import annotations

import numpy as np

from lrat_ray.infra.errors import LratError

INDEX_TYPES = ("flat", "ivf", "hnsw")


def build_faiss(
    vectors: np.ndarray,
    index_type: str = "flat",
    nlist: int = 1024,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_search: int = 128,
):
    """An inner-product FAISS index over ``vectors`` (float32, one row per document)."""
    import faiss

    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        lists = max(1, min(nlist, len(vectors) // 39))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
    index.add(vectors)
    return search_settings(index, {"type": index_type, "nprobe": nprobe, "ef_search": ef_search})


def search_settings(index, params: dict):
    """Search-time parameters, which FAISS does not keep in the saved file."""
    if params["type"] == "ivf":
        index.nprobe = min(params["nprobe"], index.nlist)
    elif params["type"] == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    return index


def to_gpu(index):
    import faiss

    if not hasattr(faiss, "index_cpu_to_all_gpus") or faiss.get_num_gpus() == 0:
        raise LratError(
            "GPU FAISS asked for, but this faiss has no GPU support or sees no GPU; "
            "install the 'gpu' extra on a GPU machine or drop --faiss-gpu"
        )
    return faiss.index_cpu_to_all_gpus(index)


def merge_top_k(results: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best ``k`` of several shards' FAISS answers ``(scores, rows)``, each ``(queries, k_s)``:
    ``(scores, shard positions, rows)``, best first; a missing hit has row -1. Equal scores (the
    same text twice gives the same vector) are ordered by shard, then row: FAISS returns ties in
    an order of its own, which also differs between its SIMD code paths."""
    scores = np.concatenate([s for s, _ in results], axis=1)
    rows = np.concatenate([r for _, r in results], axis=1)
    which = np.concatenate([np.full(r.shape, i) for i, (_, r) in enumerate(results)], axis=1)
    scores = np.where(rows >= 0, scores, -np.inf)
    order = np.lexsort((rows, which, -scores), axis=1)[:, :k]
    return tuple(np.take_along_axis(a, order, axis=1) for a in (scores, which, rows))
