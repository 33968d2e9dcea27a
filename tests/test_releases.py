"""Released embeddings: download over real loopback HTTP (Range resume, verification, corrupt files),
the R3D-v0 text format, and export -> download -> ingest round trips of embedstore bundles."""
from __future__ import annotations

import csv
import hashlib
import json
import re
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from bench.vectors import LatentMixture
from embedstore.cli import app
from embedstore.datasets import releases
from embedstore.datasets.export import export
from embedstore.datasets.releases import fetch, parse_r3d_text
from embedstore.errors import BadInput
from embedstore.store import normalise, open_store

ROWS, DIM = 300, 400
META = ["patient_id", "study_id", "view", "split", "n_frames", "fps", "height", "width", "ef", "esv", "edv"]
TOY = {"encoder": "toy", "dim": 8, "weights": "random-init", "weights_sha256": "random-init",
       "preprocessing": {}, "package_version": "test", "modalities": ["video"]}


class FileServer:
    """A loopback HTTP server over one folder that honours Range and can drop connections part-way."""

    def __init__(self, root: Path):
        self.root, self.requests = root, []
        self.drops, self.drop_after = 0, 0  # the next `drops` answers stop after `drop_after` body bytes
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.answer(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        self.requests.append((h.path, h.headers.get("Range")))
        path = self.root / h.path.lstrip("/")
        if not path.is_file():
            h.send_error(404)
            return
        data = path.read_bytes()
        start = int(re.fullmatch(r"bytes=(\d+)-", h.headers["Range"]).group(1)) if h.headers.get("Range") else 0
        if start >= len(data) and start:
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{len(data)}")
            h.end_headers()
            return
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        body = data[start:]
        if self.drops:
            self.drops -= 1
            body = body[: self.drop_after]
            h.close_connection = True
        h.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    srv = FileServer(tmp_path / "served")
    srv.root.mkdir()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def release():
    """(text in the R3D-v0 format, ids, raw float32 vectors): embedding-like directions, fc-like norms."""
    rng = np.random.default_rng(3)
    unit, _ = LatentMixture(DIM, centres=30, latent=8, seed=2).sample(ROWS, seed=4)
    raw = (unit * rng.uniform(4, 16, size=(ROWS, 1))).astype(np.float32)
    ids = [f"0X{v:016X}" for v in rng.integers(0, 2**63, size=ROWS)]
    return r3d_text(ids, raw), ids, raw


def r3d_text(ids: list[str], vectors: np.ndarray) -> bytes:
    """FACTS.md: FileName with .avi, then the floats, single spaces, a trailing space before the newline."""
    return "".join(f"{i}.avi " + " ".join(repr(float(x)) for x in v) + " \n" for i, v in zip(ids, vectors)).encode()


def edit_line(text: bytes, number: int, edit) -> bytes:
    lines = text.split(b"\n")
    tokens = lines[number - 1].decode().split(" ")
    lines[number - 1] = " ".join(edit(tokens)).encode()
    return b"\n".join(lines)


def write_filelist(path: Path, ids: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"])
        for k, i in enumerate(ids):
            out.writerow([i, 30 + k % 40, 40, 100, 112, 112, 50, 100 + k, ("TRAIN", "VAL", "TEST")[k % 3]])
    return path


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture()
def toy_store(tmp_path) -> Path:
    """A store that already holds something, to show a failed download leaves it exactly as it was."""
    path = tmp_path / "store"
    with open_store(path, create=True) as st:
        st.add_videos([{"video_id": f"v{i}"} for i in range(5)])
        st.add_vectors(TOY, [f"v{i}" for i in range(5)], np.eye(5, 8, dtype=np.float32) + 0.1)
    return path


def snapshot(path: Path) -> tuple:
    """Catalog counts and meta, and vectors.h5's bytes and dataset shapes."""
    with open_store(path, read_only=True) as st:
        counts, meta = st.catalog.counts(), st.catalog.query("SELECT * FROM meta ORDER BY key")
        with st.vectors.reader() as fh:
            shapes = {}
            fh.visititems(lambda name, obj: shapes.update({name: obj.shape}) if isinstance(obj, h5py.Dataset) else None)
    return counts, meta, (path / "vectors.h5").read_bytes(), shapes


# -- the R3D-v0 text format --------------------------------------------------------------------------------
def test_parser_reads_the_release_format_and_its_whitespace_variants_alike(release):
    text, ids, raw = release
    got_ids, got = parse_r3d_text(text, DIM)
    assert got_ids == ids and got.dtype == np.float32
    np.testing.assert_array_equal(got, raw)
    np.testing.assert_array_equal(got, np.loadtxt(text.decode().splitlines(), usecols=range(1, DIM + 1), dtype=np.float32))
    variants = [text.replace(b" \n", b"\r\n"), text.replace(b" \n", b"\n").rstrip(b"\n"),
                text.replace(b" ", b"  ", 5), b"\n" + text + b"\n\n"]
    for variant in variants:
        v_ids, v = parse_r3d_text(variant, DIM)
        assert v_ids == ids
        np.testing.assert_array_equal(v, raw)


# -- download, verify, ingest, search ----------------------------------------------------------------------
def test_release_downloads_verifies_ingests_and_is_searchable_by_id(release, server, tmp_path):
    text, ids, raw = release
    (server.root / "echonet_embeddings.txt").write_bytes(text)
    url, digest, store = server.url("echonet_embeddings.txt"), hashlib.sha256(text).hexdigest(), tmp_path / "s"
    labels = write_filelist(tmp_path / "FileList.csv", ids[:200] + ["0XNOTINRELEASE00"])
    out = cli("download", url, "--store", store, "--sha256", digest.upper(), "--labels", labels, "--quiet")
    assert out.exit_code == 0, out.output
    assert f"{ROWS} x {DIM} r3d-v0" in out.stdout and "added 300 vectors, 300 new videos, 200 labelled" in out.stdout

    with open_store(store, read_only=True) as st:
        got_ids, vectors = st.all_vectors("r3d-v0")
        assert got_ids == ids
        np.testing.assert_array_equal(vectors, normalise(raw))
        prov = st.encoder_info("r3d-v0")
        assert (prov["dim"], prov["weights"], prov["weights_sha256"]) == (DIM, f"release:r3d-v0 {url}", digest)
        assert prov["preprocessing"]["source"] == "released embeddings" and prov["modalities"] == ["video"]
        rows = {r["video_id"]: r for r in st.videos()}
        assert rows[ids[0]]["source_path"] is None and rows[ids[0]]["format"] is None
        assert rows[ids[4]]["ef"] == 34 and rows[ids[4]]["split"] == "VAL" and rows[ids[250]]["ef"] is None
        record = json.loads(st.catalog.get_meta("release:r3d-v0"))
        assert record["sha256"] == digest and record["licence"]["source"] == "echonet"
        run_args = json.loads(st.catalog.query("SELECT args FROM runs WHERE command = 'download'")[0][0])
        assert run_args["sha256"] == digest and run_args["raw_norms"]["max"] > 4
    assert json.loads((store / "downloads" / "known_hashes.json").read_text())[url]["sha256"] == digest

    assert cli("index", "--store", store, "--encoder", "r3d-v0", "--quiet").exit_code == 0
    found = cli("search", "--store", store, "--encoder", "r3d-v0", "--id", ids[7], "-k", "5", "--json")
    assert found.exit_code == 0, found.output
    unit = normalise(raw)
    expected = [ids[i] for i in np.argsort(-(unit @ unit[7]), kind="stable") if i != 7][:5]
    assert [h["id"] for h in json.loads(found.stdout)["hits"]] == expected

    asked = len(server.requests)
    again = cli("download", url, "--store", store, "--json", "--quiet")
    assert json.loads(again.stdout)["added"] == 0 and len(server.requests) == asked  # cached file, verified


def test_first_download_pins_the_sha256_and_a_changed_file_is_refused(release, server, tmp_path):
    text, ids, raw = release
    served = server.root / "e.txt"
    served.write_bytes(text)
    url, cache = server.url("e.txt"), tmp_path / "cache"
    first = cli("download", url, "--store", tmp_path / "a", "--cache", cache, "--quiet")
    assert first.exit_code == 0 and "first download: now recorded" in first.stdout
    changed = edit_line(text, 2, lambda t: t[:1] + ["1.5"] + t[2:])
    served.write_bytes(changed)
    for f in cache.glob("*/e.txt"):
        f.unlink()
    error = one_line_error(cli("download", url, "--store", tmp_path / "b", "--cache", cache, "--quiet"))
    assert "wrong checksum" in error and "recorded on first download" in error
    new = hashlib.sha256(changed).hexdigest()
    assert cli("download", url, "--store", tmp_path / "b", "--cache", cache, "--sha256", new, "--quiet").exit_code == 0
    assert json.loads((cache / "known_hashes.json").read_text())[url]["sha256"] == new


def test_interrupted_download_resumes_with_a_range_request(release, server, tmp_path):
    text = release[0]
    (server.root / "e.txt").write_bytes(text)
    dest = tmp_path / "dl" / "e.txt"
    server.drops, server.drop_after = 1, 100_000
    with pytest.raises(BadInput, match="stopped after 100000 bytes.*run the same command again"):
        fetch(server.url("e.txt"), dest, attempts=1, progress=False)
    assert (tmp_path / "dl" / "e.txt.part").stat().st_size == 100_000 and not dest.exists()
    digest = fetch(server.url("e.txt"), dest, attempts=1, progress=False)
    assert server.requests[-1] == ("/e.txt", "bytes=100000-")
    assert digest == hashlib.sha256(text).hexdigest() and dest.read_bytes() == text
    assert not (tmp_path / "dl" / "e.txt.part").exists()

    server.drops, server.drop_after, server.requests[:] = 1, 50_000, []
    out = cli("download", server.url("e.txt"), "--store", tmp_path / "s", "--quiet")  # one command, resumed inside
    assert out.exit_code == 0, out.output
    assert server.requests == [("/e.txt", None), ("/e.txt", "bytes=50000-")]


def _corrupt(case: str, text: bytes, server: FileServer, monkeypatch) -> tuple[list, str]:
    """Serve one broken release; (download arguments, what the one-line error must say)."""
    url = server.url("e.txt")
    edits = {
        "columns": (7, lambda t: t[:-2] + t[-1:], r"line 7 \(0X\w+\.avi\): 399 values after the id, expected 400"),
        "not a number": (9, lambda t: t[:12] + ["abc"] + t[13:], r"line 9 \(0X\w+\.avi\): value 12 is 'abc', not a number"),
        "nan": (5, lambda t: t[:3] + ["nan"] + t[4:], r"line 5 \(0X\w+\.avi\): value 3 is 'nan'; vectors must be finite"),
        "duplicate": (8, lambda t: [text.split(b" ", 1)[0].decode()] + t[1:], r"line 8: id 0X\w+\.avi already on line 1"),
        "zeros": (4, lambda t: t[:1] + ["0.0"] * DIM + t[-1:], r"line 4 \(0X\w+\.avi\): all 400 values are zero"),
    }
    source, args = url, []
    if case in edits:
        number, edit, message = edits[case]
        text = edit_line(text, number, edit)
    elif case == "truncated file":
        text = text[:-1000]
        message = r"line 300 \(0X\w+\.avi\): \d+ values after the id, expected 400 \(the file ends mid-line: truncated\?\)"
    elif case == "checksum":
        args, message = ["--sha256", "0" * 64], r"wrong checksum: sha256 [0-9a-f]{64}, expected 0{64} \(--sha256\)"
    elif case == "404":
        source, message = server.url("missing.txt"), r"not found \(HTTP 404\)"
    elif case == "size":
        entry = replace(releases.RELEASES["r3d-v0"], name="test-r3d", url=url, size=len(text) + 7, size_range=None)
        monkeypatch.setitem(releases.RELEASES, "test-r3d", entry)
        source, message = "test-r3d", rf"wrong size: the server offers {len(text)} bytes, the release has {len(text) + 7}"
    else:  # the connection drops every time, before any byte of the body
        server.drops, server.drop_after = 99, 0
        message = r"download stopped after 0 bytes .*run the same command again to resume"
    (server.root / "e.txt").write_bytes(text)
    return [source, *args], message


@pytest.mark.parametrize("case", ["404", "checksum", "size", "connection drops", "truncated file", "columns",
                                  "not a number", "nan", "duplicate", "zeros"])
def test_each_corruption_fails_in_one_line_and_leaves_the_store_as_it_was(case, release, server, toy_store, monkeypatch):
    args, message = _corrupt(case, release[0], server, monkeypatch)
    before = snapshot(toy_store)
    error = one_line_error(cli("download", *args, "--store", toy_store, "--quiet"))
    assert re.search(message, error), error
    assert snapshot(toy_store) == before
    assert case == "connection drops" or not list((toy_store / "downloads").rglob("*.part"))


# -- bundles ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meta_store(tmp_path_factory) -> Path:
    """Videos with every exported column (some null), a secret source path, and two vector sets."""
    path = tmp_path_factory.mktemp("bundle") / "store"
    rng = np.random.default_rng(5)
    ids = [f"0X{v:016X}" for v in rng.integers(0, 2**63, size=40)]
    rows = [{"video_id": v, "source_path": f"/srv/secret/videos/{v}.avi", "sha256": "f" * 64,
             "patient_id": f"PAT{k // 2:03d}", "study_id": None if k % 5 == 0 else f"S{k}", "view": "A4C",
             "split": [None, "TRAIN", "VAL", "TEST"][k % 4], "n_frames": 100 + k, "fps": 50.0 + k / 7,
             "height": 112, "width": None if k == 3 else 112, "ef": None if k == 6 else 20 + k * 1.37,
             "esv": 40.5, "edv": 100.25} for k, v in enumerate(ids)]
    vectors = LatentMixture(16, centres=5, latent=4, seed=1).sample(40, seed=2)[0]
    prov = {"encoder": "enc", "dim": 16, "weights": "/srv/secret/weights/model.pt", "weights_sha256": "ab" * 32,
            "preprocessing": {"size": [112, 112], "vocab": "/srv/secret/vocab.txt"}, "package_version": "0.1.0",
            "modalities": ["video"]}
    with open_store(path, create=True) as st:
        st.add_videos(rows)
        st.add_vectors(prov, ids, vectors)
        st.add_vectors({**prov, "encoder": "rnd", "weights": "random-init", "weights_sha256": "random-init"}, ids, vectors)
    return path


@pytest.mark.parametrize("fmt, split", [("hdf5", "TRAIN,VAL"), ("parquet", None)])
def test_export_download_ingest_round_trip_is_exact(fmt, split, meta_store, server, tmp_path):
    out = server.root / "bundle"
    args = ["--split", split] if split else []
    done = cli("export", "--store", meta_store, "--encoder", "enc", "--out", out, "--format", fmt,
               "--source-data", "phantom", *args, "--quiet")
    assert done.exit_code == 0, done.output
    manifest_text = (out / "manifest.json").read_text()
    with open_store(meta_store, read_only=True) as st:
        salt = st.salt
        ids, vectors = st.all_vectors("enc")
        keep = [i for i, r in enumerate(st.videos(ids)) if split is None or r["split"] in split.split(",")]
        ids, vectors = [ids[i] for i in keep], vectors[keep]
        old_rows = st.videos(ids)
    assert salt not in manifest_text and "source_path" not in manifest_text and "/srv/secret" not in manifest_text
    manifest = json.loads(manifest_text)
    assert manifest["count"] == len(ids) and manifest["encoder"]["weights"] == "model.pt"
    assert {f["path"] for f in manifest["files"]} >= {"DATA_CARD.md"}

    new = tmp_path / "new"
    got = cli("download", server.url("bundle/manifest.json"), "--store", new, "--quiet")
    assert got.exit_code == 0, got.output
    with open_store(new, read_only=True) as st:
        new_ids, new_vectors = st.all_vectors("enc")
        assert new_ids == ids and new_vectors.tobytes() == vectors.tobytes()
        assert [[r[c] for c in META] for r in st.videos(ids)] == [[r[c] for c in META] for r in old_rows]
        assert all(r["source_path"] is None for r in st.videos(ids))
        prov = st.encoder_info("enc")
        assert prov["weights_sha256"] == "ab" * 32 and prov["preprocessing"]["vocab"] == "vocab.txt"
        assert json.loads(st.catalog.get_meta("release:enc"))["licence"]["source"] == "phantom"


def test_data_cards_carry_licences_and_the_random_init_warning(meta_store, tmp_path):
    with open_store(meta_store, read_only=True) as st:
        export(st, "rnd", tmp_path / "rnd", progress=False)
        export(st, "enc", tmp_path / "enc", fmt="parquet", source="phantom", progress=False)
    card = (tmp_path / "rnd" / "DATA_CARD.md").read_text()
    head = card.split("## What")[0]
    assert "WARNING: these vectors come from randomly initialised weights" in head
    assert "NOTICE: derived from EchoNet-Dynamic" in head  # EchoNet-style ids: the cautious reading
    assert "research use agreement" in card and not re.search(r"\{[a-z_]+\}", card)  # every field filled
    plain = (tmp_path / "enc" / "DATA_CARD.md").read_text()
    assert "WARNING" not in plain and "NOTICE" not in plain and "synthetic data" in plain


def test_released_set_exports_with_its_licence(release, server, tmp_path):
    text, ids, raw = release
    (server.root / "e.txt").write_bytes(text)
    assert cli("download", server.url("e.txt"), "--store", tmp_path / "s", "--quiet").exit_code == 0
    with open_store(tmp_path / "s", read_only=True) as st:
        manifest = export(st, "r3d-v0", tmp_path / "b", progress=False)
    card = (tmp_path / "b" / "DATA_CARD.md").read_text()
    assert manifest["licence"]["weights"].startswith("MIT") and manifest["licence"]["source"] == "echonet"
    assert "JACC: Advances" in card and "EchoNet-Dynamic research use agreement" in card
    assert "released embeddings" in card


def test_tampered_bundle_is_refused_and_the_store_is_unchanged(meta_store, server, toy_store):
    with open_store(meta_store, read_only=True) as st:
        export(st, "enc", server.root / "b", fmt="parquet", progress=False)
    shard = server.root / "b" / "vectors-00000.parquet"
    data = shard.read_bytes()
    before = snapshot(toy_store)
    shard.write_bytes(data + b"extra")
    error = one_line_error(cli("download", server.url("b/manifest.json"), "--store", toy_store, "--quiet"))
    assert "vectors-00000.parquet: wrong size" in error
    shard.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    error = one_line_error(cli("download", server.url("b/manifest.json"), "--store", toy_store, "--quiet"))
    assert "vectors-00000.parquet: wrong checksum" in error and "(manifest.json)" in error
    assert snapshot(toy_store) == before
