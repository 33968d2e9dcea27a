"""2-D maps of a vector set (PCA or UMAP): stored in the store's views/, drawn as PNG and as HTML.

Why stored: UMAP takes seconds to minutes, and the REST route `GET /views/{encoder}?method=` must
serve the coordinates the CLI drew. A view file (views/<encoder>.<method>.parquet: id, x, y) carries
the method, parameters, seed and the store fingerprint it was computed from in its parquet metadata;
it is reused while those match and flagged `stale` when the vectors changed since. Labels are
joined from the catalog when a view is loaded, so they never go out of date.
The HTML page is self-contained (inline canvas and script, no CDN): it opens offline.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from embedstore.encoders.provenance import RANDOM_INIT
from embedstore.errors import BadInput, NotFound
from embedstore.store import Store
from embedstore.store.atomic import whole_or_absent
from embedstore.store.catalog import VIDEO_COLUMNS

METHODS = ("pca", "umap")
LABEL_COLUMNS = ("ef", "split", "patient_id", "study_id")
COLOR_ALIASES = {"patient": "patient_id", "study": "study_id"}
META_KEY = b"embedstore.view"
MIN_POINTS = 4  # UMAP needs more points than components + 1
UMAP_PARAMS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"}
CATEGORY_LEGEND_MAX = 20


def view_path(store: Store, encoder: str, method: str) -> Path:
    return store.views_dir / f"{encoder}.{method}.parquet"


def color_column(color: str) -> str:
    """Catalog column for a colour name ('patient' -> patient_id); BadInput for an unknown one."""
    column = COLOR_ALIASES.get(color, color)
    if column not in VIDEO_COLUMNS:
        raise BadInput(f"cannot colour by {color!r}: give ef, split, patient or a videos column ({', '.join(VIDEO_COLUMNS)})")
    return column


def video_labels(store: Store, ids: Sequence[str], columns: Sequence[str]) -> dict[str, list]:
    """{column: values in the order of ids} from the videos table; None where a video has no row."""
    unknown = [c for c in columns if c not in VIDEO_COLUMNS]
    if unknown:
        raise BadInput(f"unknown videos column(s) {unknown}; known: {', '.join(VIDEO_COLUMNS)}")
    rows = store.catalog.video_columns(list(ids), list(columns))
    found = {r[0]: r[1:] for r in rows}
    empty = (None,) * len(columns)
    return {c: [_plain(found.get(i, empty)[k]) for i in ids] for k, c in enumerate(columns)}


def _plain(value):
    """JSON-ready scalar: numbers and strings as they are, anything else (timestamps) as text."""
    return value if value is None or isinstance(value, (str, int, float)) else str(value)


# -- computing and storing ------------------------------------------------------------------
def compute_view(store: Store, encoder: str, method: str = "umap", seed: int = 0, recompute: bool = False,
                 columns: Sequence[str] = LABEL_COLUMNS) -> dict:
    """2-D coordinates of every video vector of `encoder`, written to views/ (or reused); see load_view."""
    if method not in METHODS:
        raise BadInput(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    info = store.encoder_info(encoder)
    fingerprint = store.catalog.fingerprint(encoder, "videos")
    ids, vectors = store.all_vectors(encoder, "videos")
    if len(ids) < MIN_POINTS:
        raise BadInput(f"a {method} view needs at least {MIN_POINTS} {encoder} vectors, the store has {len(ids)}")
    params = {"n_components": 2} if method == "pca" else {**UMAP_PARAMS, "n_neighbors": min(UMAP_PARAMS["n_neighbors"], len(ids) - 1)}
    path = view_path(store, encoder, method)
    if path.exists() and not recompute:
        old = _read_meta(path)
        if (old["fingerprint"], old["params"], old["seed"]) == (fingerprint, params, seed):
            return load_view(store, encoder, method, columns)
    coords, extra = _pca(vectors) if method == "pca" else _umap(vectors, params, seed)
    meta = {"encoder": encoder, "method": method, "params": params, "seed": seed, "fingerprint": fingerprint,
            "n": len(ids), "random_init": info["weights_sha256"] == RANDOM_INIT,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}
    _write_view(path, ids, coords, meta)
    return load_view(store, encoder, method, columns)


def _pca(vectors: np.ndarray) -> tuple[np.ndarray, dict]:
    """First two principal components (numpy SVD), signs fixed so the result is reproducible."""
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    signs = np.sign(vt[np.arange(2), np.abs(vt[:2]).argmax(axis=1)])  # largest loading positive
    coords = u[:, :2] * s[:2] * signs
    total = float((s**2).sum()) or 1.0
    return coords, {"explained_variance_ratio": [float(v) / total for v in s[:2] ** 2]}


def _umap(vectors: np.ndarray, params: dict, seed: int) -> tuple[np.ndarray, dict]:
    """UMAP with a fixed random_state on one thread: the same coordinates for the same seed."""
    import umap

    model = umap.UMAP(n_components=2, random_state=seed, n_jobs=1, **params)
    return np.asarray(model.fit_transform(vectors), dtype=np.float64), {}


def _write_view(path: Path, ids: list[str], coords: np.ndarray, meta: dict) -> None:
    """Parquet (id, x, y) with the parameters in its metadata; written aside, then moved into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": pa.array(ids, pa.string()), "x": coords[:, 0], "y": coords[:, 1]})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with whole_or_absent(tmp, path.name):
        pq.write_table(table, tmp)
    os.replace(tmp, path)


def _read_meta(path: Path) -> dict:
    import pyarrow.parquet as pq

    return json.loads(pq.read_schema(path).metadata[META_KEY])


def load_view(store: Store, encoder: str, method: str = "umap", columns: Sequence[str] = LABEL_COLUMNS) -> dict:
    """A stored view: its parameters, `stale` (vectors changed since), ids, x, y and catalog labels.

    Works on a read-only store: this is what the REST view route returns.
    """
    import pyarrow.parquet as pq

    path = view_path(store, encoder, method)
    if not path.exists():
        raise NotFound(f"no {method} view of {encoder} in {store.path}; "
                       f"make one with `embedstore view --store {store.path} --encoder {encoder} --method {method}`")
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    ids = table.column("id").to_pylist()
    return {**meta, "stale": meta["fingerprint"] != store.catalog.fingerprint(encoder, "videos"),
            "ids": ids, "x": table.column("x").to_pylist(), "y": table.column("y").to_pylist(),
            "labels": video_labels(store, ids, list(dict.fromkeys(columns)))}


# -- drawing --------------------------------------------------------------------------------
def is_numeric(values: Sequence) -> bool:
    return all(v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)) for v in values)


def figure(view: dict, color: str = "ef", values: Sequence | None = None, title: str | None = None):
    """A matplotlib Figure of the view coloured by a label column (or by `values`, e.g. cluster ids).

    Numbers get a continuous colormap and a colour bar; strings get one colour per category and a
    legend (up to 20 categories). Built without pyplot, so it is safe in servers and threads.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    name = color if values is not None else color_column(color)
    values = list(values) if values is not None else view["labels"][name]
    fig = Figure(figsize=(6.4, 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, y = np.asarray(view["x"]), np.asarray(view["y"])
    if is_numeric(values):
        _numeric_scatter(fig, ax, x, y, np.array([np.nan if v is None else v for v in values], float), name)
    else:
        _category_scatter(ax, x, y, ["(none)" if v is None else str(v) for v in values], name)
    warn = "  [random-init weights]" if view.get("random_init") else ""
    ax.set_title(title or f"{view['encoder']} {view['method'].upper()}, {view['n']} videos, colour: {name}{warn}", fontsize=10)
    ax.set_xlabel(f"{view['method'].upper()} 1")
    ax.set_ylabel(f"{view['method'].upper()} 2")
    return fig


def _numeric_scatter(fig, ax, x: np.ndarray, y: np.ndarray, values: np.ndarray, name: str) -> None:
    missing = np.isnan(values)
    if missing.any():
        ax.scatter(x[missing], y[missing], s=18, c="#bbbbbb", label="no value")
        ax.legend(loc="best", fontsize=8)
    points = ax.scatter(x[~missing], y[~missing], s=18, c=values[~missing], cmap="viridis")
    fig.colorbar(points, ax=ax, label=name)


def _category_scatter(ax, x: np.ndarray, y: np.ndarray, values: list[str], name: str) -> None:
    from matplotlib import colormaps

    categories = sorted(set(values))
    cmap = colormaps["tab10" if len(categories) <= 10 else "tab20"]
    for k, category in enumerate(categories):
        mask = np.array([v == category for v in values])
        ax.scatter(x[mask], y[mask], s=18, color=cmap(k % cmap.N), label=category)
    if len(categories) <= CATEGORY_LEGEND_MAX:
        ax.legend(title=name, fontsize=7, title_fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def write_png(view: dict, path: str | Path, color: str = "ef") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(view, color).savefig(path, dpi=100)
    return path


def write_html(view: dict, path: str | Path, color: str = "ef") -> Path:
    """A self-contained interactive scatter: hover shows id, EF and patient; a menu picks the colour column."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    column = color_column(color)
    warn = " [random-init weights]" if view.get("random_init") else ""
    data = {"title": f"{view['encoder']} {view['method'].upper()}, {view['n']} videos{warn}",
            "ids": view["ids"], "x": [round(v, 5) for v in view["x"]], "y": [round(v, 5) for v in view["y"]],
            "labels": view["labels"], "color": column}
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")  # cannot close the script element
    path.write_text(HTML.replace("__TITLE__", _escape(data["title"])).replace("__DATA__", payload), encoding="utf-8")
    return path


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def make_view(store: Store, encoder: str, method: str = "umap", color: str = "ef", png: str | Path | None = None,
              html: str | Path | None = None, seed: int = 0, recompute: bool = False) -> dict:
    """`embedstore view`: compute (or reuse) the view, then draw PNG and HTML (default: next to it in views/)."""
    column = color_column(color)
    view = compute_view(store, encoder, method, seed=seed, recompute=recompute, columns=[*LABEL_COLUMNS, column])
    base = view_path(store, encoder, method)
    png_path = write_png(view, png or base.with_suffix(".png"), column)
    html_path = write_html(view, html or base.with_suffix(".html"), column)
    keep = ("encoder", "method", "params", "seed", "fingerprint", "n", "random_init", "created", "stale")
    return {**{k: view[k] for k in keep if k in view}, "view": str(base), "png": str(png_path), "html": str(html_path)}


HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font:13px system-ui,sans-serif;margin:16px;color:#222}
#wrap{position:relative;display:inline-block}
canvas{border:1px solid #ccc}
#tip{position:absolute;pointer-events:none;background:#fff;border:1px solid #888;padding:4px 6px;display:none;white-space:pre;font:12px monospace}
#legend{margin-top:6px;max-width:760px}
#legend span{display:inline-block;margin-right:10px}
#legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:5px}
</style></head><body>
<h3>__TITLE__</h3>
<label>colour by <select id="color"></select></label>
<div id="wrap"><canvas id="map" width="760" height="560"></canvas><div id="tip"></div></div>
<div id="legend"></div>
<script>
const D = __DATA__;
const cv = document.getElementById("map"), ctx = cv.getContext("2d"), tip = document.getElementById("tip");
const sel = document.getElementById("color"), legend = document.getElementById("legend");
const W = cv.width, H = cv.height, PAD = 16, n = D.ids.length;
const RAMP = ["#440154", "#3b528b", "#21918c", "#5ec962", "#fde725"];
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
  "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"];
function range(a) { let lo = Infinity, hi = -Infinity; for (const v of a) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi > lo ? hi : lo + 1]; }
const [x0, x1] = range(D.x), [y0, y1] = range(D.y);
const px = D.x.map(v => PAD + (v - x0) / (x1 - x0) * (W - 2 * PAD));
const py = D.y.map(v => H - PAD - (v - y0) / (y1 - y0) * (H - 2 * PAD));
function ramp(t) {
  const s = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1), k = Math.min(Math.floor(s), RAMP.length - 2), f = s - k;
  const a = parseInt(RAMP[k].slice(1), 16), b = parseInt(RAMP[k + 1].slice(1), 16);
  const mix = sh => Math.round(((a >> sh) & 255) * (1 - f) + ((b >> sh) & 255) * f);
  return "rgb(" + mix(16) + "," + mix(8) + "," + mix(0) + ")";
}
function show(v) { return v === null || v === undefined ? "-" : (typeof v === "number" ? +v.toFixed(2) : v); }
function key(html) { const s = document.createElement("span"); s.innerHTML = html; return s; }
function colours(name) {
  const vals = D.labels[name];
  legend.textContent = "";
  if (vals.every(v => v === null || typeof v === "number")) {
    const [lo, hi] = range(vals.filter(v => v !== null));
    legend.appendChild(key("<i style='background:" + ramp(0) + "'></i>"))
      .append(name + " " + show(lo) + " \\u2192 " + show(hi));
    legend.appendChild(key("<i style='background:" + ramp(1) + "'></i>"));
    return vals.map(v => v === null ? "#bbbbbb" : ramp((v - lo) / (hi - lo)));
  }
  const text = vals.map(v => v === null ? "(none)" : String(v)), cats = [...new Set(text)].sort();
  cats.forEach((c, k) => { legend.appendChild(key("<i style='background:" + PALETTE[k % 20] + "'></i>")).append(c); });
  return text.map(v => PALETTE[cats.indexOf(v) % 20]);
}
function draw() {
  const c = colours(sel.value);
  ctx.clearRect(0, 0, W, H);
  for (let i = 0; i < n; i++) { ctx.fillStyle = c[i]; ctx.beginPath(); ctx.arc(px[i], py[i], 4, 0, 2 * Math.PI); ctx.fill(); }
}
for (const name of Object.keys(D.labels)) { const o = document.createElement("option"); o.value = o.textContent = name; sel.appendChild(o); }
sel.value = D.color; sel.onchange = draw; draw();
cv.onmousemove = e => {
  const r = cv.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
  let best = -1, bd = 64;
  for (let i = 0; i < n; i++) { const d = (px[i] - mx) ** 2 + (py[i] - my) ** 2; if (d < bd) { bd = d; best = i; } }
  if (best < 0) { tip.style.display = "none"; return; }
  const L = D.labels, lines = ["id " + D.ids[best], "EF " + show(L.ef[best]), "patient " + show(L.patient_id[best])];
  if (!["ef", "patient_id"].includes(sel.value)) lines.push(sel.value + " " + show(L[sel.value][best]));
  tip.textContent = lines.join("\\n");
  tip.style.left = (mx + 12) + "px"; tip.style.top = (my + 12) + "px"; tip.style.display = "block";
};
cv.onmouseleave = () => { tip.style.display = "none"; };
</script></body></html>
"""
