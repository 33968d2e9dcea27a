"""Ingest: EchoNet-style folders, folders of files, single files; idempotence; bad input."""
from __future__ import annotations

import shutil
import subprocess
import sys

import duckdb
import pytest

from embedstore.datasets.echonet import read_filelist
from embedstore.datasets.ingest import ingest
from embedstore.errors import BadInput, NotFound
from embedstore.store import open_store
from tests.dicom_files import write_dicom
from tests.media import moving_frames, truncate, write_video


def counts(path) -> dict:
    with open_store(path, read_only=True) as st:
        return st.catalog.counts()


def test_phantom_cohort_ingests_with_patients_and_reports_and_twice_adds_nothing(phantom_cohort, tmp_path):
    store = tmp_path / "s"
    cmd = [sys.executable, "-m", "embedstore", "ingest", str(phantom_cohort), "--store", str(store),
           "--reports", str(phantom_cohort / "reports.csv"), "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "added 60" in first.stdout
    c = counts(store)
    assert (c["videos"], c["patients"], c["studies"], c["reports"]) == (60, 20, 20, 20)
    with open_store(store, read_only=True) as st:
        rows = st.catalog.query("SELECT count(*) FROM videos WHERE ef IS NULL OR split IS NULL OR n_frames <> 32")
        assert rows[0][0] == 0, "labels from FileList.csv or decoded sizes are missing"
        per_study = st.catalog.query("SELECT count(*) FROM reports GROUP BY study_id HAVING count(*) <> 1")
        assert per_study == []
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "added 0, unchanged 60" in second.stdout
    assert counts(store) == {**c, "runs": c["runs"] + 1}


def test_bad_files_are_skipped_with_one_line_reasons_and_leave_no_rows(tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "good.avi", moving_frames(16))
    write_video(src / "good_xvid.avi", moving_frames(16, seed=1), codec="mpeg4")
    write_video(src / "good.mp4", moving_frames(16, seed=2), codec="libx264")
    (src / "empty.avi").write_bytes(b"")
    (src / "text.avi").write_text("this is not a video\n")
    truncate(write_video(src / "truncated.avi", moving_frames(40, seed=3)), 0.4)
    write_video(src / "single.avi", moving_frames(1, seed=4))
    write_dicom(src / "cine.dcm", moving_frames(12, seed=5), fps=25.0, syntax="jpeg", photometric="YBR_FULL_422")
    nopix = write_dicom(src / "nopixels.dcm", moving_frames(4, seed=6))
    import pydicom

    ds = pydicom.dcmread(nopix)
    del ds.PixelData
    ds.save_as(nopix)

    with open_store(tmp_path / "s", create=True) as st:
        summary = ingest(src, st, progress=False)
        ids = sorted(st.catalog.video_ids())
        fmt = dict(st.catalog.query("SELECT video_id, format FROM videos"))
    assert summary.added == 4
    # good.avi and good.mp4 share a stem: the second gets its content hash appended, nothing is overwritten.
    assert ids[:2] == ["cine", "good"] and ids[2].startswith("good-") and ids[3] == "good_xvid"
    assert sorted(fmt.values()) == ["avi", "avi", "dicom", "mp4"]
    reasons = {item.split("/")[-1]: reason for item, reason in summary.skipped}
    assert set(reasons) == {"empty.avi", "text.avi", "truncated.avi", "single.avi", "nopixels.dcm"}
    assert "empty" in reasons["empty.avi"]
    assert "not a readable AVI" in reasons["text.avi"]
    assert "truncated" in reasons["truncated.avi"] or "damaged" in reasons["truncated.avi"]
    assert "1 frame" in reasons["single.avi"]
    assert "pixel data" in reasons["nopixels.dcm"]
    for item, reason in summary.skipped:
        assert "\n" not in reason and item.split("/")[-1] in reason


def test_dicom_phi_never_reaches_the_catalog(tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    for syntax in ("explicit", "rle", "jpeg", "jpeg2000"):
        write_dicom(src / f"{syntax}.dcm", moving_frames(6, size=64, seed=7), fps=30.0, syntax=syntax,
                    photometric="RGB" if syntax != "jpeg" else "YBR_FULL_422")
    with open_store(tmp_path / "s", create=True) as st:
        summary = ingest(src, st, progress=False)
        patients = {r[0] for r in st.catalog.query("SELECT DISTINCT patient_id FROM videos")}
    assert summary.added == 4 and not summary.skipped
    assert len(patients) == 1 and next(iter(patients)).startswith("p_")
    st.close()
    con = duckdb.connect(str(tmp_path / "s" / "catalog.duckdb"), read_only=True)
    dump = repr([con.execute(f"SELECT * FROM {t}").fetchall() for t in ("videos", "patients", "studies", "runs", "meta")])
    con.close()
    raw = (tmp_path / "s" / "catalog.duckdb").read_bytes()
    for phi in ("DOE^JANE", "MRN-1234567", "19700101", "St Example Hospital", "ACC998877", "SONO^GRAPHER", "SN-42"):
        assert phi not in dump and phi.encode() not in raw


def test_single_file_and_missing_source(tmp_path):
    path = write_video(tmp_path / "one.mp4", moving_frames(10), codec="libx264")
    with open_store(tmp_path / "s", create=True) as st:
        assert ingest(path, st, progress=False).added == 1
        with pytest.raises(NotFound, match="no such file"):
            ingest(tmp_path / "missing.avi", st, progress=False)


def test_filelist_with_missing_columns_or_bad_numbers_is_refused_before_any_row(phantom_cohort, tmp_path):
    src = tmp_path / "echonet"
    shutil.copytree(phantom_cohort, src)
    text = (src / "FileList.csv").read_text().splitlines()
    (src / "FileList.csv").write_text("\n".join([text[0].replace("ESV,", "")] + text[1:]))
    with pytest.raises(BadInput, match="missing column.*ESV"):
        read_filelist(src / "FileList.csv")
    bad = text[:3] + [text[3].replace(text[3].split(",")[1], "forty", 1)] + text[4:]
    (src / "FileList.csv").write_text("\n".join(bad) + "\n")
    with open_store(tmp_path / "s", create=True) as st:
        with pytest.raises(BadInput, match="line 4: column EF has 'forty'"):
            ingest(src, st, progress=False)
        assert st.catalog.counts()["videos"] == 0


def test_cli_reports_errors_in_one_line_with_nonzero_exit(tmp_path):
    res = subprocess.run([sys.executable, "-m", "embedstore", "info", "--store", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: no store at")
