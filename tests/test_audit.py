"""`embedstore audit` on a phantom store with planted leakage, and on released R3D-v0-format vectors served on loopback.

Planted in store A (6 patients x 3 videos, random-init r3d, Flat index): one clip remuxed into another
container (same decoded frames, other bytes), two clips re-encoded as H.264 MP4, each copy in another
split than its original, and one patient's video moved to another split. Store B (against): a byte
copy of an A video, an H.264 re-encoding of another, and two unrelated videos. Each is found, with
these counts and nothing else above the chosen threshold.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from embedstore.analysis.audit import apply_split, audit
from embedstore.cli import app
from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom import make_phantom
from embedstore.encode import encode_store
from embedstore.encoders import get_encoder
from embedstore.errors import BadInput, NotFound
from embedstore.index.build import build_index
from embedstore.store import open_store
from embedstore.video.read import read_video
from embedstore.video.write import write_video

SAMPLE = 4  # videos re-encoded to choose the threshold (the default is 8; fewer keeps the test short)


def remux(src: Path, dst: Path) -> Path:
    """The same compressed frames in another container (no re-encoding): other bytes, same decoded frames."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return dst


def reencode(src: Path, dst: Path) -> Path:
    video = read_video(src)
    return write_video(dst, video.frames, fps=video.fps, codec="libx264")


def other_split(split: str) -> str:
    return "TEST" if split != "TEST" else "TRAIN"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("audit")
    make_phantom(root / "cohort", patients=6, videos_per_patient=3, seed=5, frames=32)
    make_phantom(root / "strangers", patients=2, videos_per_patient=1, seed=9, frames=32)
    with open(root / "cohort" / "FileList.csv") as fh:
        rows = list(csv.DictReader(fh))
    video = {r["FileName"]: root / "cohort" / "Videos" / f"{r['FileName']}.avi" for r in rows}
    split = {r["FileName"]: r["Split"] for r in rows}
    name = [r["FileName"] for r in rows]
    copies = root / "copies"
    copies.mkdir()
    remux(video[name[0]], copies / "remuxed0.mov")
    reencode(video[name[3]], copies / "reencoded3.mp4")
    reencode(video[name[6]], copies / "reencoded6.mp4")
    theirs = root / "theirs"
    theirs.mkdir()
    shutil.copy(video[name[12]], theirs / "copy12.avi")
    reencode(video[name[15]], theirs / "reencoded15.mp4")
    for path in (root / "strangers" / "Videos").glob("*.avi"):
        shutil.copy(path, theirs / path.name)

    encoder = get_encoder("r3d", random_init=True, device="cpu")
    a, b = root / "A", root / "B"
    with open_store(a, create=True) as store:
        ingest(root / "cohort", store, progress=False)
        ingest(copies, store, progress=False)
        store.catalog.update_labels([
            {"video_id": "remuxed0", "split": other_split(split[name[0]])},
            {"video_id": "reencoded3", "split": other_split(split[name[3]])},
            {"video_id": "reencoded6", "split": other_split(split[name[6]])},
            {"video_id": name[10], "split": other_split(split[name[10]])},  # its patient now spans two splits
        ])
        encode_store(store, encoder, progress=False)
    with open_store(b, create=True) as store:
        ingest(theirs, store, progress=False)
        encode_store(store, encoder, progress=False)
    with open_store(a, read_only=True) as store:
        build_index(store, "r3d", progress=False)
    patient = next(r["PatientID"] for r in rows if r["FileName"] == name[10])
    return {"A": a, "B": b, "name": name, "patient": patient, "root": root}


@pytest.fixture(scope="module")
def result(planted):
    with open_store(planted["A"], read_only=True) as store:
        return audit(store, "r3d", against=planted["B"], sample=SAMPLE)


def pairs(items) -> set[frozenset]:
    return {frozenset((p["a"], p["b"])) for p in items}


def test_every_planted_case_is_found_and_nothing_else(result, planted):
    r, name = result.report, planted["name"]
    assert r["threshold"]["method"] == "perturbations", r["threshold"]
    assert r["videos"] == 21 and r["vectors"] == 21
    # exact: the remuxed clip (same decoded frames, other bytes); nothing shares bytes inside A
    assert [(d["kind"], {d["a"], d["b"]}) for d in r["duplicates"]] == [("frames", {name[0], "remuxed0"})]
    # near-duplicates: exactly the three planted copies, all across splits
    expected = {frozenset((name[0], "remuxed0")), frozenset((name[3], "reencoded3")), frozenset((name[6], "reencoded6"))}
    assert r["near_duplicates"]["pairs"] == 3 and r["near_duplicates"]["cross_split"] == 3
    assert pairs(r["near_duplicates"]["worst"]) == expected
    assert r["clusters"]["cross_split"] == 3
    # the patient (and its one study) spread over two splits
    assert r["patients"]["in_several_splits"] == 1 and r["patients"]["examples"][0]["patient_id"] == planted["patient"]
    assert r["studies"]["in_several_splits"] == 1
    # against B: the byte copy and the re-encoded copy; B's two strangers are not flagged
    against = r["against"]
    assert [(d["kind"], d["a"], d["b"]) for d in against["duplicates"]] == [("bytes", name[12], "copy12")]
    assert against["near_duplicates"]["pairs"] == 2
    assert pairs(against["near_duplicates"]["worst"]) == {frozenset((name[12], "copy12")), frozenset((name[15], "reencoded15"))}
    assert {k: v["total"] for k, v in r["counts"].items()} == {"patient": 1, "study": 1, "duplicate": 2, "near-duplicate": 5}
    worst = r["near_duplicates"]["worst"][0]
    assert worst["thumbnail_a"] == f"/videos/{worst['a']}/thumbnail" and worst["thumbnail_b"] == f"/videos/{worst['b']}/thumbnail"
    assert all(p["thumbnail_b"] is None for p in against["near_duplicates"]["worst"])  # B's videos are not served here


def test_threshold_separates_the_copies_from_every_other_pair(result, planted):
    """Every distinct pair (computed exhaustively here) is below the chosen threshold, every copy above it."""
    t = result.report["threshold"]["value"]
    with open_store(planted["A"], read_only=True) as store:
        ids, vectors = store.all_vectors("r3d")
    scores = vectors @ vectors.T
    planted_pairs = {frozenset(p) for p in [(planted["name"][0], "remuxed0"), (planted["name"][3], "reencoded3"),
                                            (planted["name"][6], "reencoded6")]}
    above = {frozenset((ids[i], ids[j])) for i, j in zip(*np.nonzero(np.triu(scores >= t, 1)))}
    assert above == planted_pairs
    assert "left out" in result.report["threshold"]["how"] or "lowest cosine" in result.report["threshold"]["how"]


def test_resplit_groups_patients_and_clusters_and_stratifies(result, planted):
    split = result.resplit
    with open_store(planted["A"], read_only=True) as store:
        table = store.catalog.video_table(("video_id", "patient_id", "ef"))
    by_patient: dict[str, set] = {}
    for video_id, patient in zip(table["video_id"], table["patient_id"]):
        if patient:
            by_patient.setdefault(patient, set()).add(split[video_id])
    assert all(len(s) == 1 for s in by_patient.values())
    for a, b in [(planted["name"][0], "remuxed0"), (planted["name"][3], "reencoded3")]:
        assert split[a] == split[b]
    again = audit(open_store(planted["A"], read_only=True), "r3d", threshold=result.report["threshold"]["value"]).resplit
    assert again == split  # seeded


def test_cli_fail_on_resplit_and_split_apply(planted, result, tmp_path):
    store = tmp_path / "A"
    shutil.copytree(planted["A"], store)
    t = str(result.report["threshold"]["value"])
    runner = CliRunner()
    failed = runner.invoke(app, ["audit", "--store", store, "-e", "r3d", "--threshold", t, "--fail-on", "patient",
                                 "--resplit", tmp_path / "split.csv", "--out", tmp_path / "audit.md", "-q"])
    assert failed.exit_code == 1, failed.output
    assert "audit found: patient" in failed.stderr and "| patient | 1 |" in failed.stdout
    assert (tmp_path / "audit.md").read_text().startswith("# Audit of A")
    bad = runner.invoke(app, ["audit", "--store", store, "-e", "r3d", "--fail-on", "leak"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: --fail-on 'leak'")
    applied = runner.invoke(app, ["split", "--apply", tmp_path / "split.csv", "--store", store])
    assert applied.exit_code == 0 and "split set for 21 videos" in applied.stdout, applied.output
    clean = runner.invoke(app, ["audit", "--store", store, "-e", "r3d", "--threshold", t, "--json", "-q",
                                "--fail-on", "patient,study,near-duplicate"])
    assert clean.exit_code == 0, clean.output
    counts = json.loads(clean.stdout)["counts"]
    assert counts["patient"]["total"] == counts["study"]["total"] == counts["near-duplicate"]["total"] == 0


def test_split_apply_refuses_bad_files_and_writes_nothing(planted, tmp_path):
    store_path = tmp_path / "A"
    shutil.copytree(planted["A"], store_path)
    good = f"video_id,split\n{planted['name'][1]},VAL\n"  # a valid first row that must not be applied either
    cases = {good + "nope,TRAIN\n": (NotFound, "'nope' is not in the store"),
             good + f"{planted['name'][0]},HOLDOUT\n": (BadInput, "line 3: split 'HOLDOUT'"),
             good + f"{planted['name'][0]},TEST\n{planted['name'][0]},VAL\n": (BadInput, "line 4: .* listed twice"),
             "id,fold\nx,TRAIN\n": (BadInput, "video_id and split")}
    with open_store(store_path) as store:
        before = store.catalog.video_table(("video_id", "split"))
        for text, (error, message) in cases.items():
            (tmp_path / "s.csv").write_text(text)
            with pytest.raises(error, match=message):
                apply_split(store, tmp_path / "s.csv")
        assert store.catalog.video_table(("video_id", "split")) == before


def test_rest_audit_is_the_library_report(planted, result):
    from embedstore.service.app import create_app
    from tests.servers import serving

    t = result.report["threshold"]["value"]
    with serving(create_app(planted["A"])) as url:
        response = httpx.get(f"{url}/audit", params={"encoder": "r3d", "threshold": t}, timeout=120)
        missing = httpx.get(f"{url}/audit", params={"encoder": "nope"}, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    with open_store(planted["A"], read_only=True) as store:
        local = audit(store, "r3d", threshold=t).report
    assert body["counts"] == json.loads(json.dumps(local["counts"]))
    assert body["threshold"]["method"] == "given"
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


# -- released vectors, no videos ----------------------------------------------------------------------------
from tests.test_releases import cli as release_cli, r3d_text, server  # noqa: E402,F401  (the loopback file server)

CLUSTERS = [(0, ["VAL"]), (1, ["TEST"]), (2, ["TRAIN"]), (3, ["VAL", "TEST"])]  # base row (TRAIN) -> its copies' splits


def test_released_r3d_vectors_alone_give_near_duplicate_clusters_across_splits(server, tmp_path):
    """EchoNet-style: no patient ids, no video files; planted copies (tiny noise) of 4 videos in other splits."""
    from bench.vectors import LatentMixture

    rng = np.random.default_rng(0)
    unit, _ = LatentMixture(400, centres=30, latent=8, seed=2).sample(240, seed=4)
    raw = unit * rng.uniform(4, 16, size=(len(unit), 1))
    ids = [f"0X{v:016X}" for v in rng.integers(0, 2**63, size=len(raw))]
    splits = ["TRAIN"] * len(raw)
    copies, planted = [], set()
    for base, copy_splits in CLUSTERS:
        members = [base]
        for n, split in enumerate(copy_splits):
            copies.append(raw[base] * (1 + 1e-3 * rng.standard_normal(raw.shape[1])))
            ids.append(f"0XC0P1{base:04d}{n:06d}")
            splits.append(split)
            members.append(len(ids) - 1)
        planted |= {frozenset((ids[a], ids[b])) for i, a in enumerate(members) for b in members[i + 1:]}
    raw = np.vstack([raw, copies]).astype(np.float32)
    (server.root / "echonet_embeddings.txt").write_bytes(r3d_text(ids, raw))
    with open(tmp_path / "FileList.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"])
        out.writerows([i, 30 + n % 40, 40, 100, 112, 112, 50, 100, s] for n, (i, s) in enumerate(zip(ids, splits)))
    store = tmp_path / "s"
    got = release_cli("download", server.url("echonet_embeddings.txt"), "--store", store, "--labels",
                      tmp_path / "FileList.csv", "--quiet")
    assert got.exit_code == 0, got.output
    assert release_cli("index", "--store", store, "--encoder", "r3d-v0", "--quiet").exit_code == 0
    run = release_cli("audit", "--store", store, "--encoder", "r3d-v0", "--json", "--quiet", "--fail-on", "near-duplicate")
    assert run.exit_code == 1 and isinstance(run.exception, SystemExit), repr(run.exception)
    report = json.loads(run.stdout)
    assert report["threshold"]["method"] == "vectors-only" and "vectors only" in report["threshold"]["how"]
    assert report["near_duplicates"]["pairs"] == len(planted) == 6
    assert report["near_duplicates"]["cross_split"] == 5  # row 2's copy stays in TRAIN: a pair, not leakage
    assert pairs(report["near_duplicates"]["worst"]) == {p for p in planted if "0XC0P10002000000" not in p}
    assert report["clusters"]["clusters"] == 4 and report["clusters"]["cross_split"] == 3
    assert report["clusters"]["by_splits"] == {"TEST/TRAIN": 1, "TEST/TRAIN/VAL": 1, "TRAIN/VAL": 1}
    assert report["patients"]["in_several_splits"] == 0 and report["duplicates"] == []
    # the suggested re-split keeps each cluster in one split
    resplit = audit(open_store(store, read_only=True), "r3d-v0").resplit
    for pair in planted:
        a, b = tuple(pair)
        assert resplit[a] == resplit[b]


def test_perturbations_are_small_and_take_odd_frame_sizes(tmp_path):
    from embedstore.analysis.audit import CROP_SHIFT_PX, FRAME_OFFSET, perturbations
    from embedstore.video.read import Video

    frames = np.random.default_rng(0).integers(0, 255, size=(12, 33, 35, 3), dtype=np.uint8)
    out = perturbations(Video(frames=frames, fps=50.0, format="avi"), tmp_path)
    shifted, recompressed, trimmed = out.values()
    assert list(out) == [f"crop shift {CROP_SHIFT_PX} px", "re-compression (H.264)", f"frame offset {FRAME_OFFSET}"]
    np.testing.assert_array_equal(shifted.frames[:, :-CROP_SHIFT_PX, :-CROP_SHIFT_PX], frames[:, CROP_SHIFT_PX:, CROP_SHIFT_PX:])
    assert recompressed.frames.shape == (12, 32, 34, 3)  # H.264 4:2:0 wants even sides
    np.testing.assert_array_equal(trimmed.frames, frames[FRAME_OFFSET:])
