"""Which FAISS index a vector set gets, and how it is made and searched: the size rule, factory strings,
per-query parameters, training.

Below both index/build.py (in-RAM indexes) and index/large.py (memory-mapped IVF + exact re-ranking):
they import these from here, never from each other. See indexes/README.md for the size rule.
"""
from __future__ import annotations

import os
import re

import faiss
import numpy as np

from embedstore.devices import faiss_gpus
from embedstore.errors import BadInput

FLAT_MAX = 50_000  # below this, exact search is fast enough (~1 ms per 10k vectors per query at 512-d, one core)
HNSW_M = 32
# The graph over fp16 copies of the vectors: half the bytes a distance reads, the same recall (see choose_factory)
HNSW_FACTORY = f"HNSW{HNSW_M}_SQfp16"
HNSW_CODE_BYTES = 2  # per dimension (fp16)
HNSW_MEMORY_SHARE = 0.5  # an in-memory kind while its estimated size is under this share of available memory
# From here on, IVF-RaBitQ re-ranked with the exact vectors beats the HNSW graph query for query
# (measured from 100k on: bench/search.py, see choose_factory; unmeasured below)
RABITQ_MIN = 100_000
EF_FILTERED_MAX = 4096
# Under a filter keeping `share` of the rows, HNSW's beam is efSearch x this / share: 1 / share alone kept
# recall@10 at 0.92-0.93 with 4-10% of 100k rows (bench/filtered.py, efSearch 10)
FILTERED_EF_FACTOR = 2
# IVF's nprobe under a filter is nprobe x this / share: the allowed neighbours lie farther out, over more
# lists. IVF1024,RaBitQ,RFlat at 100k x 512 (nprobe 2, k_factor 2), recall@10 vs exact filtered, by lists
# probed: 8% kept 50 0.894, 100 0.937, 200 0.955; 16% kept 25 0.93, 50 0.965, 100 0.978 (factor 2 fell short)
FILTERED_NPROBE_FACTOR = 8
METRIC = "inner_product (cosine on L2-normalised vectors)"
RERANK = ",RFlat"  # the suffix of the memory-mapped IVF + exact re-ranking kind (index/large.py)
MEMORY_ENV = "EMBEDSTORE_INDEX_MEMORY"
UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


# -- the choice rule --------------------------------------------------------------------------------
def memory_setting() -> int | None:
    """Bytes given by $EMBEDSTORE_INDEX_MEMORY (e.g. 8G, 512M, 1e9): the in-RAM limit, when set."""
    value = os.environ.get(MEMORY_ENV, "").strip()
    if not value:
        return None
    match = re.fullmatch(r"([0-9.eE+]+)\s*([KMGT]?)B?", value.upper())
    if match is None:
        raise BadInput(f"{MEMORY_ENV}={value!r} is not a size; write e.g. 8G, 512M or 1000000000")
    return int(float(match.group(1)) * UNITS[match.group(2)])


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation ($EMBEDSTORE_INDEX_MEMORY if set, psutil if installed, else /proc/meminfo)."""
    setting = memory_setting()
    if setting is not None:
        return setting
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def hnsw_bytes(n: int, dim: int, m: int = HNSW_M, code_bytes: int = HNSW_CODE_BYTES) -> int:
    """Estimated HNSW size: the vectors' codes, 2M level-0 links of 4 bytes, upper levels and the id map."""
    return int(n * (code_bytes * dim + 2 * m * 4 * 1.1 + 64))


def ivf_lists(n: int) -> int:
    """~4 sqrt(n) inverted lists, a power of two between 1,024 and 262,144."""
    return int(min(max(2 ** round(np.log2(4 * np.sqrt(n))), 1024), 262_144))


def ivf_pq_factory(n: int, dim: int) -> str:
    """IVF with ivf_lists(n) lists and 8-bit PQ codes of dim/8 sub-vectors (SQ8 if none fit)."""
    m = next((m for m in range(dim // 8, 0, -1) if dim % m == 0), 1)
    return f"IVF{ivf_lists(n)},PQ{m}" if m >= 8 else f"IVF{ivf_lists(n)},SQ8"


def rabitq_bytes(n: int, dim: int) -> int:
    """Estimated IVF-RaBitQ + exact re-rank file: float32 rows, 1-bit codes plus their factors, ids."""
    return int(n * (4 * dim + dim / 8 + 24))


def choose_factory(n: int, dim: int, available: int | None, mappable: bool = True) -> tuple[str, str]:
    """(FAISS factory string, the reason) for n vectors of dimension dim.

    mappable: the rows are numbered 0..n-1 and the index is not centred, which the memory-mapped
    IVF + exact re-rank kind needs (index/large.py); otherwise that kind is never chosen.

    From RABITQ_MIN vectors, while its file fits in the page cache: IVF over 1-bit RaBitQ codes with
    the candidates re-ranked by the exact vectors (`IVF{K},RaBitQ,RFlat`, index/large.py). From
    FLAT_MAX, or when that cannot be used, while it fits: HNSW32 over fp16 copies of the vectors
    (HNSW_FACTORY). Decided from bench/search.py (512-d embedding-like vectors, fresh queries, one
    thread, each index at the smallest setting reaching recall@10 0.95 on them; 2 shared cores).
    p50 as a multiple of raw faiss's p50 on HNSW32_SQfp16 in the same interleaved blocks / index MB / build s:
      100k, 200 centres (load ~1.5):  HNSW32_SQfp16 0.88 / 130 / 6.2   HNSW32 (Flat) 1.17 / 232 / 8.0
        hnswlib M32 1.30 / 232 / 5.5   usearch f32 2.75 / 320 / 9.4   usearch i8 + re-rank 2.52 / 323 / 5.0
        HNSW32_SQ8,RFlat 0.97 / 283 / 6.1   IVF1024,PQ64x4fs,RFlat 1.18 / 211 / 4.8
        IVF1024,RaBitQ,RFlat 0.70 / 215 / 5.4   IVF1024,RaBitQfs,RFlat 0.71 / 216 / 5.1
      200k, 400 centres (load ~6):    HNSW32_SQfp16 1.12 / 259 / 22.5   HNSW32 1.44 / 464 / 22.5
        hnswlib 1.36 / 465 / 22.6   HNSW32_SQ8,RFlat 1.01 / 566 / 19.0   IVF2048,RaBitQfs,RFlat 0.97 / 432 / 20.6
      1M, 2,000 centres (load ~1.9, 2026-11-29), single queries/s / index MB / build s:
        HNSW32_SQfp16 2,815 / 1,296 / 108   hnswlib 3,553 / 2,324 / 102   IVF4096,RaBitQ,RFlat 6,670 / 2,136 / 95
        (in RAM; memory-mapped as built here 6,001, through the Searcher 4,036)   IVF4096,RaBitQfs,RFlat 6,423
        IVF4096,PQ64x4fs,RFlat 4,554   usearch i8 + re-rank 1,212
    (usearch i8 alone never reached 0.95: 0.91 at expansion_search 512.) The 1-bit codes (64 bytes at
    512-d) are scanned in a few lists and only k x k_factor (4) exact rows are read; the graph reads
    ~efSearch x 32 fp16 vectors scattered over memory. fp16 keeps HNSW-Flat's recall at the same
    efSearch (its rounding, ~2e-5 on a cosine, is far below the gaps between neighbours), at half
    the memory. Beyond memory: IVF-PQ + re-rank, memory-mapped (measured by bench/scale.py).
    """
    if n < FLAT_MAX:
        return "Flat", f"{n} < {FLAT_MAX} vectors: exact search"
    if mappable and n >= RABITQ_MIN and _fits(rabitq_bytes(n, dim), available):
        return f"IVF{ivf_lists(n)},RaBitQ", (f"{n} >= {RABITQ_MIN} vectors: IVF over 1-bit RaBitQ codes, its file "
                                             f"fits in the page cache ({_room(rabitq_bytes(n, dim), available)})")
    need = hnsw_bytes(n, dim)
    if _fits(need, available):
        why = "" if mappable or n < RABITQ_MIN else " (rows not numbered 0..n-1, or centred: no memory-mapped IVF)"
        return HNSW_FACTORY, f"{n} vectors, HNSW over fp16 vectors fits in memory ({_room(need, available)}){why}"
    return ivf_pq_factory(n, dim), (f"HNSW would need {need / 1e9:.1f} GB > {HNSW_MEMORY_SHARE:.0%} of "
                                    f"{available / 1e9:.1f} GB available: compressed, memory-mappable IVF-PQ")


def _fits(need: int, available: int | None) -> bool:
    return available is None or need <= HNSW_MEMORY_SHARE * available


def _room(need: int, available: int | None) -> str:
    if available is None:
        return "memory unknown"
    return f"{need / 1e9:.1f} GB <= {HNSW_MEMORY_SHARE:.0%} of {available / 1e9:.1f} GB available"


def is_large(factory: str) -> bool:
    """True for the re-ranked, memory-mapped IVF kind that index/large.py builds."""
    return factory.endswith(RERANK)


def reranked(factory: str, reason: str) -> tuple[str, str]:
    """The automatic choice beyond HNSW gets exact re-ranking; other choices pass through."""
    if not factory.startswith("IVF"):
        return factory, reason
    return factory + RERANK, f"{reason}; re-ranked with exact vectors (the codes alone top out near recall 0.6 at 512-d)"


# -- making and searching ----------------------------------------------------------------------
def new_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index that takes explicit ids (IVF does natively, others via IDMap2)."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        why = str(exc).strip().splitlines()[-1][:160]
        raise BadInput(f"--factory {factory!r} is not a FAISS factory string for dimension {dim}: {why}") from None
    if faiss.try_extract_index_ivf(index) is None and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.IndexIDMap2(index)
    return index


def inner_index(index: faiss.Index) -> faiss.Index:
    """The index under an IDMap wrapper (itself when there is none)."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.downcast_index(index.index)
    return index


def exact_rerank(index: faiss.Index) -> faiss.IndexFlat | None:
    """The exact rows of the memory-mapped IVF + re-rank kind (position = catalog row), None for other kinds."""
    if not isinstance(index, faiss.IndexRefine):
        return None
    flat = faiss.downcast_index(index.refine_index)
    return flat if isinstance(flat, faiss.IndexFlat) else None


def holds_exact_vectors(index: faiss.Index) -> bool:
    """True when `reconstruct` returns the stored vectors exactly (Flat, HNSW-Flat, the re-rank's rows)."""
    if exact_rerank(index) is not None:
        return True
    inner = inner_index(index)
    return isinstance(inner, (faiss.IndexFlat, faiss.IndexHNSWFlat)) and isinstance(index, faiss.IndexIDMap2)


def flat_storage(index: faiss.Index) -> tuple[np.ndarray, faiss.Index] | None:
    """(the id at each position, the flat index holding the vectors) of an IDMap2 over Flat, HNSW-Flat or
    HNSW over fp16, or of the IVF + exact re-rank kind (its exact rows); None for any other index.

    A filter's allowed rows are scored exactly by searching that flat index with a bitmap of their
    positions: 0.85 ms for 4,000 of 60,000 fp16 rows at 512-d, where IDMap2.reconstruct_batch looks
    ids up one by one (~3.7 us a row) and NumPy's fp16 -> fp32 conversion alone took 4.4 ms.
    """
    rerank = exact_rerank(index)
    if rerank is not None:
        return np.arange(rerank.ntotal, dtype=np.int64), rerank
    if not isinstance(index, faiss.IndexIDMap2):
        return None
    inner = inner_index(index)
    storage = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
    fp16 = isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16
    if not (isinstance(storage, faiss.IndexFlat) or fp16):
        return None
    return faiss.vector_to_array(index.id_map).astype(np.int64), storage


def search_parameters(params: dict, k: int, selector=None, share: float = 1.0) -> faiss.SearchParameters | None:
    """Per-query FAISS parameters (no global state): the sidecar's efSearch/nprobe plus an id selector.

    Under a filter that allows `share` of the rows, HNSW widens its beam by FILTERED_EF_FACTOR / share (up
    to EF_FILTERED_MAX) and IVF probes FILTERED_NPROBE_FACTOR / share times more lists (FAISS stops at
    all of them), so that enough allowed candidates are compared to keep recall. None when there is nothing to set (exact
    search, no filter).
    """
    if "efSearch" in params:
        ef = max(int(params["efSearch"]), k)
        wide = ef * (FILTERED_EF_FACTOR if share < 1 else 1) / share
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(min(wide, max(EF_FILTERED_MAX, ef))))
    if "nprobe" in params:
        wide = int(params["nprobe"]) * (FILTERED_NPROBE_FACTOR if share < 1 else 1) / share
        ivf = faiss.SearchParametersIVF(sel=selector, nprobe=int(np.ceil(wide)))
        if "k_factor" not in params:
            return ivf
        # IVF re-ranked with exact vectors (index/large.py): nprobe and the selector go to the IVF part
        return faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]), base_index_params=ivf)
    return None if selector is None else faiss.SearchParameters(sel=selector)


def train_index(index: faiss.Index, vectors: np.ndarray) -> None:
    """index.train, with an IVF's k-means (the slow part) on the GPUs when FAISS sees any.

    The GPU index is detached after training so its memory is freed with this call (left attached,
    every build in a long-lived process kept one); a GPU failure trains on the CPU instead.
    """
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or faiss_gpus() == 0:
        index.train(vectors)
        return
    try:
        on_gpus = faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.metric_type))
    except (AttributeError, RuntimeError):
        index.train(vectors)
        return
    ivf.clustering_index = on_gpus  # a plain pointer: `on_gpus` keeps the GPU index alive meanwhile
    try:
        index.train(vectors)
    finally:
        ivf.clustering_index = None
        del on_gpus
