"""Analysis on top of the store: 2-D views (PCA/UMAP) with plots, and the papers' evaluation metrics.

`make_view` / `compute_view` / `load_view` / `figure` (views.py), `evaluate` / `to_markdown`
(evaluate.py), and the array-level metric functions in `embedstore.analysis.metrics`.
"""
from embedstore.analysis.evaluate import evaluate, to_markdown
from embedstore.analysis.views import compute_view, figure, load_view, make_view, write_html, write_png

__all__ = ["compute_view", "evaluate", "figure", "load_view", "make_view", "to_markdown", "write_html", "write_png"]
