"""embedstore: an embedding dataset and vector search service for echocardiogram videos."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["open_store", "Store", "Searcher", "get_encoder", "__version__"]


def __getattr__(name: str):
    # Lazy: `import embedstore` stays fast; torch and faiss load only when used.
    if name in ("open_store", "Store"):
        from embedstore import store

        return getattr(store, name)
    if name == "Searcher":
        from embedstore.index.search import Searcher

        return Searcher
    if name == "get_encoder":
        from embedstore.encoders import get_encoder

        return get_encoder
    raise AttributeError(name)
