"""The store: catalog.duckdb for rows, vectors.h5 for numbers."""
from embedstore.store.store import Run, Store, normalise, open_store

__all__ = ["Run", "Store", "normalise", "open_store"]
