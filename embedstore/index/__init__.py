"""FAISS indexes over a store's vectors: build/refresh (build.py), search (search.py), same-patient (similar.py)."""
from embedstore.index.build import build_index, load_index
from embedstore.index.search import Hit, Searcher, SearchResult
from embedstore.index.similar import similar, similar_ids, similar_videos

__all__ = ["Hit", "SearchResult", "Searcher", "build_index", "load_index", "similar", "similar_ids", "similar_videos"]
