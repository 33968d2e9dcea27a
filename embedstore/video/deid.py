"""De-identification policy for DICOM headers: what may reach the catalogue, and in what form.

Nothing from a header goes into the store unless it is on an allow-list. Patient and study
identifiers become keyed hashes (HMAC-SHA256 with a salt) so videos of one patient still group
together while the MRN cannot be recovered by hashing every plausible number. The salt comes from
$EMBEDSTORE_SALT when set (to share hashes between stores), else from the store itself: the catalogue
generates a random salt when it is created and keeps it. Names, institution and device identifiers
stay out unless the user lists them in `allow`. Dates follow DICOM PS3.15's "Retain Longitudinal
Temporal Information with Modified Dates" option (113107): `acquired_at` is the real acquisition
time moved back by one secret offset per patient (keyed by the salt), so the intervals between a
patient's studies survive and the real dates do not; the real date only when `allow` says so.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping
from datetime import date, datetime, timedelta

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM

from embedstore.errors import BadInput

SALT_ENV = "EMBEDSTORE_SALT"

PHI_KEYWORDS: frozenset[str] = frozenset({
    # patient
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate",
    "PatientBirthTime", "PatientSex", "PatientAge", "PatientSize", "PatientWeight", "PatientAddress",
    "PatientTelephoneNumbers", "EthnicGroup", "MilitaryRank", "MedicalRecordLocator",
    "PatientComments", "AdditionalPatientHistory", "PregnancyStatus", "ResponsiblePerson",
    # dates and times
    "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "InstanceCreationDate",
    "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime", "InstanceCreationTime",
    "AcquisitionDateTime", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    # people and places
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "OperatorsName", "RequestingPhysician",
    # study and device identifiers
    "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "MediaStorageSOPInstanceUID", "FrameOfReferenceUID", "RequestedProcedureID",
    "PerformedProcedureStepID", "ScheduledProcedureStepID", "StudyDescription", "SeriesDescription",
    "RequestAttributesSequence", "DeviceSerialNumber", "StationName", "DeviceUID",
    "ManufacturerModelName", "SoftwareVersions",
})
# Any element of these value representations is personal or datable, whatever its keyword.
PHI_VRS: frozenset[str] = frozenset({"PN", "DA", "DT", "TM"})
# Plain-text or numeric values only: sequences and binary blobs cannot be passed through.
_UNALLOWABLE_VRS = frozenset({"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})
ACQUIRED_AT = "acquired_at"
DATE_SHIFT_DAYS = (365, 3650)  # modified dates move back by 1 to 10 years: one secret offset per patient


def default_salt(store_salt: str = "") -> str:
    """$EMBEDSTORE_SALT when set, else the store's own random salt (kept in its catalogue)."""
    return os.environ.get(SALT_ENV) or store_salt


def salted_hash(value: str, salt: str) -> str:
    """First 16 hex digits of HMAC-SHA256(salt, value); the caller adds a prefix such as "p_"."""
    if not salt:
        raise ValueError("salted_hash needs a non-empty salt; an unsalted hash of an MRN is reversible")
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def deidentify(
    ds: Dataset,
    salt: str,
    allow: Iterable[str] = frozenset(),
    id_map: Mapping[str, str] | None = None,
) -> dict:
    """The catalogue-safe keys of one header: patient_id, study_id, series_id, acquired_at, view, allowed keywords.

    `id_map` maps raw Patient IDs to the user's own pseudonyms (ids missing from it are hashed).
    Without a salt the hashed ids are None rather than weakly protected. `allow` names DICOM
    keywords to pass through verbatim, and "acquired_at" for the acquisition date and time
    ("StudyDate" alone gives the study date only).
    """
    allow = set(allow)
    _check_allow(allow)
    raw_patient = str(ds.get("PatientID") or "").strip()
    raw_study = str(ds.get("StudyInstanceUID") or ds.get("StudyID") or "").strip()
    raw_series = str(ds.get("SeriesInstanceUID") or "").strip()
    if id_map is not None and raw_patient in id_map:
        patient_id: str | None = str(id_map[raw_patient])
    else:
        patient_id = "p_" + salted_hash(raw_patient, salt) if raw_patient and salt else None
    acquired = _acquired_at(ds, allow)
    if acquired is None and not allow & {ACQUIRED_AT, "StudyDate"} and raw_patient and salt:
        acquired = shift_date(_acquired_at(ds, {ACQUIRED_AT}), date_offset(raw_patient, salt))
    out: dict = {
        "patient_id": patient_id,
        "study_id": "s_" + salted_hash(raw_study, salt) if raw_study and salt else None,
        "series_id": "se_" + salted_hash(raw_series, salt) if raw_series and salt else None,
        "acquired_at": acquired,
        "view": _view(ds),
    }
    for keyword in sorted(allow - {ACQUIRED_AT}):
        out[keyword] = _plain(ds.get(keyword))
    return out


def date_offset(raw_patient: str, salt: str) -> timedelta:
    """The patient's secret date shift (whole days, so times of day and weekdays' rhythm are kept)."""
    low, high = DATE_SHIFT_DAYS
    return timedelta(days=-(low + int(salted_hash("date-shift\0" + raw_patient, salt), 16) % (high - low)))


def shift_date(iso: str | None, offset: timedelta) -> str | None:
    """An ISO date or date-time moved by `offset` (None stays None)."""
    if not iso:
        return None
    if "T" in iso:
        return (datetime.fromisoformat(iso) + offset).isoformat()
    return (date.fromisoformat(iso) + offset).isoformat()


def phi_values(ds: Dataset) -> set[str]:
    """Every PHI string in a header (nested sequences included), for leak checks on outputs."""
    found: set[str] = set()
    for elem in ds.iterall():
        if elem.VR == "SQ" or not (elem.keyword in PHI_KEYWORDS or elem.VR in PHI_VRS):
            continue
        values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
        found.update(str(v).strip() for v in values if str(v).strip())
    return found


def _check_allow(allow: set[str]) -> None:
    """Refuse unknown or unpassable keywords now, rather than silently dropping a typo."""
    for keyword in allow - {ACQUIRED_AT}:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise BadInput(f"unknown DICOM keyword {keyword!r} in allow; use keywords such as StudyDate, or acquired_at")
        if dictionary_VR(tag) in _UNALLOWABLE_VRS:
            raise BadInput(f"{keyword} is a {dictionary_VR(tag)} element and cannot be passed through; allow plain values only")


def _plain(value: object) -> str | list[str] | None:
    """A header value as catalogue-friendly text."""
    if value is None or value == "":
        return None
    if isinstance(value, MultiValue):
        return [str(v) for v in value]
    return str(value)


def _acquired_at(ds: Dataset, allow: set[str]) -> str | None:
    """ISO date-time of acquisition, only when allowed: the most specific element present wins."""
    if ACQUIRED_AT in allow:
        pairs = [("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                 ("SeriesDate", "SeriesTime"), ("StudyDate", "StudyTime")]
        if ds.get("AcquisitionDateTime"):
            try:
                return DT(str(ds.AcquisitionDateTime)).isoformat()
            except ValueError:
                pass
    elif "StudyDate" in allow:
        pairs = [("StudyDate", "")]
    else:
        return None
    for date_kw, time_kw in pairs:
        try:
            date = DA(str(ds.get(date_kw) or "")) if ds.get(date_kw) else None
            time = TM(str(ds.get(time_kw))) if time_kw and ds.get(time_kw) else None
        except ValueError:
            continue  # a malformed element: try the next source
        if date:
            return f"{date.isoformat()}T{time.isoformat()}" if time else date.isoformat()
    return None


def _view(ds: Dataset) -> str | None:
    """The echo view as the scanner labelled it (View Name, else the view code's meaning)."""
    name = str(ds.get("ViewName") or "").strip()
    if name:
        return name
    codes = ds.get("ViewCodeSequence")
    if codes:
        return str(codes[0].get("CodeMeaning") or "").strip() or None
    return None
