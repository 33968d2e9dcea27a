"""Released embeddings: a registry of known releases, verified download, the R3D-v0 text format, and
ingest of a release (or of an embedstore bundle) as a vector set whose videos are known by id only.

Why this order: download into `<file>.part` (resumed with an HTTP Range request) -> size and sha256
checked -> atomic rename into the cache -> every row parsed and validated -> only then is the store
opened for writing, and the vectors go in as one atomic batch. A failure before that last step
leaves the store exactly as it was. A sha256 nobody published is trusted on first use: it is printed,
kept in the cache's known_hashes.json, in the run record and in the catalog, and every later download
of that URL must match it (or be accepted explicitly with --sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

import embedstore
from embedstore import config
from embedstore.datasets.echonet import read_filelist, strip_avi
from embedstore.datasets.export import BUNDLE_FORMAT, HEX64, licence_info, read_bundle, read_manifest
from embedstore.hashing import sha256_file
from embedstore.errors import BadInput, NotFound
from embedstore.progress import bar
from embedstore.store import Store, open_store

R3D_TEXT = "r3d-text"
MiB = 1 << 20
ATTEMPTS = 3  # connections per download before giving up (each one resumes where the last stopped)
TIMEOUT = httpx.Timeout(30.0)


@dataclass(frozen=True)
class Release:
    """A known release: where it is, how to read it, what it is and under which terms."""

    name: str
    url: str
    format: str  # R3D_TEXT, or BUNDLE_FORMAT (the URL of a manifest.json)
    encoder: str | None = None  # a bundle names its encoder in its manifest
    dim: int | None = None
    sha256: str | None = None  # None: not published; trusted on first download
    size: int | None = None
    size_range: tuple[int, int] | None = None  # when the exact size is not published
    licence: str = ""
    source: str = "own"  # whose source-data terms apply (export.SOURCES)
    citation: str = ""
    preprocessing: dict = field(default_factory=dict)


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release(
            name="r3d-v0",
            url="https://raw.githubusercontent.com/Team-Echo-MIT/r3d-v0-embeddings/main/echonet_embeddings.txt",
            format=R3D_TEXT, encoder="r3d-v0", dim=400, size_range=(4 * MiB, 100 * MiB),
            licence="MIT (Team-Echo-MIT/r3d-v0-embeddings)", source="echonet",
            citation='"Echocardiogram Vector Embeddings Via R3D Transformer", JACC: Advances, 2024.',
            preprocessing={
                "model": "torchvision r3d_18 (Kinetics-400 init) fine-tuned for EF < 50%; 400-d fc output",
                "extraction": "released script: every frame, native size, raw 0-255, no mean/std, whole video",
            },
        ),
    )
}


@dataclass
class Payload:
    """A verified, parsed release, ready to go into a store in one step."""

    provenance: dict
    target: str
    ids: list[str]
    vectors: np.ndarray
    rows: list[dict]  # catalog rows (videos or reports), one per id
    record: dict  # what the store keeps about the release (meta 'release:<encoder>')
    notes: dict = field(default_factory=dict)  # extra facts for the run record


def resolve(source: str) -> Release:
    """A registry name, a registry URL, a bundle's manifest URL, or any other URL as an R3D-v0-format mirror."""
    if source in RELEASES:
        return RELEASES[source]
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https"):
        raise NotFound(f"unknown release {source!r}; known: {', '.join(RELEASES)}, or give an http(s) URL")
    known = next((r for r in RELEASES.values() if r.url == source), None)
    if known is not None:
        return known
    if parts.path.endswith(".json"):
        return Release(name="bundle", url=source, format=BUNDLE_FORMAT)
    return replace(RELEASES["r3d-v0"], url=source, sha256=None, size=None, size_range=None)


def download(source: str, store: str | Path | None = None, sha256: str | None = None,
             labels: str | Path | None = None, cache: str | Path | None = None, progress: bool = True) -> dict:
    """Fetch, verify, parse, then ingest a release or bundle into the store (created if needed); a summary."""
    release = resolve(source)
    store_path = Path(store) if store is not None else config.home()
    cache = Path(cache) if cache is not None else store_path / "downloads"
    label_rows = {r["video_id"]: r for r in read_filelist(Path(labels))} if labels else {}
    path, digest, pinned_by = _fetch_pinned(release, cache, _hex(sha256), progress)
    payload = (_r3d_payload(release, path, digest) if release.format == R3D_TEXT
               else _bundle_payload(release, path, digest, progress))
    if label_rows and payload.target != "videos":
        raise BadInput("--labels joins FileList.csv to videos; this bundle holds reports")
    payload.rows = [{**row, **{k: v for k, v in label_rows.get(row["video_id"], {}).items() if v is not None}}
                    for row in payload.rows] if label_rows else payload.rows
    args = {"source": source, "url": release.url, "sha256": digest, "sha256_pinned_by": pinned_by,
            "labels": str(labels) if labels else None, **payload.notes}
    with open_store(store_path, create=True) as st:
        added, new_items = _commit(st, payload, args)
    return {"release": payload.record["name"], "url": release.url, "file": str(path), "sha256": digest,
            "sha256_pinned_by": pinned_by, "encoder": payload.provenance["encoder"], "target": payload.target,
            "n": len(payload.ids), "dim": int(payload.provenance["dim"]), "added": added, "new_items": new_items,
            "labelled": sum(1 for i in payload.ids if i in label_rows)}


def _hex(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not HEX64.fullmatch(value):
        raise BadInput(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return value


# -- download --------------------------------------------------------------------------------------------
def _fetch_pinned(release: Release, cache: Path, sha256: str | None, progress: bool) -> tuple[Path, str, str]:
    """The release's file in the cache, verified; and what pinned its sha256 (said in errors and summaries)."""
    known = _known_hashes(cache).get(release.url)
    if sha256:
        expected, pinned_by = sha256, "--sha256"
    elif release.sha256:
        expected, pinned_by = release.sha256, "the registry"
    elif known:
        expected, pinned_by = known["sha256"], (f"recorded on first download, {known['first_download']}; "
                                                f"pass --sha256 to accept a changed file")
    else:
        expected, pinned_by = None, "first download: now recorded"
    folder = cache / f"{release.name}-{hashlib.sha256(release.url.encode()).hexdigest()[:10]}"
    dest = folder / (Path(urlsplit(release.url).path).name or "download")
    size = release.size or release.size_range
    digest = fetch(release.url, dest, size=size, sha256=expected, pinned_by=pinned_by, progress=progress)
    if known is None or known["sha256"] != digest:
        _remember(cache, release.url, digest, dest.stat().st_size)
    return dest, digest, pinned_by


def fetch(url: str, dest: Path, size: int | tuple[int, int] | None = None, sha256: str | None = None,
          pinned_by: str = "", attempts: int = ATTEMPTS, progress: bool = True) -> str:
    """Download `url` to `dest` through `dest.part` (resumed), check size and sha256, rename; returns the sha256.

    A `dest` already there and matching is reused without a request. A connection that ends early
    keeps the .part file: the next attempt (or the next command) asks only for the rest.
    """
    dest = Path(dest)
    if dest.exists():
        digest = sha256_file(dest)
        if sha256 in (None, digest) and _size_ok(dest.stat().st_size, size):
            return digest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with httpx.Client(follow_redirects=True, timeout=TIMEOUT) as client:
        for attempt in range(attempts):
            time.sleep(0.5 * attempt)  # a moment before reconnecting
            try:
                _stream(client, url, part, size if isinstance(size, int) else None, progress)
                break
            except _Interrupted as exc:
                stopped = str(exc)
        else:
            raise BadInput(f"{url}: download {stopped}; run the same command again to resume")
    digest = _verify(part, url, size, sha256, pinned_by)
    os.replace(part, dest)
    return digest


class _Interrupted(Exception):
    """The transfer ended early; the .part file keeps what arrived."""


def _stream(client: httpx.Client, url: str, part: Path, size: int | None, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    # identity encoding: Range then counts bytes of the file itself, not of a compressed stream
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        with client.stream("GET", url, headers=headers) as response:
            offset = _resume_point(response, url, part, offset)
            if offset is None:
                return
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            if size is not None and total is not None and total != size:
                part.unlink(missing_ok=True)
                raise BadInput(f"{url}: wrong size: the server offers {total} bytes, the release has {size}; "
                               f"nothing was ingested")
            with open(part, "ab" if offset else "wb") as fh, bar(
                    total=total, initial=offset, desc=part.name[: -len(".part")], unit="B", unit_scale=True,
                    unit_divisor=1024, enabled=progress) as pbar:
                for chunk in response.iter_raw():  # as it arrives: a dropped connection loses nothing received
                    fh.write(chunk)
                    pbar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
    except httpx.TransportError as exc:
        have = part.stat().st_size if part.exists() else 0
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _Interrupted(f"stopped after {have} bytes ({reason})") from None


def _resume_point(response: httpx.Response, url: str, part: Path, offset: int) -> int | None:
    """Where the body goes in the .part file (0: from scratch); None when the .part file is already whole."""
    code = response.status_code
    if code == 404:
        raise NotFound(f"{url}: not found (HTTP 404); check the release name or URL")
    if code == 416 and offset:  # nothing after `offset`: complete, or the file changed and is shorter now
        if response.headers.get("Content-Range", "").endswith(f"/{offset}"):
            return None
        part.unlink()
        raise _Interrupted("restarted: the partial file no longer fits the server's")
    if code == 206:
        start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if start is None or int(start.group(1)) != offset:
            part.unlink()
            raise _Interrupted("restarted: the server answered another range than asked")
        return offset
    if code == 200:
        return 0
    raise BadInput(f"{url}: HTTP {code} {response.reason_phrase}; cannot download")


def _size_ok(n: int, size: int | tuple[int, int] | None) -> bool:
    if size is None:
        return True
    return n == size if isinstance(size, int) else size[0] <= n <= size[1]


def _verify(part: Path, url: str, size: int | tuple[int, int] | None, sha256: str | None, pinned_by: str) -> str:
    """Size and sha256 of a finished .part file; a wrong one is deleted (resuming it cannot help)."""
    n = part.stat().st_size
    if not _size_ok(n, size):
        part.unlink()
        want = size if isinstance(size, int) else f"between {size[0]} and {size[1]}"
        raise BadInput(f"{url}: wrong size: got {n} bytes, expected {want}; the file is not the release "
                       f"(nothing was ingested)")
    digest = sha256_file(part)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise BadInput(f"{url}: wrong checksum: sha256 {digest}, expected {sha256} ({pinned_by}); "
                       f"the file is corrupt or changed (nothing was ingested)")
    return digest


def _known_hashes(cache: Path) -> dict:
    path = cache / "known_hashes.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _remember(cache: Path, url: str, digest: str, size: int) -> None:
    """Record a URL's sha256 in known_hashes.json (written aside, then renamed)."""
    hashes = _known_hashes(cache)
    hashes[url] = {"sha256": digest, "size": size, "first_download": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = cache / "known_hashes.json.tmp"
    tmp.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, cache / "known_hashes.json")


# -- the R3D-v0 text format ------------------------------------------------------------------------------
def parse_r3d_text(data: bytes, dim: int = 400, name: str = "file") -> tuple[list[str], np.ndarray]:
    """(video ids without .avi, float32 [N, dim]) of an R3D-v0 text file; BadInput naming the first bad line.

    Format (FACTS.md): one video a line, the id (a FileName with .avi), then `dim` floats, single
    spaces, a trailing space. Arrow's multi-threaded CSV reader parses well-formed files; anything it
    refuses, and any non-finite value, all-zero row or repeated id, sends the bytes through the
    line-by-line reader, which names the first bad line (and accepts mere whitespace variations).
    """
    fast = _parse_fast(data, dim)
    if fast is not None and _valid(*fast):
        return fast
    return _parse_lines(data, dim, name)


def _parse_fast(data: bytes, dim: int) -> tuple[list[str], np.ndarray] | None:
    first = data[: data.find(b"\n")] if b"\n" in data else data
    first = first.rstrip(b"\r")
    spaces = first.count(b" ")
    if len(first.split()) != dim + 1 or spaces not in (dim, dim + 1):
        return None
    names = ["id"] + [f"v{i}" for i in range(spaces)]
    types = {"id": pa.string(), **{n: pa.float32() for n in names[1 : dim + 1]}}
    try:
        table = pacsv.read_csv(pa.BufferReader(data), read_options=pacsv.ReadOptions(column_names=names),
                               parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False),
                               convert_options=pacsv.ConvertOptions(column_types=types, include_columns=names[: dim + 1]))
    except pa.ArrowInvalid:
        return None
    vectors = np.empty((table.num_rows, dim), dtype=np.float32)
    for i in range(dim):
        vectors[:, i] = table.column(i + 1).to_numpy()
    return [strip_avi(i) for i in table.column("id").to_pylist()], vectors


def _valid(ids: list[str], vectors: np.ndarray) -> bool:
    return (len(ids) > 0 and all(ids) and len(set(ids)) == len(ids) and bool(np.isfinite(vectors).all())
            and bool(vectors.any(axis=1).all()))


def _parse_lines(data: bytes, dim: int, name: str) -> tuple[list[str], np.ndarray]:
    ids, vectors, seen = [], [], {}
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        where = f"{name} line {number}"
        try:
            tokens = raw.decode("utf-8").split()
        except UnicodeDecodeError:
            raise BadInput(f"{where}: not UTF-8 text") from None
        if not tokens:
            continue
        cut = " (the file ends mid-line: truncated?)" if number == len(lines) else ""
        if len(tokens) != dim + 1:
            raise BadInput(f"{where} ({tokens[0]}): {len(tokens) - 1} values after the id, expected {dim}{cut}")
        video_id = strip_avi(tokens[0])
        if video_id in seen:
            raise BadInput(f"{where}: id {tokens[0]} already on line {seen[video_id]}; ids must be unique")
        vector = _numbers(tokens, where, cut)
        if not vector.any():
            raise BadInput(f"{where} ({tokens[0]}): all {dim} values are zero; cosine similarity is undefined")
        seen[video_id] = number
        ids.append(video_id)
        vectors.append(vector)
    if not ids:
        raise BadInput(f"{name}: no vectors in the file")
    return ids, np.stack(vectors)


def _numbers(tokens: list[str], where: str, cut: str) -> np.ndarray:
    """The floats after the id; BadInput naming the first value that is not a finite number."""
    try:
        vector = np.array(tokens[1:], dtype=np.float32)
    except ValueError:
        k, token = next((k, t) for k, t in enumerate(tokens[1:], start=1) if not _is_number(t))
        raise BadInput(f"{where} ({tokens[0]}): value {k} is {token!r}, not a number{cut}") from None
    finite = np.isfinite(vector)
    if not finite.all():
        k = int(np.argmin(finite)) + 1
        raise BadInput(f"{where} ({tokens[0]}): value {k} is {tokens[k]!r}; vectors must be finite")
    return vector


def _is_number(token: str) -> bool:
    try:
        np.float32(token)
    except ValueError:
        return False
    return True


def _r3d_payload(release: Release, path: Path, digest: str) -> Payload:
    """An R3D-v0-format file as an id-only video set; raw fc vectors are L2-normalised by the store."""
    ids, vectors = parse_r3d_text(path.read_bytes(), release.dim, path.name)
    norms = np.linalg.norm(vectors, axis=1)
    provenance = {
        "encoder": release.encoder, "dim": release.dim, "weights": f"release:{release.name} {release.url}",
        "weights_sha256": digest,
        "preprocessing": {"source": "released embeddings", "release": release.name, "format": release.format,
                          "normalisation": "raw fc outputs, L2-normalised at ingest (raw values: the release file)",
                          **release.preprocessing},
        "package_version": embedstore.__version__, "modalities": ["video"],
    }
    record = {"name": release.name, "url": release.url, "format": release.format, "sha256": digest,
              "size": path.stat().st_size, "licence": licence_info(release.licence, release.source, release.citation)}
    notes = {"raw_norms": {"min": float(norms.min()), "median": float(np.median(norms)), "max": float(norms.max())}}
    return Payload(provenance, "videos", ids, vectors, [{"video_id": i} for i in ids], record, notes)


def _bundle_payload(release: Release, manifest_path: Path, digest: str, progress: bool) -> Payload:
    """An embedstore bundle: every file fetched and checked against the manifest's size and sha256."""
    manifest = read_manifest(manifest_path)
    for entry in manifest["files"]:
        fetch(urljoin(release.url, entry["path"]), manifest_path.parent / entry["path"], size=entry["size"],
              sha256=entry["sha256"], pinned_by="manifest.json", progress=progress)
    ids, vectors, table = read_bundle(manifest_path.parent, manifest)
    record = {"name": manifest["name"], "url": release.url, "format": BUNDLE_FORMAT, "sha256": digest,
              "size": manifest_path.stat().st_size, "licence": manifest["licence"]}
    return Payload(manifest["encoder"], manifest["target"], ids, vectors, table.to_pylist(), record)


# -- into the store --------------------------------------------------------------------------------------
def _commit(store: Store, payload: Payload, args: dict) -> tuple[int, int]:
    """Rows, then vectors (one atomic batch), then the release record; (vectors added, catalog rows added)."""
    prov = payload.provenance
    with store.catalog.transaction():
        store.catalog.register_encoder(prov)  # another set under this name: Conflict, and nothing written
    with store.run("download", args) as run:
        if payload.target == "videos":
            known = store.catalog.video_ids()
            new_rows = store.add_videos([r for r in payload.rows if r["video_id"] not in known])
            store.catalog.update_labels([r for r in payload.rows if r["video_id"] in known])
        else:
            new_rows = store.add_reports(payload.rows)
        with store.writer(prov, payload.target, run) as write:
            added = write(payload.ids, payload.vectors)
        store.catalog.set_meta(f"release:{prov['encoder']}", json.dumps(payload.record, sort_keys=True))
    return added, new_rows
