"""The REST service (FastAPI + uvicorn): `create_app(store)` and `embedstore serve`; see app.py."""
from __future__ import annotations

__all__ = ["Settings", "create_app"]


def __getattr__(name: str):
    # Lazy, as in the package root: importing the settings does not load FastAPI, FAISS or torch.
    if name == "create_app":
        from embedstore.service.app import create_app

        return create_app
    if name == "Settings":
        from embedstore.service.settings import Settings

        return Settings
    raise AttributeError(name)
