"""Issue 16 as an attacker would try it: filters that can only filter, the pseudonym key out of reach,
bounded filter work, no server paths over REST, run records of killed jobs, a quiet /health."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from embedstore.errors import BadInput, Conflict
from embedstore.index.build import build_index
from embedstore.index.search import Searcher
from embedstore.store import open_store
from embedstore.store.expressions import check

PROV = {"encoder": "toy", "dim": 4, "weights": "random-init", "weights_sha256": "random-init",
        "preprocessing": {}, "package_version": "test", "modalities": ["video"]}

# Each reads something a filter must not: the salt, report texts, run arguments, files, the environment,
# settings; or costs more than a filter may (a cross join); or reaches past the WHERE clause.
PROBES = [
    "(SELECT substr(value,1,1) FROM meta WHERE key='salt') = '4'",
    "EXISTS (SELECT 1 FROM meta WHERE key = 'salt_check')",
    "EXISTS (SELECT 1 FROM reports WHERE text LIKE '%dilated%')",
    "(SELECT args FROM runs LIMIT 1) LIKE '%/%'",
    "video_id IN (SELECT item_id FROM embeddings)",
    "(SELECT count(*) FROM read_csv('/etc/hostname')) > 0",
    "(SELECT count(*) FROM read_parquet('/tmp/x.parquet')) > 0",
    "(SELECT count(*) FROM glob('/*')) > 0",
    "(SELECT count(*) FROM range(100000) a, range(100000) b) > 0",
    "getenv('HOME') IS NOT NULL",
    "current_setting('threads') > 0",
    "main.lower(split) = 'test'",
    "system.main.getenv('HOME') = ''",
    "meta.value = 'x'",
    "videos.source_path LIKE '/%'",
    "source_path LIKE '/%'",
    "sha256 = 'x'",
    "count(*) > 0",
    "row_number() OVER () > 1",
    "ef > $1",
    "1=1 ORDER BY ef",
    "1=1 LIMIT 1",
    "1=1 UNION SELECT * FROM meta",
    "1=1 GROUP BY split",
    "list_filter([1, 2], x -> x > 1) = [2]",
    "query('SELECT 1') IS NULL",
    "1=1; SELECT * FROM meta",
    "NOT " * 990 + "true",  # deeper than Python reads a parse tree: refused, not a 500
    "ef" + " + 1" * 900 + " > 3",
]
ALLOWED = [
    "split = 'TEST' AND ef < 40",
    "lower(split) LIKE 't%' OR ef BETWEEN 30 AND 40",
    "coalesce(ef, 0) > 1 AND CAST(ef AS INTEGER) <> 3",
    "CASE WHEN ef > 21 THEN true ELSE false END",
    "split IN ('TEST', 'VAL') AND NOT (ef IS NULL) AND abs(ef - 50) < 100",
    "split <> 'a;b' OR split IS NULL",  # a ';' inside a literal is text, not a second statement
    "year(added_at) > 2000 AND patient_id IS NOT NULL",
]


@pytest.fixture()
def toy(tmp_path):
    path = tmp_path / "s"
    with open_store(path, create=True) as st:
        st.add_videos([{"video_id": f"v{i}", "split": "TEST" if i % 2 else "TRAIN", "ef": 20.0 + i,
                        "patient_id": f"p{i}", "source_path": f"/srv/MRN-{i}/clip.avi"} for i in range(8)])
        st.add_reports([{"report_id": "r1", "video_id": "v1", "text": "dilated left ventricle"}])
        st.add_vectors(PROV, [f"v{i}" for i in range(8)], np.random.default_rng(0).normal(size=(8, 4)))
        with st.run("ingest", {"source": "/srv/patients"}):
            pass
        build_index(st, "toy", progress=False)
    return path


@pytest.mark.parametrize("probe", PROBES)
def test_filters_reach_nothing_but_the_searched_rows(toy, probe):
    with open_store(toy, read_only=True) as st:
        searcher = Searcher(st, "toy")
        with pytest.raises(BadInput) as exc:
            searcher.search_id("v1", k=3, where=probe)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("guess", "0123456789abcdef")
def test_the_salt_probe_is_refused_for_every_guess(toy, guess):
    with open_store(toy, read_only=True) as st:
        with pytest.raises(BadInput, match="subqueries are not allowed"):
            Searcher(st, "toy").search_id("v1", k=3, where=f"(SELECT substr(value,1,1) FROM meta WHERE key='salt') = '{guess}'")


@pytest.mark.parametrize("where", ALLOWED)
def test_plain_conditions_still_filter(toy, where):
    with open_store(toy, read_only=True) as st:
        result = Searcher(st, "toy").search_id("v1", k=8, where=where, exclude_self=False)
    assert result.filtered_out + len(result.hits) == 8 and 0 < len(result.hits)


def test_the_label_uses_the_same_check():
    assert check("ef < 50", "videos", "--label").text == "ef < 50"
    with pytest.raises(BadInput, match="--label .*subqueries are not allowed"):
        check("ef < (SELECT 1)", "videos", "--label")
    with pytest.raises(BadInput, match='column "text" not found'):
        check("text LIKE '%a%'", "videos")
    assert check("text LIKE '%a%'", "reports").table == "reports"  # a report search may filter its own text


# -- the pseudonym key ------------------------------------------------------------------------------
def test_the_salt_lives_in_a_private_key_file_not_in_the_catalog(toy):
    key = toy / "salt.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 32
    with open_store(toy, read_only=True) as st:
        assert st.salt == key.read_text().strip()
        assert st.catalog.get_meta("salt") is None
        assert st.salt not in str(st.catalog.query("SELECT * FROM meta"))


def test_a_store_from_before_moves_its_salt_on_first_writable_open(toy):
    old = "0123456789abcdef0123456789abcdef"
    (toy / "salt.key").unlink()
    with open_store(toy) as st:  # as the old code left it: the salt in meta, no key file
        st.catalog.delete_meta("salt_check")
        st.catalog.set_meta("salt", old)
        (toy / "salt.key").unlink()
    with open_store(toy, read_only=True) as st:
        assert st.salt == old  # read-only opens still find it
    with open_store(toy) as st:
        assert st.salt == old and st.catalog.get_meta("salt") is None
    assert (toy / "salt.key").read_text().strip() == old and stat.S_IMODE((toy / "salt.key").stat().st_mode) == 0o600


def test_the_key_may_come_from_the_environment_and_a_wrong_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDSTORE_SALT", "kept-elsewhere")
    with open_store(tmp_path / "s", create=True) as st:
        assert st.salt == "kept-elsewhere"
    assert not (tmp_path / "s" / "salt.key").exists()
    monkeypatch.setenv("EMBEDSTORE_SALT", "another")
    with open_store(tmp_path / "s") as st, pytest.raises(Conflict, match="not the one store s was made with"):
        st.salt
    monkeypatch.delenv("EMBEDSTORE_SALT")
    key = tmp_path / "key"
    key.write_text("kept-elsewhere\n")
    monkeypatch.setenv("EMBEDSTORE_SALT_FILE", str(key))
    with open_store(tmp_path / "s") as st:
        assert st.salt == "kept-elsewhere"
    assert os.environ["EMBEDSTORE_SALT_FILE"] == str(key)


def test_sql_lives_only_in_the_store():
    """Issue 15: every statement is a named catalog query, so the checks above guard the only door."""
    import re
    from pathlib import Path

    import embedstore

    root = Path(embedstore.__file__).parent
    statement = re.compile(r"SELECT|INSERT |UPDATE |DELETE ")
    outside = [f"{p.relative_to(root)}:{n}" for p in root.rglob("*.py") if p.parent.name != "store" or p.parent.parent != root
               for n, line in enumerate(p.read_text().splitlines(), 1) if statement.search(line)]
    assert outside == []


# -- run records --------------------------------------------------------------------------------------
def test_a_killed_run_is_marked_interrupted_on_the_next_writable_open(toy):
    import subprocess
    import sys

    crash = ("import os, sys; from embedstore.store import open_store\n"
             "st = open_store(sys.argv[1])\n"
             "with st.run('encode', {}):\n"
             "    os._exit(9)  # no finally, no finish_run: as kill -9 leaves it\n")
    done = subprocess.run([sys.executable, "-c", crash, str(toy)], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.returncode == 9
    with open_store(toy, read_only=True) as st:  # a reader changes nothing
        assert st.catalog.query("SELECT status FROM runs WHERE command = 'encode'") == [("running",)]
    with open_store(toy) as st:
        (status, finished, failures), = st.catalog.query("SELECT status, finished_at, failures FROM runs WHERE command = 'encode'")
        assert status == "interrupted" and finished is not None and "killed or crashed" in failures
        with st.run("index", {}):
            assert st.catalog.close_dead_runs() == 0  # this process's own run is alive
            assert st.catalog.query("SELECT status FROM runs WHERE command = 'index'") == [("running",)]


# -- the REST service ---------------------------------------------------------------------------------
def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.fixture(scope="module")
def served(served_store):
    from embedstore.service.app import create_app
    from embedstore.service.settings import Settings
    from tests.servers import serving

    with open_store(served_store, read_only=True) as st:
        videos = st.videos()
    with serving(create_app(served_store, Settings(api_token="tok"))) as url:
        yield url, videos


def _client(url, token="tok"):
    import httpx

    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"} if token else {})


def test_rest_refuses_every_probe_alike(served):
    url, videos = served
    with _client(url) as c:
        for probe in PROBES + [f"(SELECT substr(value,1,1) FROM meta WHERE key='salt') = '{g}'" for g in "0123456789abcdef"]:
            response = c.post("/search", json={"encoder": "r3d", "k": 3, "query": {"video_id": videos[0]["video_id"]},
                                               "where": probe})
            assert response.status_code == 400 and response.json()["error"]["code"] == "bad_input", (probe, response.text)


def test_no_rest_body_carries_a_server_path(served, served_store):
    url, videos = served
    video = videos[0]
    with _client(url) as c, open(video["source_path"], "rb") as fh:
        clip = fh.read()
        bodies = [c.get("/health").json(), c.get("/encoders").json(), c.get(f"/videos/{video['video_id']}").json(),
                  c.post("/search", json={"encoder": "r3d", "k": 5, "query": {"video_id": video["video_id"]}}).json(),
                  c.post("/search", json={"encoder": "r3d", "k": 5, "query": {"video_id": video["video_id"]},
                                          "where": "split IS NOT NULL", "same_patient": True}).json(),
                  c.post("/search/video", files={"file": ("clip.avi", clip)}, data={"encoder": "r3d", "k": "3"}).json(),
                  c.post("/similarity", json={"encoder": "r3d", "a": videos[0]["video_id"], "b": videos[1]["video_id"]}).json(),
                  c.post("/similarity/videos", files={"a": ("a.avi", clip), "b": ("b.avi", clip)}, data={"encoder": "r3d"}).json(),
                  c.get("/views/r3d", params={"method": "pca"}).json(),
                  c.get("/videos/nope").json(), c.post("/search", json={"encoder": "nope", "query": {"text": "x"}}).json()]
    assert bodies[3]["results"] and all(h["metadata"]["source_path"] is None for h in bodies[3]["results"])
    found = [s for body in bodies for s in _strings(body)
             if s.startswith("/") or "/tmp" in s or str(served_store) in s or s.startswith("~")]
    assert found == []


def test_trusted_local_use_may_show_paths(served_store):
    from embedstore.service.settings import Settings
    from embedstore.service.state import ServiceState

    assert Settings.from_env({"EMBEDSTORE_EXPOSE_SOURCE_PATHS": "true"}).expose_source_paths is True
    with pytest.raises(BadInput, match="EMBEDSTORE_EXPOSE_SOURCE_PATHS"):
        Settings.from_env({"EMBEDSTORE_EXPOSE_SOURCE_PATHS": "maybe"})
    state = ServiceState(served_store, Settings(expose_source_paths=True))
    try:
        video_id = state.store.videos()[0]["video_id"]
        assert state.video(video_id)["metadata"]["source_path"].startswith("/")
    finally:
        state.close()
    from types import SimpleNamespace

    private = SimpleNamespace(settings=Settings(), store=SimpleNamespace(path=served_store))
    assert ServiceState.public_path(private, str(served_store / "clips" / "a.avi")) == "clips/a.avi"
    assert ServiceState.public_path(private, "/srv/MRN-123/a.avi") is None


def test_health_without_the_token_says_only_ok(served):
    url, videos = served
    with _client(url, token=None) as anonymous, _client(url, token="wrong") as wrong, _client(url) as c:
        assert anonymous.get("/health").json() == {"status": "ok"}
        assert wrong.get("/health").json() == {"status": "ok"}
        health = c.get("/health").json()
    assert health["status"] == "ok" and health["videos"] == len(videos) and health["encoders"] == ["r3d"]


# -- bounded work ------------------------------------------------------------------------------------
def test_a_filter_is_evaluated_once_per_searcher(toy, monkeypatch):
    from embedstore.index import search as search_module

    calls = []
    real = search_module.allowed_rows
    monkeypatch.setattr(search_module, "allowed_rows", lambda *a: calls.append(a[3]) or real(*a))
    with open_store(toy, read_only=True) as st:
        searcher = Searcher(st, "toy")
        first = searcher.search_id("v1", k=3, where="split = 'TEST'")
        again = searcher.search_vector(np.ones(4), k=2, where="split = 'TEST'")
        searcher.search_id("v1", k=3, where="ef < 24")
    assert calls == ["split = 'TEST'", "ef < 24"] and first.filtered_out == again.filtered_out == 4


def test_duckdb_work_past_its_budget_is_interrupted():
    import time

    import duckdb

    from embedstore.store.expressions import deadline

    con = duckdb.connect()
    start = time.perf_counter()
    with pytest.raises(BadInput, match="ran past its 0.3 s budget"):
        with deadline(con, 0.3, "--where 'x'"):
            con.sql("SELECT count(*) FROM range(1000000000) a, range(100000) b WHERE a.range + b.range = 7").fetchall()
    assert time.perf_counter() - start < 5


def test_a_costly_filter_never_holds_up_another_clients_id_search(served_store, monkeypatch):
    """The filter runs beside the search lane and is interrupted at its budget; id searches meanwhile stay fast."""
    import threading
    import time

    from embedstore.index import search as search_module
    from embedstore.service.app import create_app
    from embedstore.service.settings import Settings
    from embedstore.store.expressions import check, deadline
    from tests.servers import serving

    def costly(catalog, encoder, target, where, timeout_s):  # a filter that passed the check yet costs a lot
        check(where, target)
        with catalog.con.cursor() as cursor, deadline(cursor, timeout_s, f"--where {where!r}"):
            cursor.sql("SELECT count(*) FROM range(1000000000) a, range(100000) b WHERE a.range + b.range = 7").fetchall()

    monkeypatch.setattr(search_module, "allowed_rows", costly)
    with open_store(served_store, read_only=True) as st:
        video_id = st.videos()[0]["video_id"]
    settings = Settings(filter_timeout_s=2.0, request_timeout_s=6.0)
    with serving(create_app(served_store, settings)) as url, _client(url, None) as c, _client(url, None) as other:
        query = {"encoder": "r3d", "k": 3, "query": {"video_id": video_id}}
        assert c.post("/search", json=query).status_code == 200  # warm
        answered: list = []

        def slow() -> None:
            start = time.perf_counter()
            answered.append(other.post("/search", json={**query, "where": "ef > 0"}))
            answered.append(time.perf_counter() - start)

        thread = threading.Thread(target=slow)
        thread.start()
        latencies = []
        while thread.is_alive():
            start = time.perf_counter()
            assert c.post("/search", json=query).status_code == 200
            latencies.append(time.perf_counter() - start)
        thread.join()
    response, took = answered
    assert response.status_code == 400 and "budget" in response.json()["error"]["message"]
    assert 1.5 < took < settings.request_timeout_s
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"id searches during the costly filter: {len(latencies)}, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
          f"filter answered in {took:.2f} s")
    assert len(latencies) > 20 and p99 < 0.1, (len(latencies), p99, latencies[-3:])
