"""Release bundles: vectors (HDF5 in the store's layout, or Parquet shards) + manifest.json + DATA_CARD.md
+ croissant.json (Croissant 1.1, datasets/croissant.py).

The bundle format is written and read here (`export`, `read_manifest`, `read_bundle`), so it is
defined in one file; `releases.download` fetches a bundle and ingests what `read_bundle` returns.
A bundle never holds the store's salt, source paths, acquisition dates, the videos' file hashes or
absolute paths in provenance (they become file names): server paths are not for release.
Vectors are exported exactly as stored (float32, unit rows), so download -> ingest is bit-for-bit.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import embedstore
from embedstore.datasets.croissant import croissant
from embedstore.hashing import sha256_file
from embedstore.encoders.provenance import RANDOM_INIT
from embedstore.encoders.weights import NO_REDISTRIBUTION, WEIGHTS
from embedstore.errors import BadInput, NotFound
from embedstore.progress import bar
from embedstore.store import Store
from embedstore.store.vectors import CHUNK_ROWS

BUNDLE_FORMAT = "embedstore-bundle"
BUNDLE_VERSION = 1
SHARD_ROWS = 100_000  # rows per Parquet shard and per read from the store
DATA_CARD = Path(embedstore.__file__).resolve().parents[1] / "data_card.md"
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HEX64 = re.compile(r"[0-9a-f]{64}")
ECHONET_ID = re.compile(r"0X[0-9A-F]{16}")

# Metadata columns per target; the first is the id. Types follow the catalog's (INTEGER = int32).
SCHEMAS = {
    "videos": pa.schema([
        ("video_id", pa.string()), ("patient_id", pa.string()), ("study_id", pa.string()), ("view", pa.string()),
        ("split", pa.string()), ("n_frames", pa.int32()), ("fps", pa.float64()), ("height", pa.int32()),
        ("width", pa.int32()), ("ef", pa.float64()), ("esv", pa.float64()), ("edv", pa.float64()),
    ]),
    "reports": pa.schema([
        ("report_id", pa.string()), ("study_id", pa.string()), ("video_id", pa.string()),
        ("patient_id", pa.string()), ("text", pa.string()),
    ]),
}
ID_DESCRIPTIONS = {
    "videos": "video_id (for EchoNet-Dynamic: FileName without .avi; otherwise the store's id)",
    "reports": "report_id (the store's id)",
}

# Which source-data terms apply (data_card.md, Policy). Unknown stores with EchoNet-style ids are
# assumed to be EchoNet-Dynamic (the phantom cohort uses the same id style: say --source-data phantom).
SOURCES = {
    "echonet": {
        "description": "EchoNet-Dynamic (Stanford AIMI): apical four-chamber echocardiogram videos",
        "data": "EchoNet-Dynamic research use agreement: no redistribution of the data or of derived works. "
                "These vectors are derived works; share them only where the agreement allows. Every user needs "
                "their own agreement (https://echonet.github.io/dynamic/).",
        "vectors": "derived from EchoNet-Dynamic: bound by its research use agreement (no redistribution)",
    },
    "phantom": {
        "description": "embedstore's phantom cohort: synthetic videos, no patient data",
        "data": "synthetic data, no patient data: free to share",
        "vectors": "free to share as far as the weights' licence allows",
    },
    "own": {
        "description": "the exporting site's own videos",
        "data": "the data-use terms of the institution that holds the videos apply; state them before sharing",
        "vectors": "as the source data's terms and the weights' licence allow",
    },
}
CITATIONS = {
    "r3d": '"Echocardiogram Vector Embeddings Via R3D Transformer", JACC: Advances, 2024.',
    "r3d-v0": '"Echocardiogram Vector Embeddings Via R3D Transformer", JACC: Advances, 2024.',
    "videomae": 'Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised '
                'Video Pre-Training", NeurIPS 2022.',
    "echoclip": 'Christensen et al., "Vision-language foundation model for echocardiogram interpretation", '
                "Nature Medicine, 2024.",
    "echoclip-r": 'Christensen et al., "Vision-language foundation model for echocardiogram interpretation", '
                  "Nature Medicine, 2024.",
}
RANDOM_WARNING = ("WARNING: these vectors come from randomly initialised weights (weights_sha256 = random-init) "
                  "and carry no learned meaning.")
ECHONET_NOTICE = ("NOTICE: derived from EchoNet-Dynamic; its research use agreement forbids redistributing the "
                  "data or derived works. Do not share this bundle unless the agreement allows it.")
PHI_STATEMENT = ("No PHI: ids are file names or the store's own ids; patient and study keys are as held in the "
                 "catalog (salted hashes for DICOM, and the salt is not exported); no source paths, acquisition "
                 "dates, video file hashes or DICOM header fields are included.")


def licence_info(weights: str, source: str, citation: str) -> dict:
    """The licence block of a manifest (and of a store's release record): which terms apply to what."""
    if source not in SOURCES:
        raise BadInput(f"source data must be one of {', '.join(SOURCES)}, got {source!r}")
    return {"weights": weights, "source": source, "data": SOURCES[source]["data"],
            "vectors": SOURCES[source]["vectors"], "citation": citation}


# -- export ----------------------------------------------------------------------------------------------
def export(store: Store, encoder: str, out: str | Path, fmt: str = "hdf5", splits: list[str] | None = None,
           target: str = "videos", source: str | None = None, progress: bool = True,
           accept_licence: str | None = None) -> dict:
    """Write a bundle of one vector set into the new folder `out` (built aside, then moved in); returns the manifest.

    Vectors of an encoder whose licence forbids redistribution (weights.NO_REDISTRIBUTION) are refused
    unless `accept_licence` says who accepted the terms (and on what grounds); the manifest and the card
    record it."""
    if fmt not in WRITERS:
        raise BadInput(f"format must be one of {', '.join(WRITERS)}, got {fmt!r}")
    if target not in SCHEMAS:
        raise BadInput(f"target must be one of {', '.join(SCHEMAS)}, got {target!r}")
    if splits and target != "videos":
        raise BadInput("--split selects videos; reports have no split")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"{out} exists and is not an empty folder; export into a new folder")
    info = store.encoder_info(encoder)
    store.check(encoder, target)
    rows, table = _catalog_table(store, encoder, target, splits)
    manifest = _manifest(store, info, target, fmt, out.name, table, source)
    gate_licence(info, manifest["licence"], accept_licence)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with bar(total=len(rows), desc="export", unit="vec", enabled=progress) as pbar:
            files = WRITERS[fmt](store, info, target, rows, table, tmp, pbar)
        (tmp / "DATA_CARD.md").write_text(data_card(manifest), encoding="utf-8")
        files.append({"path": "DATA_CARD.md", "role": "card"})
        manifest["files"] = [{**f, "size": (tmp / f["path"]).stat().st_size, "sha256": sha256_file(tmp / f["path"])}
                             for f in files]
        (tmp / "croissant.json").write_text(json.dumps(croissant(manifest), indent=2) + "\n", encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _catalog_table(store: Store, encoder: str, target: str, splits: list[str] | None) -> tuple[np.ndarray, pa.Table]:
    """(HDF5 rows, metadata table) of the vectors to export, in row order; vectors without a catalog row get nulls."""
    schema = SCHEMAS[target]
    data = store.catalog.metadata_rows(encoder, target, schema.names[1:])
    data = data.rename_columns(["row", *schema.names])
    if splits:
        wanted = [s.strip().upper() for s in splits if s.strip()]
        present = sorted(str(s) for s in pc.unique(data.column("split")).to_pylist())
        data = data.filter(pc.is_in(data.column("split"), value_set=pa.array(wanted)))
        if data.num_rows == 0:
            raise BadInput(f"no {encoder} vectors in split(s) {', '.join(wanted)}; the store's splits: "
                           f"{', '.join(present) or 'none'}")
    if data.num_rows == 0:
        raise NotFound(f"no {encoder} {target} vectors to export")
    return data.column("row").to_numpy().astype(np.int64), data.drop_columns(["row"]).cast(schema)


def _manifest(store: Store, info: dict, target: str, fmt: str, name: str, table: pa.Table, source: str | None) -> dict:
    """Everything about the bundle except its files' sizes and hashes (added once they are written)."""
    splits = {}
    if target == "videos":
        counts = pc.value_counts(table.column("split").fill_null("none")).to_pylist()
        splits = {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: c["values"])}
    return {
        "format": BUNDLE_FORMAT, "bundle_version": BUNDLE_VERSION, "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": embedstore.__version__, "target": target, "vectors_format": fmt,
        "count": table.num_rows, "dim": int(info["dim"]), "normalisation": "L2: every vector has unit norm",
        "encoder": _public({"encoder": info["name"], "dim": int(info["dim"]), "weights": info["weights"],
                            "weights_sha256": info["weights_sha256"], "preprocessing": info["preprocessing"],
                            "package_version": info["package_version"], "modalities": info["modalities"]}),
        "columns": {f.name: str(f.type) for f in SCHEMAS[target]}, "splits": splits,
        "licence": _licence(store, info, table, source),
        **_deidentification(store, info, target),
    }


# DICOM PS3.16 CID 7050 codes (scheme DCM) for what was done to DICOM-derived data (PS3.15 Annex E).
DEID_METHODS = {
    "113100": "Basic Application Confidentiality Profile",
    "113101": "Clean Pixel Data Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
}


def _deidentification(store: Store, info: dict, target: str) -> dict:
    """For vectors derived from DICOM files: Patient Identity Removed and the PS3.15 options applied, in DICOM terms.

    Headers: only keyed hashes and allowed fields reach the catalog (113100); pixels: the store's
    mask kept only the ultrasound image (113101, only when the vectors were prepared with it on);
    dates: the catalog holds each patient's dates shifted by one secret offset (113107), and the
    bundle holds no dates at all.
    """
    if target != "videos":
        return {}
    n_dicom = store.catalog.embedded_dicoms(info["name"])
    if not n_dicom:
        return {}
    codes = ["113100"] + (["113101"] if info["preprocessing"].get("mask") == "on" else []) + ["113107"]
    return {"deidentification": {
        "from_dicom": int(n_dicom), "patient_identity_removed": "YES",
        "method_codes": [{"scheme": "DCM", "code": c, "meaning": DEID_METHODS[c]} for c in codes],
        "pixels": f"mask {info['preprocessing'].get('mask', 'off')} (DICOM ultrasound regions, else the moving fan)",
        "dates": "none in the bundle; the store keeps only per-patient shifted dates",
    }}


def _public(value):
    """Provenance fit for release: absolute (server) paths become their file names."""
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return Path(value).name
    return value


def _licence(store: Store, info: dict, table: pa.Table, source: str | None) -> dict:
    """From the release the set was downloaded from when there is one, else from the encoder and the ids."""
    record = json.loads(store.catalog.get_meta(f"release:{info['name']}") or "null")
    if record is not None:
        held = record["licence"]
        return held if source in (None, held["source"]) else licence_info(held["weights"], source, held["citation"])
    if info["weights_sha256"] == RANDOM_INIT:
        weights = "none: random weights with no learned parameters"
    elif info["name"] in WEIGHTS:
        weights = WEIGHTS[info["name"]].licence
    else:
        weights = "not recorded: state the weights' licence before sharing"
    ids = table.column(0).to_pylist()
    guess = "echonet" if all(ECHONET_ID.fullmatch(i or "") for i in ids) else "own"
    return licence_info(weights, source or guess, CITATIONS.get(info["name"], f"cite the paper of encoder {info['name']}"))


def gate_licence(info: dict, licence: dict, accepted_by: str | None) -> None:
    """Refuse trained vectors of a no-redistribution encoder unless someone accepted its terms; record who."""
    if info["name"] not in NO_REDISTRIBUTION or info["weights_sha256"] == RANDOM_INIT:
        return
    if not accepted_by or not accepted_by.strip():
        raise BadInput(
            f"{info['name']} vectors may not be redistributed under its licence ({licence['weights']}); export only with"
            " the authors' permission, and say who accepted the terms with --accept-licence \"NAME: grounds\""
        )
    licence["accepted"] = {"by": " ".join(accepted_by.split()), "terms": licence["weights"],
                           "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# -- writers and readers, one pair per format ------------------------------------------------------------
def _vector_blocks(store: Store, info: dict, target: str, rows: np.ndarray, size: int):
    for start in range(0, len(rows), size):
        yield start, store.vectors.read_rows(info["name"], target, rows[start : start + size])


def _write_hdf5(store: Store, info: dict, target: str, rows: np.ndarray, table: pa.Table, folder: Path, pbar) -> list[dict]:
    """vectors.h5: /<encoder>/<target> as in a store, plus /<encoder>/<target>_metadata/<column> (row-aligned)."""
    name, dim, n = info["name"], int(info["dim"]), len(rows)
    with h5py.File(folder / "vectors.h5", "w") as fh:
        dset = fh.create_dataset(f"{name}/{target}", shape=(n, dim), dtype="f4", chunks=(min(CHUNK_ROWS, n), dim))
        dset.attrs.update({"encoder": name, "dim": dim, "weights_sha256": info["weights_sha256"],
                           "package_version": info["package_version"] or ""})
        for start, block in _vector_blocks(store, info, target, rows, SHARD_ROWS):
            dset[start : start + len(block)] = block
            pbar.update(len(block))
        group = fh.create_group(f"{name}/{target}_metadata")
        for column_name, column in zip(table.column_names, table.columns):
            _write_column(group, column_name, column)
    return [{"path": "vectors.h5", "role": "vectors", "rows": n}]


def _write_column(group: h5py.Group, name: str, column: pa.ChunkedArray) -> None:
    """One metadata column; nulls filled ("" or 0) and marked in a `<name>.valid` mask when there are any."""
    if pa.types.is_string(column.type):
        data = np.array(column.fill_null("").to_pylist(), dtype=h5py.string_dtype())
    else:
        data = column.fill_null(0).to_numpy()
    group.create_dataset(name, data=data)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if not valid.all():
        group.create_dataset(f"{name}.valid", data=valid)


def _read_hdf5(folder: Path, manifest: dict, files: list[dict]) -> tuple[np.ndarray, pa.Table]:
    prov, target = manifest["encoder"], manifest["target"]
    try:
        with h5py.File(folder / files[0]["path"], "r") as fh:
            vectors = fh[f"{prov['encoder']}/{target}"][()]
            group = fh[f"{prov['encoder']}/{target}_metadata"]
            table = pa.table([_read_column(group, f) for f in SCHEMAS[target]], schema=SCHEMAS[target])
    except (KeyError, OSError) as exc:
        raise BadInput(f"bundle {manifest['name']}: {files[0]['path']} is not in the bundle layout ({exc})") from None
    return vectors, table


def _read_column(group: h5py.Group, field: pa.Field) -> pa.Array:
    data = group[field.name]
    values = data.asstr()[()].tolist() if pa.types.is_string(field.type) else data[()]
    mask = ~group[f"{field.name}.valid"][()] if f"{field.name}.valid" in group else None
    return pa.array(values, type=field.type, mask=mask)


def _write_parquet(store: Store, info: dict, target: str, rows: np.ndarray, table: pa.Table, folder: Path, pbar) -> list[dict]:
    """Shards of SHARD_ROWS rows: the metadata columns plus `vector`, a fixed-size list of float32."""
    dim, files = int(info["dim"]), []
    vector_field = pa.field("vector", pa.list_(pa.float32(), dim))
    for shard, (start, block) in enumerate(_vector_blocks(store, info, target, rows, SHARD_ROWS)):
        name = f"vectors-{shard:05d}.parquet"
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), dim)
        pq.write_table(table.slice(start, len(block)).append_column(vector_field, vectors), folder / name,
                       compression="zstd")
        files.append({"path": name, "role": "vectors", "rows": len(block)})
        pbar.update(len(block))
    return files


def _read_parquet(folder: Path, manifest: dict, files: list[dict]) -> tuple[np.ndarray, pa.Table]:
    schema = SCHEMAS[manifest["target"]]
    expected = pa.schema([*schema, pa.field("vector", pa.list_(pa.float32(), manifest["dim"]))])
    tables = []
    for f in files:
        shard = pq.read_table(folder / f["path"])
        if not shard.schema.equals(expected, check_metadata=False):
            raise BadInput(f"bundle {manifest['name']}: {f['path']} has columns {shard.schema.names} of other types "
                           f"than the manifest's; not an embedstore bundle shard")
        tables.append(shard)
    data = pa.concat_tables(tables)
    vectors = data.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, manifest["dim"])
    return vectors, data.drop_columns(["vector"])


WRITERS: dict[str, Callable] = {"hdf5": _write_hdf5, "parquet": _write_parquet}
READERS: dict[str, Callable] = {"hdf5": _read_hdf5, "parquet": _read_parquet}


# -- reading a bundle back -------------------------------------------------------------------------------
def read_manifest(path: Path) -> dict:
    """A bundle's manifest.json, checked enough that nothing later trips on a missing or odd field."""
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path}: not a JSON manifest ({exc}); an embedstore bundle starts at its manifest.json") from None

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BadInput(f"{path}: {what}; not an embedstore bundle manifest (format {BUNDLE_FORMAT} v{BUNDLE_VERSION})")

    need(isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT, f"format is not {BUNDLE_FORMAT!r}")
    need(manifest.get("bundle_version") == BUNDLE_VERSION, f"bundle_version is {manifest.get('bundle_version')!r}")
    need(manifest.get("target") in SCHEMAS and manifest.get("vectors_format") in READERS, "unknown target or vectors_format")
    need(all(isinstance(manifest.get(k), int) and manifest[k] > 0 for k in ("count", "dim")), "count and dim must be positive")
    prov = manifest.get("encoder")
    need(isinstance(prov, dict) and {"encoder", "dim", "weights", "weights_sha256"} <= set(prov)
         and prov["dim"] == manifest["dim"], "encoder provenance missing or of another dim")
    need(isinstance(manifest.get("licence"), dict) and manifest["licence"].get("source") in SOURCES, "licence block missing")
    files = manifest.get("files")
    need(isinstance(files, list) and any(isinstance(f, dict) and f.get("role") == "vectors" for f in files), "no vector files")
    for f in files:
        need(isinstance(f, dict) and isinstance(f.get("path"), str) and PLAIN_NAME.fullmatch(f["path"]) is not None
             and f["path"] != "manifest.json", f"file name {f.get('path') if isinstance(f, dict) else f!r} is not a plain name")
        need(isinstance(f.get("size"), int) and f["size"] >= 0 and HEX64.fullmatch(str(f.get("sha256"))) is not None,
             f"{f['path']}: size or sha256 missing")
    return manifest


def read_bundle(folder: Path, manifest: dict) -> tuple[list[str], np.ndarray, pa.Table]:
    """(ids, float32 vectors, metadata table) of a downloaded, verified bundle, checked against its manifest."""
    files = [f for f in manifest["files"] if f["role"] == "vectors"]
    vectors, table = READERS[manifest["vectors_format"]](Path(folder), manifest, files)
    name, count, dim = manifest["name"], manifest["count"], manifest["dim"]
    if vectors.dtype != np.float32 or vectors.shape != (count, dim) or table.num_rows != count:
        raise BadInput(f"bundle {name}: {vectors.shape} {vectors.dtype} vectors and {table.num_rows} metadata rows; "
                       f"the manifest says {count} x {dim} float32")
    ids = table.column(0).to_pylist()
    if None in ids or len(set(ids)) != count:
        raise BadInput(f"bundle {name}: {table.column_names[0]} has empty or repeated ids")
    return ids, vectors, table


# -- the data card -----------------------------------------------------------------------------------------
def data_card(manifest: dict) -> str:
    """DATA_CARD.md: data_card.md's template filled from the manifest, warnings first."""
    prov, licence, target = manifest["encoder"], manifest["licence"], manifest["target"]
    warnings = [RANDOM_WARNING] if prov["weights_sha256"] == RANDOM_INIT else []
    if licence["source"] == "echonet":
        warnings.append(ECHONET_NOTICE)
    if licence.get("accepted"):
        accepted = licence["accepted"]
        warnings.append(f"NOTICE: the {prov['encoder']} licence forbids redistribution ({accepted['terms']}). "
                        f"Exported on {accepted['at']} under the acceptance of: {accepted['by']}.")
    fields = {
        "name": manifest["name"], "n_vectors": manifest["count"], "dim": manifest["dim"], "encoder": prov["encoder"],
        "warnings": "\n\n".join(warnings), "item": target[:-1], "id_description": ID_DESCRIPTIONS[target],
        "columns": ", ".join(list(manifest["columns"])[1:]), "weights": prov["weights"],
        "weights_sha256": prov["weights_sha256"], "preprocessing": json.dumps(prov.get("preprocessing", {}), sort_keys=True),
        "package_version": manifest["package_version"], "created": manifest["created"],
        "source_description": SOURCES[licence["source"]]["description"],
        "splits": ", ".join(f"{k} {v}" for k, v in manifest["splits"].items()) or "none recorded",
        "data_licence": licence["data"], "weights_licence": licence["weights"], "vectors_licence": licence["vectors"],
        "phi_statement": PHI_STATEMENT, "citation": licence["citation"],
    }
    return re.sub(r"\n{3,}", "\n\n", _template().format_map(fields)).strip() + "\n"


def _template() -> str:
    """The fenced block under '## Template' in data_card.md (the one source of the card's wording)."""
    try:
        text = DATA_CARD.read_text(encoding="utf-8")
    except OSError:
        raise NotFound(f"{DATA_CARD}: not found; export needs data_card.md from an embedstore source checkout") from None
    found = re.search(r"^## Template\n.*?^```\n(.*?)^```", text, flags=re.S | re.M)
    if found is None:
        raise BadInput(f"{DATA_CARD}: no fenced block under '## Template'")
    return found.group(1)
