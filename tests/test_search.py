"""Searcher: filters, grouping, bad input, the CLI, and same-patient retrieval on a phantom store."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from embedstore.cli import app
from embedstore.errors import BadInput, Conflict, NotFound, VideoError
from embedstore.index import Searcher, build_index, similar
from embedstore.index import search as search_module
from embedstore.index.search import QueryEncoder
from embedstore.store import open_store
from tests.media import moving_frames, truncate, write_video
from tests.test_index import PROV, SPACE, make_store

N = 1200
CLIP = {**PROV, "encoder": "toyclip", "modalities": ["text", "video"]}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """1,200 toy videos: 'toy' with a Flat index, 'toy2' (same vectors) with HNSW, 'toyclip' with reports."""
    path = tmp_path_factory.mktemp("toy") / "store"
    store, ids, vectors = make_store(path, N)
    store.add_vectors({**PROV, "encoder": "toy2"}, ids, vectors)
    store.add_reports([{"report_id": f"r{i}", "study_id": f"s{i}", "patient_id": f"p{i}", "text": f"report {i}"}
                       for i in range(20)])
    store.add_vectors(CLIP, ids[:20], vectors[:20])
    store.add_vectors(CLIP, [f"r{i}" for i in range(20)], vectors[:20] + 0.01, target="reports")
    build_index(store, "toy", progress=False)
    build_index(store, "toy2", factory="HNSW32", progress=False)
    build_index(store, "toyclip", progress=False)
    build_index(store, "toyclip", target="reports", progress=False)
    store.close()
    return path


@pytest.fixture()
def ro(toy):
    with open_store(toy, read_only=True) as store:
        yield store


def allowed_ids(store, where: str) -> set[str]:
    return {r[0] for r in store.catalog.query(f"SELECT video_id FROM videos WHERE {where}")}


# -- filters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoder", ["toy", "toy2"])
def test_filter_returns_exactly_k_matching_rows(ro, encoder):
    where = "split = 'TEST' AND ef < 40"
    result = Searcher(ro, encoder).search_id("v00007", k=25, where=where)
    assert len(result.hits) == 25
    assert {h.id for h in result.hits} <= allowed_ids(ro, where)
    assert all(h.metadata["split"] == "TEST" and h.metadata["ef"] < 40 for h in result.hits)
    assert result.filtered_out == N - len(allowed_ids(ro, where))


def test_selective_filter_on_hnsw_through_faiss_matches_exact_search(ro, monkeypatch):
    monkeypatch.setattr(search_module, "EXACT_SUBSET_MAX", 0)  # force the FAISS id-selector path
    where = "ef < 12"  # 2 of 70 EF values: ~3% of rows
    searcher = Searcher(ro, "toy2")
    allowed = sorted(allowed_ids(ro, where))
    stored = ro.get_vectors("toy2", allowed)
    queries, _ = SPACE.sample(20, seed=5)
    found = 0
    for query in queries:
        hits = searcher.search_vector(query, k=10, where=where).hits
        assert len(hits) == 10 and {h.id for h in hits} <= set(allowed)
        found += len({h.id for h in hits} & {allowed[i] for i in np.argsort(-(stored @ query))[:10]})
    assert found / 200 >= 0.95, f"filtered HNSW recall@10 {found / 200:.3f}"


@pytest.mark.parametrize("encoder, subset_max", [("toy", N), ("toy2", N), ("toy2", 0)])
def test_filtered_id_query_leaves_itself_out_on_every_path_and_reuses_the_filters_bitmap(ro, monkeypatch, encoder,
                                                                                         subset_max):
    """The exact scan of the flat storage (Flat; HNSW's own vectors) and the id selector (HNSW): the query's
    own row passes the filter but never comes back, also the second time, when the filter's bitmap is reused."""
    monkeypatch.setattr(search_module, "EXACT_SUBSET_MAX", subset_max)
    where = "split = 'TEST'"
    allowed = sorted(allowed_ids(ro, where))
    stored = ro.get_vectors(encoder, allowed)
    searcher = Searcher(ro, encoder)
    for query_id in ("v00002", "v00005", "v00002"):  # all three in TEST (i % 3 == 2)
        assert query_id in allowed
        query = stored[allowed.index(query_id)]
        truth = [allowed[i] for i in np.argsort(-(stored @ query)) if allowed[i] != query_id][:10]
        hits = searcher.search_id(query_id, k=10, where=where).hits
        assert len(hits) == 10 and query_id not in {h.id for h in hits}
        assert len({h.id for h in hits} & set(truth)) >= (10 if subset_max else 9)
    assert len(searcher._bitmaps) == 1  # one bitmap for the filter, whatever the query left out


def test_filter_leaving_fewer_than_k_returns_all_of_them(ro):
    where = "ef < 10.5"
    result = Searcher(ro, "toy2").search_id("v00000", k=50, where=where, exclude_self=False)
    assert {h.id for h in result.hits} == allowed_ids(ro, where)


def test_where_cannot_modify_the_catalog(ro, toy):
    before = (ro.catalog.counts(), ro.catalog.fingerprint("toy", "videos"))
    searcher = Searcher(ro, "toy")
    for where in ["1=1; DROP TABLE videos", "ef < 40); DROP TABLE videos; --",
                  "1=1; INSERT INTO videos (video_id) VALUES ('x')", "DELETE FROM videos"]:
        with pytest.raises(BadInput, match="not a single SQL expression") as exc:
            searcher.search_id("v00001", k=3, where=where)
        assert "\n" not in str(exc.value)
    assert (ro.catalog.counts(), ro.catalog.fingerprint("toy", "videos")) == before
    result = CliRunner().invoke(app, ["search", "--store", str(toy), "-e", "toy", "--id", "v00001",
                                      "--where", "1=1; DROP TABLE videos"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --where")
    assert ro.catalog.counts() == before[0]


# -- query kinds, grouping, result shape ------------------------------------------------------------
def test_exclude_self_and_include_self(ro):
    searcher = Searcher(ro, "toy")
    assert "v00042" not in [h.id for h in searcher.search_id("v00042", k=5).hits]
    first = searcher.search_id("v00042", k=5, exclude_self=False).hits[0]
    assert first.id == "v00042" and first.score == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("n_excluded", [3, 100])  # a short list and one past the np.isin threshold
def test_excluded_ids_are_left_out_and_the_rest_is_exact(ro, n_excluded):
    searcher = Searcher(ro, "toy")
    query = ro.get_vectors("toy", ["v00007"])[0]
    ranked = [h.id for h in searcher.search_vector(query, k=N).hits]
    excluded = ranked[:n_excluded:2] + ranked[-n_excluded // 2:]
    hits = searcher.search_vector(query, k=20, exclude_ids=excluded).hits
    assert [h.id for h in hits] == [i for i in ranked if i not in set(excluded)][:20]


def test_same_patient_groups_neighbours_by_patient(ro):
    result = Searcher(ro, "toy").search_id("v00003", k=8, same_patient=True)
    patients = [h.metadata["patient_id"] for h in result.hits]
    assert len(patients) == len(set(patients)) == 8
    assert all(h.count >= 1 for h in result.hits)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)


def test_result_carries_provenance_ef_estimate_and_serialises(ro):
    searcher = Searcher(ro, "toy")
    start = time.perf_counter()
    result = searcher.search_id("v00010", k=10)
    elapsed_ms = (time.perf_counter() - start) * 1000
    # the estimate: the 50 nearest videos outside the query's patient (p3: v00009-v00011)
    wide = Searcher(ro, "toy").search_id("v00010", k=53).hits
    efs = [h.metadata["ef"] for h in wide if h.metadata["patient_id"] != "p3"][:50]
    assert result.ef_estimate == {"mean": round(float(np.mean(efs)), 2), "std": round(float(np.std(efs)), 2), "n": 50,
                                  "k": 50, "left_out": "the query's video and its patient's other videos"}
    data = json.loads(json.dumps(result.to_dict()))
    assert data["provenance"]["random_init"] is True and data["provenance"]["weights_sha256"] == "random-init"
    assert data["provenance"]["index"]["factory"] == "Flat" and 0 < data["took_ms"] <= elapsed_ms  # the search's own time
    assert [h["rank"] for h in data["hits"]] == list(range(1, 11))


class CountingIndex:
    """The Searcher's FAISS index with its search calls counted (the Python wrapper's and the C++ one's)."""

    def __init__(self, index):
        self.inner, self.searches = index, 0

    def search(self, *args, **kwargs):
        self.searches += 1
        return self.inner.search(*args, **kwargs)

    def search_c(self, *args):
        self.searches += 1
        return self.inner.search_c(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize("encoder, ef_search, with_estimate, searches", [
    ("toy", None, True, (1, 1)), ("toy2", 16, True, (1, 2)), ("toy2", 64, True, (1, 1)),  # one search when it can serve both
    ("toy", None, False, (1, 2)), ("toy2", 64, False, (1, 2))])  # the hits' search asks for k only
def test_ef_estimate_is_worked_out_when_read(ro, encoder, ef_search, with_estimate, searches):
    searcher = Searcher(ro, encoder, with_estimate=with_estimate)
    if ef_search is not None:  # below the estimate's 50 neighbours the hits' search cannot serve it
        searcher.sidecar["search_params"]["efSearch"] = ef_search
    searcher.index = counting = CountingIndex(searcher.index)
    query = ro.get_vectors(encoder, ["v00400"]) * 3  # not a stored id: nothing left out, and not unit length
    result = searcher.search_vector(query, k=5)
    assert counting.searches == searches[0] and [h.rank for h in result.hits] == [1, 2, 3, 4, 5]
    query[:] = 0  # the caller reuses its array before reading the estimate
    estimate = result.ef_estimate
    assert counting.searches == searches[1]
    wide = searcher.search_vector(ro.get_vectors(encoder, ["v00400"]), k=50).hits
    efs = [h.metadata["ef"] for h in wide]
    assert estimate == {"mean": round(float(np.mean(efs)), 2), "std": round(float(np.std(efs)), 2), "n": 50,
                        "k": 50, "left_out": "nothing (the query is not a stored video)"}
    assert result.ef_estimate is estimate and counting.searches == searches[1] + 1  # read once, kept


def test_result_ids_and_scores_come_without_hit_objects_and_keep_any_id(tmp_path, monkeypatch):
    store = open_store(tmp_path / "s", create=True)
    vectors, _ = SPACE.sample(40, seed=5)
    ids = [f"écho-{i}-ü" if i % 2 else "v" * (i + 1) for i in range(40)]  # non-ASCII, 1 to 39 characters
    store.add_videos([{"video_id": v, "patient_id": f"p{i}"} for i, v in enumerate(ids)])
    store.add_vectors(PROV, ids, vectors)
    build_index(store, "toy", progress=False)
    unit = store.get_vectors("toy", ids)
    store.close()

    class Counted(search_module.Hit):
        __slots__ = ()
        made = 0

        def __init__(self, *args, **kwargs):
            Counted.made += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(search_module, "Hit", Counted)
    with open_store(tmp_path / "s", read_only=True) as ro:
        result = Searcher(ro, "toy").search_id("écho-7-ü", k=5)
        scores = unit @ unit[7]
        order = [i for i in np.argsort(-scores, kind="stable") if i != 7][:5]
        assert result.ids == [ids[i] for i in order] and Counted.made == 0  # no Hit built for ids and scores
        np.testing.assert_allclose(result.scores, scores[order], rtol=1e-5)
        assert [(h.id, h.score) for h in result.hits] == list(zip(result.ids, result.scores)) and Counted.made == 5
        assert result.hits[0].metadata["patient_id"] == f"p{order[0]}" and result.hits is result.hits  # built once
        assert Counted.made == 5


def test_video_to_report_and_report_to_video(ro):
    reports = Searcher(ro, "toyclip", target="reports").search_id("v00004", k=3)
    assert reports.hits[0].id == "r4" and reports.hits[0].metadata["text"] == "report 4"
    assert reports.ef_estimate is None
    videos = Searcher(ro, "toyclip").search_report("r4", k=1)
    assert videos.hits[0].id == "v00004" and videos.query["stored_id"] == "r4"


# -- bad input: right class, one line ---------------------------------------------------------------
def test_bad_inputs_give_one_line_errors(ro, tmp_path):
    searcher = Searcher(ro, "toy")
    broken = truncate(write_video(tmp_path / "broken.avi", moving_frames(24, 64)))
    cases = [
        (lambda: Searcher(ro, "nope"), NotFound, "no vectors for encoder 'nope'"),
        (lambda: Searcher(ro, "toyclip", target="frames"), BadInput, "target must be one of"),
        (lambda: searcher.search_vector(np.ones(5)), BadInput, "dimension 5"),
        (lambda: searcher.search_vector(np.full(32, np.nan)), BadInput, "NaN"),
        (lambda: searcher.search_vector(np.ones((2, 32))), BadInput, "one query vector"),
        (lambda: searcher.search_id("v99999"), NotFound, "'v99999'"),
        (lambda: searcher.search_id("v00001", where="ef <"), BadInput, "not a single SQL expression"),
        (lambda: searcher.search_id("v00001", where="nope > 1"), BadInput, 'column "nope" not found.*columns of videos'),
        (lambda: searcher.search_id("v00001", where="split + 1 > 0"), BadInput, "--where"),
        (lambda: searcher.search_id("v00001", k=0), BadInput, "positive integer"),
        (lambda: searcher.search_video(broken), VideoError, "broken.avi"),
        (lambda: searcher.search_video(tmp_path / "absent.avi"), NotFound, "no such video file"),
        (lambda: searcher.search_text("dilated left ventricle"), BadInput, "no text tower"),
        (lambda: searcher.search(k=3), BadInput, "exactly one query"),
        (lambda: searcher.search(id="v00001", text="x"), BadInput, "got id, text"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern) as exc:
            call()
        assert "\n" not in str(exc.value), str(exc.value)


def test_missing_index_names_the_command(tmp_path):
    store, ids, _ = make_store(tmp_path / "fresh", 12)
    with pytest.raises(NotFound, match=f"`embedstore index --store {store.path} --encoder toy`"):
        Searcher(store, "toy")
    store.close()


# -- end to end on a phantom cohort -----------------------------------------------------------------
@pytest.fixture(scope="session")
def phantom_store(ingested_store, tmp_path_factory) -> Path:
    """The conftest phantom store (20 patients x 3 videos) encoded with random-init r3d, indexed."""
    from embedstore.encode import encode_store
    from embedstore.encoders import get_encoder

    path = tmp_path_factory.mktemp("search") / "phantom"
    shutil.copytree(ingested_store, path)
    with open_store(path) as store:
        encode_store(store, get_encoder("r3d", random_init=True, device="cpu"), progress=False)
        build_index(store, "r3d", progress=False)
    return path


@pytest.fixture()
def phantom(phantom_store):
    with open_store(phantom_store, read_only=True) as store:
        yield store


def test_nearest_other_video_is_same_patient_far_above_chance(phantom):
    searcher = Searcher(phantom, "r3d")
    videos = phantom.videos()
    per_patient = {}
    for v in videos:
        per_patient[v["patient_id"]] = per_patient.get(v["patient_id"], 0) + 1
    same = [searcher.search_id(v["video_id"], k=1).hits[0].metadata["patient_id"] == v["patient_id"] for v in videos]
    rate = float(np.mean(same))
    chance = float(np.mean([(per_patient[v["patient_id"]] - 1) / (len(videos) - 1) for v in videos]))
    assert rate >= max(10 * chance, 0.5), f"same-patient nearest-neighbour rate {rate:.3f} vs chance {chance:.3f}"


def test_similar_ranks_same_patient_pairs_above_different_ones(phantom):
    videos = phantom.videos()[:15]
    same, different = [], []
    for a, b in combinations(videos, 2):
        p = similar(phantom, "r3d", a["video_id"], b["video_id"])["same_patient_probability"]
        (same if a["patient_id"] == b["patient_id"] else different).append(p)
    assert same and different
    assert np.mean(same) > np.mean(different) + 0.1, (np.mean(same), np.mean(different))
    from embedstore.index.similar import calibration

    cal = calibration(phantom, "r3d")  # a reader fits it once and keeps it in memory: it writes nothing
    assert cal["n_pairs"] == 120 and cal["fingerprint"] == phantom.catalog.fingerprint("r3d", "videos")
    assert calibration(phantom, "r3d") is cal and not (phantom.indexes_dir / "r3d.same-patient.json").exists()


def test_video_query_of_a_stored_file_uses_its_stored_vector(phantom):
    video = phantom.videos()[5]
    result = Searcher(phantom, "r3d").search_video(video["source_path"], k=3)
    assert result.query["stored_id"] == video["video_id"]
    assert result.hits[0].id == video["video_id"] and result.hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_random_init_query_encoder_must_reproduce_stored_vectors(phantom, tmp_path):
    """Random weights are comparable only when seeded: either they reproduce the store, or the query is refused."""
    from embedstore.encoders import get_encoder
    from embedstore.video.read import read_video

    stored = phantom.videos()[0]
    again = get_encoder("r3d", random_init=True, device="cpu").embed_videos([read_video(stored["source_path"])])[0]
    reproducible = float(again @ phantom.get_vectors("r3d", [stored["video_id"]])[0]) > 0.99
    new = write_video(tmp_path / "new.avi", moving_frames(32, 112, seed=3))
    searcher = Searcher(phantom, "r3d")
    if reproducible:
        assert len(searcher.search_video(new, k=3).hits) == 3
    else:
        with pytest.raises(Conflict, match="does not reproduce"):
            searcher.search_video(new, k=3)


# -- the CLI ----------------------------------------------------------------------------------------
def test_cli_index_search_similar(phantom_store):
    runner = CliRunner()
    store = str(phantom_store)
    out = runner.invoke(app, ["index", "--store", store, "--encoder", "r3d", "--quiet"])
    assert out.exit_code == 0 and "Flat" in out.stdout and "recall@10 1.000" in out.stdout
    with open_store(phantom_store, read_only=True) as st:
        first, second = st.videos()[:2]
    out = runner.invoke(app, ["search", "--store", store, "-e", "r3d", "--id", first["video_id"], "-k", "4",
                              "--where", "split = 'TRAIN'"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["rank", "id", "score", "patient", "EF", "split", "view", "path"]
    assert len(lines) == 1 + 4 + 2 and lines[-1].startswith("neighbour EF estimate:")
    assert "random-init" in out.stderr
    out = runner.invoke(app, ["search", "--store", store, "-e", "r3d", "--id", first["video_id"], "--json", "--same-patient"])
    data = json.loads(out.stdout)
    assert len(data["hits"]) == 10 and data["provenance"]["random_init"] is True
    out = runner.invoke(app, ["similar", "--store", store, "-e", "r3d", first["video_id"], second["video_id"]])
    assert out.exit_code == 0 and out.stdout.startswith("cosine ") and "same-patient probability" in out.stdout
    for bad in (["--id", "nope"], ["--id", first["video_id"], "-k", "0"], [], ["--id", "x", "--text", "y"]):
        out = runner.invoke(app, ["search", "--store", store, "-e", "r3d", *bad])
        assert out.exit_code == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr


def test_installed_command_runs(phantom_store, tmp_path):
    with open_store(phantom_store, read_only=True) as st:
        video_id, dim = st.videos()[0]["video_id"], st.encoder_info("r3d")["dim"]
        np.save(tmp_path / "q.npy", st.get_vectors("r3d", [video_id])[0])
    exe = Path(sys.executable).parent / "embedstore"
    done = subprocess.run([str(exe), "search", "--store", str(phantom_store), "--encoder", "r3d",
                           "--vector", str(tmp_path / "q.npy"), "-k", "3", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)["hits"]
    assert hits[0]["id"] == video_id and len(hits) == 3 and dim == 400


def test_where_cannot_read_server_files(tmp_path):
    """A filter is SQL over the catalog only: DuckDB's file readers are off on read-only stores."""
    import numpy as np

    from embedstore.errors import BadInput
    from embedstore.index.build import build_index
    from embedstore.index.search import Searcher
    from embedstore.store import open_store

    prov = {"encoder": "toy", "dim": 4, "weights": "random-init", "weights_sha256": "random-init",
            "preprocessing": {}, "package_version": "test", "modalities": ["video"]}
    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": f"v{i}"} for i in range(5)])
        st.add_vectors(prov, [f"v{i}" for i in range(5)], np.random.default_rng(0).normal(size=(5, 4)))
        build_index(st, "toy", progress=False)
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with open_store(tmp_path / "s", read_only=True) as st:
        with pytest.raises(BadInput):
            Searcher(st, "toy").search_vector(np.ones(4), k=2, where=f"(SELECT count(*) FROM read_csv('{secret}')) > 0")


# -- one library call per query: a video file is hashed once and decoded only when not stored -------
@pytest.fixture()
def counted(monkeypatch):
    """Counts of file hashes and decodes made by the query encoder."""
    calls = {"hash": 0, "decode": 0}
    hash_file, decode = search_module.sha256_file, search_module.read_video

    def hashing(path):
        calls["hash"] += 1
        return hash_file(path)

    def decoding(*args, **kwargs):
        calls["decode"] += 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(search_module, "sha256_file", hashing)
    monkeypatch.setattr(search_module, "read_video", decoding)
    return calls


def test_video_query_hashes_once_and_decodes_only_a_file_not_stored(phantom, counted, tmp_path):
    from embedstore.errors import TooManyFrames

    stored = phantom.videos()[5]
    searcher = Searcher(phantom, "r3d")
    result = searcher.search(video=stored["source_path"], k=3, max_frames=stored["n_frames"])
    assert result.query["stored_id"] == stored["video_id"] and counted == {"hash": 1, "decode": 0}
    # A stored file is held to the same limit (by its catalog frame count): refused whether stored or not.
    with pytest.raises(TooManyFrames, match=f"more than {stored['n_frames'] - 1} frames"):
        searcher.search(video=stored["source_path"], max_frames=stored["n_frames"] - 1)
    assert counted["decode"] == 0
    new = write_video(tmp_path / "new.avi", moving_frames(32, 112, seed=3))
    with pytest.raises(TooManyFrames, match="new.avi: more than 8 frames"):
        searcher.search(video=new, max_frames=8)
    assert counted == {"hash": 3, "decode": 1} and "model" not in vars(searcher.query_encoder)  # no model ran


def test_similar_ids_take_ids_only_and_similar_videos_files(phantom, counted, tmp_path):
    from embedstore.errors import TooManyFrames
    from embedstore.index import similar_ids, similar_videos

    a, b = phantom.videos()[:2]
    by_ids = similar_ids(phantom, "r3d", a["video_id"], b["video_id"])
    assert by_ids == similar(phantom, "r3d", a["video_id"], b["video_id"]) and counted["hash"] == 0
    with pytest.raises(NotFound, match="no r3d vector"):  # an existing file is no id
        similar_ids(phantom, "r3d", a["video_id"], b["source_path"])
    by_files = similar_videos(phantom, "r3d", a["source_path"], b["source_path"])
    assert by_files["cosine"] == by_ids["cosine"] and counted == {"hash": 2, "decode": 0}
    assert similar(phantom, "r3d", a["source_path"], b["video_id"])["cosine"] == by_ids["cosine"]  # the CLI's: either
    with pytest.raises(NotFound, match="neither a video id with r3d vectors in the store nor a video file"):
        similar(phantom, "r3d", a["video_id"], str(tmp_path / "absent.avi"))
    short = write_video(tmp_path / "short.avi", moving_frames(12, 112, seed=3))
    long = write_video(tmp_path / "long.avi", moving_frames(32, 112, seed=4))
    with pytest.raises(TooManyFrames, match="long.avi: more than 16 frames"):  # both files read before any model runs
        similar_videos(phantom, "r3d", short, long, max_frames=16)
    assert counted["decode"] == 2 and "model" not in vars(QueryEncoder.of(phantom, "r3d"))


def test_calibration_is_refitted_when_new_labels_arrive(tmp_path):
    """Same vectors, new patient labels (a later ingest of the list): the cached fit is stale and is refitted."""
    from embedstore.index.similar import calibration, calibration_path

    rng = np.random.default_rng(0)
    ids = [f"v{i:02d}" for i in range(12)]
    centres = rng.normal(size=(4, 16))
    vectors = np.repeat(centres, 3, axis=0) + 0.3 * rng.normal(size=(12, 16))  # 4 patients x 3 videos
    with open_store(tmp_path / "s", create=True) as st:
        st.add_videos([{"video_id": i} for i in ids])
        st.add_vectors({**PROV, "dim": 16}, ids, vectors)
        before = calibration(st, "toy")
        assert before["n_pairs"] == 0 and calibration_path(st, "toy").exists()
        st.catalog.update_labels([{"video_id": i, "patient_id": f"p{n // 3}"} for n, i in enumerate(ids)])
        after = calibration(st, "toy")
    assert after["n_pairs"] == 24 and after["same_pairs"] == 12 and after["coef"] > 0
    assert after["fingerprint"] == before["fingerprint"]  # the vectors did not change; the labels did
    with open_store(tmp_path / "s", read_only=True) as st:
        assert calibration(st, "toy")["n_pairs"] == 24  # the refit was written, and is current for readers


def test_ingest_of_new_labels_refits_the_kept_calibration(phantom_store, phantom_cohort, tmp_path):
    from embedstore.datasets.ingest import ingest
    from embedstore.index.similar import calibration, calibration_path

    path = tmp_path / "s"
    shutil.copytree(phantom_store, path)
    with open_store(path) as st:
        st.catalog.con.execute("UPDATE videos SET patient_id = NULL")  # vectors first, labels later
        assert calibration(st, "r3d")["n_pairs"] == 0
        ingest(phantom_cohort, st, progress=False)  # the same files again: only their labels are new
        kept = json.loads(calibration_path(st, "r3d").read_text())
        assert kept["n_pairs"] == 120 and kept["labels"] == st.catalog.labels_fingerprint("r3d")
