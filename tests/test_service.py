"""The REST service against a real uvicorn server on 127.0.0.1: every route, the CLI agreeing, bad input, limits."""
from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedstore.cli import app as cli
from embedstore.errors import BadInput
from embedstore.service.app import create_app
from embedstore.service.settings import Settings
from embedstore.service.state import ServiceState, WorkerPool
from embedstore.store import open_store
from embedstore.video.read import read_video
from tests.dicom_files import write_dicom
from tests.servers import serving

PATIENTS = 3  # the served_store fixture keeps 3 of the cohort's 20 patients, x 3 videos
UPLOAD_LIMIT = 2 * 1024 * 1024




@pytest.fixture(scope="session")
def service_store(served_store) -> Path:
    return served_store


@pytest.fixture(scope="session")
def videos(service_store) -> list[dict]:
    with open_store(service_store, read_only=True) as store:
        return store.videos()


@pytest.fixture(scope="session")
def base_url(service_store) -> Iterator[str]:
    with serving(create_app(service_store, Settings(max_upload_bytes=UPLOAD_LIMIT))) as url:
        yield url


@pytest.fixture()
def client(base_url) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as c:
        yield c


def error_of(response: httpx.Response, status: int) -> dict:
    """The JSON error body, after checking its status and shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


async def until(condition, timeout_s: float = 30.0) -> None:
    """Wait for a condition the test can observe (no fixed sleep), within a generous bound."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the condition"
        await asyncio.sleep(0.01)


def cli_json(*args: str) -> dict:
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    return json.loads(out.stdout)


# -- the routes ---------------------------------------------------------------------------------
def test_health_encoders_and_video_record(client, videos):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["videos"] == 3 * PATIENTS
    assert health["encoders"] == ["r3d"] and health["indexes_loaded"] == ["r3d.videos"]
    (r3d,) = client.get("/encoders").json()["encoders"]
    assert (r3d["name"], r3d["dim"], r3d["random_init"]) == ("r3d", 400, True)
    assert r3d["vectors"] == {"videos": 3 * PATIENTS} and r3d["indexed"] == ["videos"]
    record = client.get(f"/videos/{videos[0]['video_id']}").json()
    assert record["video_id"] == videos[0]["video_id"] and record["encoders"] == ["r3d"]
    assert record["metadata"]["patient_id"] == videos[0]["patient_id"]


def test_thumbnails_still_and_animated(client, videos):
    still = client.get(f"/videos/{videos[0]['video_id']}/thumbnail")
    assert still.status_code == 200 and still.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(still.content))
    assert image.format == "PNG" and image.size == (videos[0]["width"], videos[0]["height"])
    moving = client.get(f"/videos/{videos[0]['video_id']}/thumbnail", params={"animated": True})
    assert moving.status_code == 200 and moving.headers["content-type"] == "image/gif"
    gif = Image.open(io.BytesIO(moving.content))
    assert gif.format == "GIF" and gif.n_frames > 1 and gif.info.get("loop") == 0
    assert error_of(client.get("/videos/nope/thumbnail"), 404)["code"] == "not_found"


def test_search_by_id_and_by_vector_match_the_cli(client, service_store, videos, tmp_path):
    video_id, store = videos[0]["video_id"], str(service_store)
    rest = client.post("/search", json={"encoder": "r3d", "k": 5, "query": {"video_id": video_id},
                                        "where": "split != 'TEST'"}).json()
    cli_out = cli_json("search", "--store", store, "-e", "r3d", "--id", video_id, "-k", "5", "--where", "split != 'TEST'")
    assert [h["id"] for h in rest["results"]] == [h["id"] for h in cli_out["hits"]]
    assert [h["score"] for h in rest["results"]] == pytest.approx([h["score"] for h in cli_out["hits"]], abs=1e-6)
    assert video_id not in {h["id"] for h in rest["results"]} and rest["filtered_out"] == cli_out["filtered_out"]
    assert rest["encoder_provenance"]["random_init"] is True and rest["ef_estimate"] == cli_out["ef_estimate"]

    with open_store(service_store, read_only=True) as st:
        vector = st.get_vectors("r3d", [videos[1]["video_id"]])[0]
    np.save(tmp_path / "q.npy", vector)
    rest = client.post("/search", json={"encoder": "r3d", "k": 4, "query": {"vector": vector.tolist()}}).json()
    cli_out = cli_json("search", "--store", store, "-e", "r3d", "--vector", str(tmp_path / "q.npy"), "-k", "4")
    assert [h["id"] for h in rest["results"]] == [h["id"] for h in cli_out["hits"]]
    assert [h["score"] for h in rest["results"]] == pytest.approx([h["score"] for h in cli_out["hits"]], abs=1e-6)
    assert rest["results"][0]["id"] == videos[1]["video_id"] and [h["rank"] for h in rest["results"]] == [1, 2, 3, 4]


def test_same_patient_search_groups_by_patient(client, videos):
    body = {"encoder": "r3d", "k": 3, "query": {"video_id": videos[0]["video_id"]}, "same_patient": True}
    results = client.post("/search", json=body).json()["results"]
    patients = [h["metadata"]["patient_id"] for h in results]
    assert len(set(patients)) == 3 and all(h["count"] >= 1 for h in results)


def test_uploaded_avi_is_searched_like_the_cli(client, service_store, videos):
    video = videos[2]
    with open(video["source_path"], "rb") as fh:
        response = client.post("/search/video", files={"file": ("clip.avi", fh)}, data={"encoder": "r3d", "k": "3"})
    assert response.status_code == 200, response.text
    rest = response.json()
    cli_out = cli_json("search", "--store", str(service_store), "-e", "r3d", "--video", video["source_path"], "-k", "3")
    assert [h["id"] for h in rest["results"]] == [h["id"] for h in cli_out["hits"]]
    assert rest["results"][0]["id"] == video["video_id"] and rest["query"]["stored_id"] == video["video_id"]
    assert rest["query"]["path"] == "clip.avi"  # the client's name, never the server's temp file


def test_uploaded_dicom_without_suffix_finds_its_source_video(client, videos, tmp_path):
    """The DICOM holds the AVI's decoded frames, so the re-embedded query lands on that video."""
    video = videos[3]
    dicom = write_dicom(tmp_path / "IM0001", read_video(video["source_path"]).frames, fps=video["fps"])
    with open(dicom, "rb") as fh:
        response = client.post("/search/video", files={"file": ("IM0001", fh, "application/dicom")},
                               data={"encoder": "r3d", "k": "2"})
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]
    assert top["id"] == video["video_id"] and top["score"] > 0.99  # re-embedded (on a GPU in lower precision)
    assert response.json()["query"]["stored_id"] is None


def test_similarity_by_ids_and_by_uploads(client, service_store, videos):
    from embedstore.index.similar import similar

    a, b = videos[0], videos[1]
    rest = client.post("/similarity", json={"encoder": "r3d", "a": a["video_id"], "b": b["video_id"]}).json()
    with open_store(service_store, read_only=True) as st:
        lib = similar(st, "r3d", a["video_id"], b["video_id"])
    assert rest == lib and 0 <= rest["same_patient_probability"] <= 1
    with open(a["source_path"], "rb") as fa, open(b["source_path"], "rb") as fb:
        response = client.post("/similarity/videos", files={"a": ("a.avi", fa), "b": ("b.avi", fb)}, data={"encoder": "r3d"})
    assert response.status_code == 200, response.text
    assert response.json()["cosine"] == rest["cosine"] and (response.json()["a"], response.json()["b"]) == ("a.avi", "b.avi")
    # A request field is never a server path: an existing file is just an unknown id.
    answer = client.post("/similarity", json={"encoder": "r3d", "a": a["video_id"], "b": a["source_path"]})
    assert error_of(answer, 404)["code"] == "not_found" and a["source_path"] not in answer.text


def test_views(client, videos):
    view = client.get("/views/r3d", params={"method": "pca"}).json()
    assert sorted(view["ids"]) == sorted(v["video_id"] for v in videos) and len(view["x"]) == len(view["y"]) == len(videos)
    assert view["method"] == "pca" and view["stale"] is False and "ef" in view["labels"]
    assert error_of(client.get("/views/r3d", params={"method": "umap"}), 404)["code"] == "not_found"
    assert error_of(client.get("/views/r3d", params={"method": "tsne"}), 422)["code"] == "invalid_request"


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, status, code", [
    ({"query": {"vector": [0.1] * 7}}, 400, "bad_input"),  # wrong dimension
    ({"query": {"vector": [0.0] * 400}}, 400, "bad_input"),  # zero vector: cosine undefined
    ({"query": {"video_id": "nope"}}, 404, "not_found"),
    ({"encoder": "nope"}, 404, "not_found"),
    ({"k": 0}, 422, "invalid_request"),
    ({"k": 10**9}, 400, "bad_input"),
    ({"where": "ef <<< 3"}, 400, "bad_input"),
    ({"where": "1=1; DROP TABLE videos"}, 400, "bad_input"),
    ({"query": {"video_id": "a", "text": "b"}}, 422, "invalid_request"),
    ({"query": {}}, 422, "invalid_request"),
    ({"nearest": 3}, 422, "invalid_request"),
    ({"target": "frames"}, 422, "invalid_request"),
    ({"query": {"text": "dilated left ventricle"}}, 400, "bad_input"),  # r3d has no text tower
], ids=["dimension", "zero", "unknown-id", "unknown-encoder", "k0", "k1e9", "where-syntax", "where-two-statements",
        "two-queries", "no-query", "unknown-field", "bad-target", "text-on-r3d"])
def test_bad_search_requests(client, videos, service_store, changes, status, code):
    """Each body is a valid search by a stored id but for the one change."""
    response = client.post("/search", json={"encoder": "r3d", "k": 3, "query": {"video_id": videos[0]["video_id"]}, **changes})
    assert error_of(response, status)["code"] == code
    assert str(service_store) not in response.text and "Traceback" not in response.text


def test_nan_vector_and_malformed_json(client):
    nan = b'{"encoder": "r3d", "k": 3, "query": {"vector": [NaN' + b", 0.5" * 399 + b"]}}"
    assert error_of(client.post("/search", content=nan, headers={"content-type": "application/json"}), 400)["code"] == "bad_input"
    broken = client.post("/search", content=b'{"encoder": ', headers={"content-type": "application/json"})
    assert error_of(broken, 422)["code"] == "invalid_request"
    huge = client.post("/search", content=b" " * (2 * 1024 * 1024), headers={"content-type": "application/json"})
    assert error_of(huge, 413)["code"] == "too_large"


def test_bad_uploads(client, videos):
    form = {"encoder": "r3d", "k": "3"}
    text = client.post("/search/video", files={"file": ("notes.txt", b"not a video at all")}, data=form)
    assert error_of(text, 415)["code"] == "bad_video"
    fake = client.post("/search/video", files={"file": ("fake.avi", b"RIFF\0\0\0\0AVI junk" * 20)}, data=form)
    assert error_of(fake, 415)["code"] == "bad_video" and "fake.avi" in fake.text and "/tmp" not in fake.text
    big = client.post("/search/video", files={"file": ("big.avi", b"\0" * (UPLOAD_LIMIT + 1))}, data=form)
    assert error_of(big, 413)["code"] == "too_large"
    with open(videos[0]["source_path"], "rb") as fh:
        k_zero = client.post("/search/video", files={"file": ("a.avi", fh)}, data={**form, "k": "0"})
    assert error_of(k_zero, 422)["code"] == "invalid_request"
    missing = client.post("/search/video", data=form, files={"other": ("a.txt", b"x")})
    assert error_of(missing, 400)["code"] == "bad_input"
    not_multipart = client.post("/search/video", json=form)
    assert error_of(not_multipart, 400)["code"] == "bad_input"


def test_internal_error_says_nothing_about_the_server(client, monkeypatch, service_store):
    def broken(self, video_id):
        raise RuntimeError(f"Traceback (most recent call last): {service_store}/catalog.duckdb is on fire")

    monkeypatch.setattr(ServiceState, "video", broken)
    response = client.get("/videos/anything")
    assert error_of(response, 500)["code"] == "internal_error"
    assert "/" not in response.text and "Traceback" not in response.text and "fire" not in response.text


# -- settings, token, limits, capacity, time, the command ------------------------------------------
def test_settings_come_from_the_environment_then_arguments():
    env = {"EMBEDSTORE_MAX_K": "5", "EMBEDSTORE_API_TOKEN": "t", "EMBEDSTORE_REQUEST_TIMEOUT_S": "2.5"}
    settings = Settings.from_env(env, max_frames=64, host=None)
    assert (settings.max_k, settings.api_token, settings.request_timeout_s, settings.max_frames) == (5, "t", 2.5, 64)
    assert settings.host == "127.0.0.1"
    with pytest.raises(BadInput, match="EMBEDSTORE_MAX_K"):
        Settings.from_env({"EMBEDSTORE_MAX_K": "many"})
    with pytest.raises(BadInput, match="max_upload_bytes must be positive"):
        Settings(max_upload_bytes=0)


def test_frame_limit_refuses_long_uploads_before_any_model(service_store, videos):
    with serving(create_app(service_store, Settings(max_frames=8))) as url:
        with open(videos[0]["source_path"], "rb") as fh:
            response = httpx.post(f"{url}/search/video", files={"file": ("long.avi", fh)}, data={"encoder": "r3d"}, timeout=60)
    assert error_of(response, 415)["code"] == "bad_video" and "more than 8 frames" in response.text


def test_token_guards_every_route_but_health(service_store, videos):
    app = create_app(service_store, Settings(api_token="s3cret"))
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as c:
        assert c.get("/health").status_code == 200
        calls = [("GET", "/encoders", {}), ("GET", f"/videos/{videos[0]['video_id']}", {}),
                 ("GET", f"/videos/{videos[0]['video_id']}/thumbnail", {}), ("GET", "/views/r3d", {}),
                 ("POST", "/search", {"json": {"encoder": "r3d", "query": {"video_id": videos[0]["video_id"]}}}),
                 ("POST", "/search/video", {"files": {"file": ("a.avi", b"x")}, "data": {"encoder": "r3d"}}),
                 ("POST", "/similarity", {"json": {"encoder": "r3d", "a": "x", "b": "y"}}),
                 ("POST", "/similarity/videos", {"files": {"a": ("a.avi", b"x"), "b": ("b.avi", b"y")}})]
        for method, path, kwargs in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
                response = c.request(method, path, headers=headers, **kwargs)
                assert error_of(response, 401)["code"] == "unauthorized", (method, path)
                assert response.headers["www-authenticate"] == "Bearer"
        ok = c.get("/encoders", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json()["encoders"][0]["name"] == "r3d"


def test_full_queue_answers_503_with_retry_after_and_slow_requests_time_out(service_store, videos):
    """One worker, no queue: a slow upload holds the only slot; another request is refused at once."""
    settings = Settings(worker_threads=1, queue_size=0, request_timeout_s=1.5, retry_after_s=7)
    video_path = f"/videos/{videos[0]['video_id']}"
    app = create_app(service_store, settings)

    async def slow_body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="slow.avi"\r\n\r\n'
        for _ in range(60):
            await asyncio.sleep(0.05)
            yield b"\0" * 1024

    async def scenario(url: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            upload = asyncio.create_task(c.post("/search/video", content=slow_body(),
                                                headers={"content-type": "multipart/form-data; boundary=b"}))
            await until(lambda: app.state.service.pool.free == 0)  # the upload holds the only slot
            refused = await c.get(video_path)
            timed_out = await upload
            return refused, timed_out, await c.get(video_path)

    with serving(app) as url:
        refused, timed_out, later = asyncio.run(scenario(url))
    assert error_of(refused, 503)["code"] == "busy" and refused.headers["retry-after"] == "7"
    assert error_of(timed_out, 503)["code"] == "timeout" and timed_out.headers["retry-after"] == "7"
    assert later.status_code == 200  # the slot came back


def test_searches_run_on_one_thread_of_their_own_beside_busy_upload_workers():
    """A decode that holds every media thread does not hold up a search; searches share one store thread."""
    pool = WorkerPool(Settings(worker_threads=1))
    started, release = threading.Event(), threading.Event()

    def decode() -> bool:
        started.set()
        return release.wait(30)

    async def scenario() -> set[str]:
        decoding = asyncio.ensure_future(pool.run("media", decode))
        assert await asyncio.to_thread(started.wait, 30)  # the only media thread is now taken
        names = await asyncio.wait_for(asyncio.gather(
            *(pool.run("search", lambda: threading.current_thread().name) for _ in range(8))), 5)
        assert not decoding.done()
        release.set()
        assert await decoding
        return set(names)

    try:
        names = asyncio.run(scenario())
    finally:
        release.set()
        pool.close()
    assert len(names) == 1 and names.pop().startswith("embedstore-search")


def test_id_searches_are_answered_while_an_upload_is_embedded(base_url, videos, tmp_path):
    """No lock holds searches behind an upload: while a new video is decoded and embedded (most of the
    upload's time), id queries keep coming back, never pausing for half of it."""
    query = {"encoder": "r3d", "k": 3, "query": {"video_id": videos[0]["video_id"]}}
    clip = Path(videos[1]["source_path"]).read_bytes() + b"\0" * 16  # other bytes: not a stored file, so embedded

    async def scenario() -> tuple[httpx.Response, float, float, list[float]]:
        answered: list[float] = []
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as c:
            async def searches() -> None:
                while True:
                    assert (await c.post("/search", json=query)).status_code == 200
                    answered.append(time.perf_counter())

            task = asyncio.ensure_future(searches())
            await until(lambda: answered or task.done())  # searches are coming back
            start = time.perf_counter()
            upload = await c.post("/search/video", files={"file": ("new.avi", clip)}, data={"encoder": "r3d", "k": "3"})
            end = time.perf_counter()
            task.cancel()
        return upload, start, end, answered

    upload, start, end, answered = asyncio.run(scenario())
    assert upload.status_code == 200 and upload.json()["query"]["stored_id"] is None, upload.text
    times = [start, *(t for t in answered if start < t < end), end]
    longest_pause = max(b - a for a, b in zip(times, times[1:]))
    assert longest_pause < 0.5 * (end - start), (longest_pause, end - start, len(times))


def test_serve_command_binds_loopback_and_answers(service_store, tmp_path):
    out = CliRunner().invoke(cli, ["serve", "--store", str(tmp_path / "none")])
    assert out.exit_code == 2 and out.stderr.startswith("error: no store at")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "embedstore", "serve", "--store", str(service_store), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.status_code == 200 and health.json()["encoders"] == ["r3d"]
    finally:
        proc.terminate()
        log = proc.communicate(timeout=30)[1]
    assert f"Uvicorn running on http://127.0.0.1:{port}" in log, log


def test_chunked_bodies_are_held_to_the_limits(service_store, videos):
    """Without a Content-Length the limits count the bytes as they stream: a JSON body, a multipart upload."""
    settings = Settings(max_body_bytes=64 * 1024, max_upload_bytes=256 * 1024)

    def chunks(head: bytes, n: int, tail: bytes = b"") -> Iterator[bytes]:
        yield head
        for _ in range(n):
            yield b" " * 16 * 1024
        yield tail

    form = ('--b\r\nContent-Disposition: form-data; name="encoder"\r\n\r\nr3d\r\n'
            '--b\r\nContent-Disposition: form-data; name="file"; filename="big.avi"\r\n\r\n').encode()
    search = json.dumps({"encoder": "r3d", "k": 2, "query": {"video_id": videos[0]["video_id"]}}).encode()
    with serving(create_app(service_store, settings)) as url, httpx.Client(base_url=url, timeout=60) as c:
        small = c.post("/search", content=chunks(search[:-1], 2, search[-1:]), headers={"content-type": "application/json"})
        big = c.post("/search", content=chunks(search[:-1], 5, search[-1:]), headers={"content-type": "application/json"})
        upload = c.post("/search/video", content=chunks(form, 20, b"\r\n--b--\r\n"),
                        headers={"content-type": "multipart/form-data; boundary=b"})
    assert "content-length" not in big.request.headers and big.request.headers["transfer-encoding"] == "chunked"
    assert small.status_code == 200 and small.json()["results"], small.text  # counted, not refused for being chunked
    assert error_of(big, 413)["code"] == "too_large" and "65536 bytes" in big.text
    assert error_of(upload, 413)["code"] == "too_large" and "big.avi is over this service's upload limit" in upload.text
