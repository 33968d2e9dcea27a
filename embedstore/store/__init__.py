"""The store: catalog.duckdb for rows, vectors.h5 for numbers."""
from embedstore.store.opening import open_store
from embedstore.store.store import Run, Store, normalise

__all__ = ["Run", "Store", "normalise", "open_store"]
