"""The phantom cohort: real files in EchoNet's layout, labels that match the pixels, patients that
resemble themselves more than others."""
from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation, binary_erosion
from scipy.stats import spearmanr

from embedstore.datasets.phantom import fan_mask, make_phantom, split_patients
from embedstore.errors import BadInput
from embedstore.video.read import read_video

ECHONET_COLUMNS = ["FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split"]
DARK = 40  # grey level below which a pixel counts as blood


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict:
    return make_phantom(tmp_path_factory.mktemp("phantom"), seed=1)


@pytest.fixture(scope="module")
def rows(cohort) -> list[dict]:
    return _read_csv(cohort["file_list"])


@pytest.fixture(scope="module")
def tracings(cohort) -> dict[str, dict[int, np.ndarray]]:
    """FileName (with .avi) -> {frame: rows [21, 4]}, frames in file order (ES first, then ED)."""
    out: dict[str, dict[int, list]] = defaultdict(dict)
    for rec in _read_csv(cohort["volume_tracings"]):
        out[rec["FileName"]].setdefault(int(rec["Frame"]), []).append([float(rec[k]) for k in ("X1", "Y1", "X2", "Y2")])
    return {name: {frame: np.array(trace) for frame, trace in frames.items()} for name, frames in out.items()}


@pytest.fixture(scope="module")
def grey(cohort, rows) -> dict[str, np.ndarray]:
    """The first ten patients' videos decoded through the project's reader, first channel [T, H, W]."""
    patients = sorted({r["PatientID"] for r in rows})[:10]
    out = {}
    for rec in (r for r in rows if r["PatientID"] in patients):
        video = read_video(cohort["videos_dir"] / f"{rec['FileName']}.avi")
        assert np.abs(video.frames[..., 0].astype(int) - video.frames[..., 2]).max() <= 2  # grey in RGB
        out[rec["FileName"]] = video.frames[..., 0]
    return out


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _disk_volume(trace: np.ndarray, spacing_cm: float) -> float:
    """Method of disks from a tracing: first row the long axis, then one chord per disk."""
    length = np.hypot(trace[0, 2] - trace[0, 0], trace[0, 3] - trace[0, 1])
    diameters = np.hypot(trace[1:, 2] - trace[1:, 0], trace[1:, 3] - trace[1:, 1])
    return float(np.sum(np.pi * (diameters / 2) ** 2) * length / len(diameters) * spacing_cm ** 3)


def _polygon(trace: np.ndarray, size: int) -> np.ndarray:
    """The traced cavity as a mask: down the left chord ends, back up the right ones (EchoNet's way)."""
    points = [(x, y) for x, y in trace[1:, :2]] + [(x, y) for x, y in trace[:0:-1, 2:]]
    image = Image.new("1", (size, size))
    ImageDraw.Draw(image).polygon(points, fill=1)
    return np.array(image, dtype=bool)


def test_layout_counts_and_splits(cohort, rows):
    with open(cohort["file_list"]) as fh:
        assert fh.readline().strip().split(",") == ECHONET_COLUMNS + ["PatientID", "StudyID"]
    assert len(rows) == 60 and cohort["videos"] == 60
    assert all(re.fullmatch(r"0X[0-9A-F]{16}", r["FileName"]) for r in rows)
    assert len({r["FileName"] for r in rows}) == 60
    per_patient = defaultdict(list)
    for r in rows:
        per_patient[r["PatientID"]].append(r)
        assert (cohort["videos_dir"] / f"{r['FileName']}.avi").is_file()
        assert (r["FrameHeight"], r["FrameWidth"], r["FPS"], r["NumberOfFrames"]) == ("112", "112", "50", "128")
    assert len(per_patient) == 20 and all(len(v) == 3 for v in per_patient.values())
    assert all(len({r["Split"] for r in v}) == 1 and len({r["StudyID"] for r in v}) == 1 for v in per_patient.values())
    splits = [v[0]["Split"] for v in per_patient.values()]
    assert {s: splits.count(s) for s in ("TRAIN", "VAL", "TEST")} == {"TRAIN": 16, "VAL": 2, "TEST": 2}
    for split in ("VAL", "TEST"):  # stratified: a classifier can be selected on VAL and scored on TEST
        assert {float(v[0]["EF"]) < 50 for v in per_patient.values() if v[0]["Split"] == split} == {True, False}
    reports = _read_csv(cohort["reports"])
    assert list(reports[0]) == ["report_id", "study_id", "patient_id", "text"]
    assert sorted(r["study_id"] for r in reports) == sorted({r["StudyID"] for r in rows})


@pytest.mark.parametrize("patients", [1, 2, 3, 4, 5, 8, 12, 16, 20, 30, 60, 101])
def test_splits_are_stratified_by_ef_class(patients):
    low = set(range(0, patients, 3))  # about a third, as in the cohort
    split = split_patients(patients, low, np.random.default_rng(patients))
    n_held = max(1, round(patients / 8)) if patients >= 4 else round(patients / 8)
    assert split.count("VAL") == split.count("TEST") == n_held
    for name in ("VAL", "TEST"):
        classes = {p in low for p in range(patients) if split[p] == name}
        if n_held >= 2:
            assert classes == {True, False}
    assert {p in low for p in range(patients) if split[p] == "TRAIN"} == {p in low for p in range(patients)}


def test_labels_are_consistent_and_realistic(rows):
    ef, esv, edv = (np.array([float(r[k]) for r in rows]) for k in ("EF", "ESV", "EDV"))
    np.testing.assert_allclose(ef, 100 * (edv - esv) / edv, atol=0.01)
    assert 10 <= ef.min() and ef.max() <= 80
    assert 40 <= edv.min() and edv.max() <= 300
    assert 0.25 <= np.mean(ef < 50) <= 0.45  # both classes, minority below 50%


def test_tracings_give_the_file_list_volumes(cohort, rows, tracings):
    spacing = cohort["pixel_spacing_cm"]
    for r in rows:
        frames = tracings[f"{r['FileName']}.avi"]
        assert len(frames) == 2 and all(t.shape == (21, 4) for t in frames.values())
        (es, es_trace), (ed, ed_trace) = frames.items()
        assert 0 <= min(es, ed) and max(es, ed) < 128
        assert _disk_volume(es_trace, spacing) == pytest.approx(float(r["ESV"]), rel=0.05)
        assert _disk_volume(ed_trace, spacing) == pytest.approx(float(r["EDV"]), rel=0.05)


def test_videos_decode_with_the_reader(cohort, rows):
    video = read_video(cohort["videos_dir"] / f"{rows[0]['FileName']}.avi")
    assert video.frames.shape == (128, 112, 112, 3) and video.frames.dtype == np.uint8
    assert video.fps == pytest.approx(50.0)


def test_cavity_pixels_shrink_with_ejection_fraction(rows, tracings, grey):
    """Count blood-dark pixels inside the end-diastolic tracing: fewer at end-systole, and the drop
    follows EF across videos, so the labels describe the pixels."""
    drops, efs = [], []
    for r in (r for r in rows if r["FileName"] in grey):
        (es, _), (ed, ed_trace) = tracings[f"{r['FileName']}.avi"].items()
        region = binary_erosion(_polygon(ed_trace, 112), iterations=1)
        video = grey[r["FileName"]]
        dark_ed, dark_es = (int(((video[f] < DARK) & region).sum()) for f in (ed, es))
        assert dark_es < dark_ed, r["FileName"]
        assert dark_ed > 0.6 * region.sum()  # the traced region really is the dark cavity at ED
        drops.append(1 - dark_es / dark_ed)
        efs.append(float(r["EF"]))
    assert spearmanr(drops, efs).statistic > 0.6


def test_same_patient_videos_look_alike(rows, grey):
    means = {name: video.mean(axis=0).ravel() for name, video in grey.items()}
    patient = {r["FileName"]: r["PatientID"] for r in rows}
    names = sorted(means)
    same, other = [], []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (same if patient[a] == patient[b] else other).append(np.corrcoef(means[a], means[b])[0, 1])
    assert np.mean(same) > np.mean(other) + 0.1


def test_black_outside_the_fan_unless_overlays(cohort, grey):
    outside = ~binary_dilation(fan_mask(112), iterations=3)
    assert 0.5 < fan_mask(112).mean() < 0.9
    overlays = set(cohort["with_overlay"])
    assert 0 < len(overlays) < len(grey)
    for name, video in grey.items():
        if name in overlays:
            marks = video[:, outside]
            assert marks.max() > 150  # burned-in text / ECG for a sector mask to remove ...
            assert marks.std(axis=0)[marks.mean(axis=0) > 100].max() < 8  # ... and it is static
        else:  # zero but for JPEG ringing next to bright tissue at the fan's edge
            assert video[:, outside].mean() < 0.5 and np.percentile(video[:, outside], 99) <= 4
            assert video[:, outside].max() <= 20


def test_reports_state_what_is_drawn(cohort, rows):
    by_study = defaultdict(list)
    for r in rows:
        by_study[r["StudyID"]].append(r)
    devices = {r["StudyID"] for r in rows if r["FileName"] in set(cohort["with_device"])}
    assert devices and len(devices) < len(by_study)
    for rep in _read_csv(cohort["reports"]):
        study = by_study[rep["study_id"]]
        assert rep["patient_id"] == study[0]["PatientID"] and rep["text"] == rep["text"].upper()
        ef = round(np.mean([float(r["EF"]) for r in study]))
        assert f"THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE {ef}%. " in rep["text"]
        assert ("A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART. " in rep["text"]) == (rep["study_id"] in devices)
        edv = np.mean([float(r["EDV"]) for r in study])
        size = "NORMAL IN SIZE" if edv < 150 else "MILDLY DILATED" if edv < 200 else "SEVERELY DILATED"
        assert f"THE LEFT VENTRICLE IS {size}. " in rep["text"]


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kwargs = dict(patients=3, videos_per_patient=1, frames=20)
    a, b, c = (make_phantom(tmp_path / name, seed=seed, **kwargs) for name, seed in (("a", 5), ("b", 5), ("c", 6)))
    for key in ("file_list", "volume_tracings", "reports"):
        assert a[key].read_bytes() == b[key].read_bytes()
    assert a["file_list"].read_bytes() != c["file_list"].read_bytes()
    first = _read_csv(a["file_list"])[0]["FileName"]
    other = _read_csv(c["file_list"])[0]["FileName"]
    frames_a = read_video(a["videos_dir"] / f"{first}.avi").frames
    np.testing.assert_array_equal(frames_a, read_video(b["videos_dir"] / f"{first}.avi").frames)
    assert not np.array_equal(frames_a, read_video(c["videos_dir"] / f"{other}.avi").frames)


def test_follow_up_studies(tmp_path):
    summary = make_phantom(tmp_path, patients=3, videos_per_patient=5, studies_per_patient=2, frames=16)
    file_rows = _read_csv(summary["file_list"])
    assert len(file_rows) == 15 and summary["studies"] == 6
    studies = defaultdict(lambda: defaultdict(int))
    for r in file_rows:
        studies[r["PatientID"]][r["StudyID"]] += 1
    assert len(studies) == 3 and all(sorted(s.values()) == [2, 3] for s in studies.values())
    assert len(_read_csv(summary["reports"])) == 6
    study_ef = defaultdict(list)
    for r in file_rows:
        study_ef[r["StudyID"]].append(float(r["EF"]))
    for patient, visits in studies.items():
        first, second = (np.mean(study_ef[s]) for s in sorted(visits))
        assert abs(first - second) < 12  # the same heart a little later


@pytest.mark.parametrize("codec,suffix,size", [("mpeg4", ".avi", 64), ("libx264", ".mp4", 112)])
def test_other_codecs_and_sizes(tmp_path, codec, suffix, size):
    summary = make_phantom(tmp_path, patients=4, videos_per_patient=1, frames=12, size=size, codec=codec)
    assert all(summary["splits"][s] >= 1 for s in ("TRAIN", "VAL", "TEST"))
    file_rows = _read_csv(summary["file_list"])
    for r in file_rows:
        video = read_video(summary["videos_dir"] / f"{r['FileName']}{suffix}")
        assert video.frames.shape == (12, size, size, 3) and video.fps == pytest.approx(50.0)
        assert 40 <= float(r["EDV"]) <= 300  # volumes in mL do not depend on the frame size
    assert {t["FileName"] for t in _read_csv(summary["volume_tracings"])} == {r["FileName"] + suffix for r in file_rows}


@pytest.mark.parametrize("kwargs", [dict(codec="h265"), dict(patients=0), dict(frames=1), dict(seed=-1), dict(size=111),
                                    dict(videos_per_patient=1, studies_per_patient=2)])
def test_bad_arguments_are_refused(tmp_path, kwargs):
    with pytest.raises(BadInput):
        make_phantom(tmp_path, **kwargs)


def test_patients_differ_by_anatomy_and_studies_by_acquisition():
    """Two studies of a patient: the same anatomy (a small drift), another probe pose, gain, TGC, sector
    and heart rate; every video its own texture. Videos of one study share the study's set-up."""
    from embedstore.datasets.phantom import plan_cohort

    cohort = plan_cohort(12, 4, 2, seed=3)
    by_patient = defaultdict(list)
    for study in cohort:
        by_patient[study.patient_id].append(study)
    textures = [take.texture_seed for study in cohort for _, take in study.takes]
    assert len(set(textures)) == len(textures) == 48
    rotation_steps, drifts = [], []
    for first, second in by_patient.values():
        for study in (first, second):
            takes = [take for _, take in study.takes]
            assert len({(t.sector, t.tgc_db) for t in takes}) == 1  # one set-up per study
        a, b = first.takes[0][1], second.takes[0][1]
        assert a.sector != b.sector and a.tgc_db != b.tgc_db
        assert first.heart.heart_rate != second.heart.heart_rate
        rotation_steps.append(abs(a.rotation - b.rotation))
        for key in ("lv_length", "lv_width", "wall"):
            drifts.append(abs(getattr(second.heart, key) / getattr(first.heart, key) - 1))
        assert 34 <= min(a.sector[0], b.sector[0]) and max(a.sector[0], b.sector[0]) <= 42
    assert np.median(rotation_steps) > np.radians(3)  # the probe moves between studies ...
    assert max(drifts) < 0.15 and np.median(drifts) < 0.05  # ... the heart barely changes
    lengths = [s[0].heart.lv_length for s in by_patient.values()]
    assert np.std(lengths) / np.mean(lengths) > 3 * np.median(drifts)  # patients differ far more than visits


def test_fps_spread_is_echonet_like(tmp_path):
    summary = make_phantom(tmp_path, patients=12, videos_per_patient=2, frames=8, fps_spread=True, size=64)
    file_rows = _read_csv(summary["file_list"])
    fps = np.array([float(r["FPS"]) for r in file_rows])
    assert 0.5 <= np.mean(fps == 50) < 1 and fps.min() >= 30 and fps.max() <= 100
    for r in file_rows[:6]:
        video = read_video(summary["videos_dir"] / f"{r['FileName']}.avi")
        assert video.fps == pytest.approx(float(r["FPS"]), rel=0.01) and video.frames.shape[1:3] == (64, 64)
