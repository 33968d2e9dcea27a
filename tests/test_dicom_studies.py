"""`ingest` of DICOM trees and DICOMDIR media: patients and studies, modified dates, skipped objects."""
from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.fileset import FileSet

from embedstore.datasets.ingest import ingest
from embedstore.datasets.phantom_dicom import make_dicom_phantom
from embedstore.store import open_store
from tests.dicom_files import write_dicom


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict:
    """3 patients x 2 studies (2 + 1 cines), files without suffixes as PACS exports them, a still and a
    non-image object."""
    root = tmp_path_factory.mktemp("tree")
    info = make_dicom_phantom(root, patients=3, videos_per_patient=3, studies_per_patient=2, frames=12)
    for row in info["files"]:  # PACS exports: IM0001-style names, no suffix
        row["path"] = row["path"].rename(row["path"].with_name(f"IM{info['files'].index(row):04d}"))
    extra = root / "dicom" / "extra"
    extra.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    write_dicom(extra / "STILL1", frames[:1])
    report = write_dicom(extra / "SR1", frames)
    import pydicom

    ds = pydicom.dcmread(report)
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR: no image
    ds.save_as(report)
    return info


def catalog_rows(store) -> dict[str, dict]:
    return {v["source_path"]: v for v in store.videos()}


def test_dicom_tree_ingests_into_patients_and_studies_with_modified_dates(tree, tmp_path):
    with open_store(tmp_path / "store", create=True) as store:
        summary = ingest(tree["dicom_dir"], store, progress=False)
        assert summary.added == 9
        reasons = {item.rsplit("/", 1)[-1]: reason for item, reason in summary.skipped}
        assert set(reasons) == {"STILL1", "SR1"}
        assert "1 frame" in reasons["STILL1"] and "no pixel data" in reasons["SR1"]
        rows = catalog_rows(store)
        truth = {str(r["path"].resolve()): r for r in tree["files"]}
        assert set(rows) == set(truth)
        # the same grouping as the truth, under keyed hashes
        patients = {(rows[p]["patient_id"], truth[p]["patient_id"]) for p in rows}
        studies = {(rows[p]["study_id"], truth[p]["study_id"]) for p in rows}
        assert len(patients) == 3 == len({a for a, _ in patients}) and len(studies) == 6 == len({a for a, _ in studies})
        assert all(r["patient_id"].startswith("p_") and "PAT" not in r["patient_id"] for r in rows.values())
        for path, row in rows.items():  # which region each cine was cut to is recorded
            region = json.loads(row["image_region"])
            assert region["source"] == "region" and region["region"]["index"] == 0
            assert (region["region"]["x0"], region["region"]["y0"]) == truth[path]["region"][:2]
        assert store.info()["counts"]["patients"] == 3 and store.info()["counts"]["studies"] == 6
        # modified dates: real dates never stored, intervals between a patient's studies kept exactly
        offsets = {}
        for path, row in rows.items():
            real, stored = truth[path]["acquired"], row["acquired_at"]
            assert stored is not None and stored.date() != real.date()
            offsets.setdefault(truth[path]["patient_id"], set()).add(real - stored)
        assert all(len(o) == 1 for o in offsets.values()), "one offset per patient"
        assert len({next(iter(o)) for o in offsets.values()}) == 3, "each patient has their own offset"
        assert all(dt.timedelta(days=365) <= next(iter(o)) <= dt.timedelta(days=3650) for o in offsets.values())
        print("per-patient date offsets (days):", sorted(next(iter(o)).days for o in offsets.values()))

        again = ingest(tree["dicom_dir"], store, progress=False)
        assert again.added == 0 and again.unchanged == 9
        assert store.info()["counts"]["videos"] == 9


def test_dicomdir_media_ingests_the_files_it_lists(tree, tmp_path):
    fileset = FileSet()
    for row in tree["files"][:4]:
        fileset.add(row["path"])
    media = tmp_path / "media"
    fileset.write(media)
    with open_store(tmp_path / "store", create=True) as store:
        summary = ingest(media / "DICOMDIR", store, progress=False)
        assert summary.added == 4 and not summary.skipped
        folder = ingest(media, store, progress=False)  # the folder itself: same files, and the DICOMDIR skipped
        assert folder.added == 0 and folder.unchanged == 4
        assert [r for _, r in folder.skipped] and "DICOMDIR" in folder.skipped[0][1]
        assert len({v["study_id"] for v in store.videos()}) == len({r["study_id"] for r in tree["files"][:4]})


def test_bad_files_in_a_batch_are_listed_and_the_rest_goes_on(tree, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tree["files"][0]["path"].parent, src)
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RegionSpatialFormat, item.RegionDataType = 1, 1
    item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1 = 0, 0, 900, 20
    frames = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    write_dicom(src / "outside.dcm", frames, header={"SequenceOfUltrasoundRegions": [item]})
    with open_store(tmp_path / "store", create=True) as store:
        summary = ingest(src, store, progress=False)
        assert summary.added == len([f for f in src.iterdir() if f.name.startswith("IM")])
        ((item_path, reason),) = summary.skipped
        assert item_path.endswith("outside.dcm") and "lies outside the 32x32 image" in reason and "\n" not in reason
        assert not any(v["source_path"].endswith("outside.dcm") for v in store.videos())


def test_two_series_of_one_study_ingest_as_two_keyed_series_of_that_study(tmp_path):
    """Series Instance UIDs are kept as keyed hashes (videos.series_id), never raw; a second ingest adds nothing."""
    from pydicom.uid import generate_uid

    from embedstore.store.expressions import matching_ids

    src = tmp_path / "src"
    src.mkdir()
    study, series = generate_uid(), [generate_uid(), generate_uid()]
    rng = np.random.default_rng(3)
    for i, uid in enumerate([series[0], series[0], series[1]]):
        write_dicom(src / f"IM{i}", rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
                    header={"StudyInstanceUID": study, "SeriesInstanceUID": uid})
    with open_store(tmp_path / "store", create=True) as store:
        assert ingest(src, store, progress=False).added == 3
        rows = sorted(store.videos(), key=lambda r: r["source_path"])
        assert len({r["study_id"] for r in rows}) == 1 and len({r["patient_id"] for r in rows}) == 1
        ids = [r["series_id"] for r in rows]
        assert ids[0] == ids[1] != ids[2] and all(i.startswith("se_") and len(i) == 19 for i in ids)
        again = ingest(src, store, progress=False)
        assert again.added == 0 and again.unchanged == 3 and store.info()["counts"]["videos"] == 3
        assert matching_ids(store.catalog, "videos", f"series_id = '{ids[2]}'") == [rows[2]["video_id"]]
    raw = (tmp_path / "store" / "catalog.duckdb").read_bytes()
    assert not any(uid.encode() in raw for uid in (study, *series)), "a raw UID reached the catalog"


def test_a_store_from_before_series_ids_gains_the_column_on_open(tmp_path):
    import duckdb

    with open_store(tmp_path / "store", create=True):
        pass
    con = duckdb.connect(str(tmp_path / "store" / "catalog.duckdb"))
    con.execute("ALTER TABLE videos DROP COLUMN series_id")  # as an older embedstore left it
    con.close()
    columns = "SELECT column_name FROM information_schema.columns WHERE table_name = 'videos'"
    with open_store(tmp_path / "store", read_only=True) as store:  # read-only: no migration, and search metadata reads
        assert ("series_id",) not in store.catalog.query(columns)
        assert store.catalog.metadata_rows("none", "videos", ["patient_id", "series_id"]).column_names[-1] == "series_id"
    with open_store(tmp_path / "store") as store:  # the first writable open adds it
        assert ("series_id",) in store.catalog.query(columns)


def test_each_bad_header_or_pixel_case_is_one_line_per_file_and_the_batch_goes_on(tmp_path):
    """The issue's bad inputs in one batch beside a good cine: four refused with one line naming the file and
    the problem (none reaches the catalog), Burned In Annotation YES without regions accepted with one warning."""
    from pydicom.dataset import Dataset

    def region(box, spatial=1, data_type=1) -> Dataset:
        item = Dataset()
        item.RegionSpatialFormat, item.RegionDataType = spatial, data_type
        item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1, item.RegionLocationMaxY1 = box
        return item

    rng = np.random.default_rng(5)
    moving = rng.integers(0, 255, (4, 32, 48, 3), dtype=np.uint8)
    src = tmp_path / "src"
    src.mkdir()
    bad = {
        "outside": ({"SequenceOfUltrasoundRegions": [region((0, 0, 48, 31))]}, moving, "lies outside the 48x32 image"),
        "zero": ({"SequenceOfUltrasoundRegions": [region((10, 5, 10, 20))]}, moving, "has zero size"),
        "split": ({"SequenceOfUltrasoundRegions": [region((0, 0, 22, 31)), region((24, 0, 47, 31))]}, moving,
                  "2 separate 2D regions"),
        "still": ({}, np.repeat(moving[:1], 4, axis=0), "nothing moves"),
    }
    for name, (header, frames, _) in bad.items():
        write_dicom(src / f"{name}.dcm", frames, header=header)
    write_dicom(src / "good.dcm", moving, header={"SequenceOfUltrasoundRegions": [region((0, 0, 47, 31))]})
    write_dicom(src / "burned.dcm", rng.integers(0, 255, (4, 32, 48, 3), dtype=np.uint8),
                header={"BurnedInAnnotation": "YES"})
    with open_store(tmp_path / "store", create=True) as store:
        summary = ingest(src, store, progress=False)
        assert summary.added == 2, summary.skipped
        reasons = {item.rsplit("/", 1)[-1].removesuffix(".dcm"): reason for item, reason in summary.skipped}
        assert set(reasons) == set(bad)
        for name, (_, _, message) in bad.items():
            assert message in reasons[name] and f"{name}.dcm" in reasons[name] and "\n" not in reasons[name]
        (warning,) = summary.warnings
        assert "burned.dcm" in warning and "Burned In Annotation is YES" in warning and "\n" not in warning
        stored = {Path(v["source_path"]).stem: json.loads(v["image_region"])["source"] for v in store.videos()}
        assert stored == {"good": "region", "burned": "fan"}
        (run,) = store.catalog.query_dicts("SELECT status, added, failed FROM runs WHERE command = 'ingest'")
        assert (run["added"], run["failed"]) == (2, 4)
