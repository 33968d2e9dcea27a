"""Phantom cines as a scanner exports them: DICOM (or AVI) screens of 480x640 with burned-in text.

Why: real vendor cines carry the patient's name, the date, MI/TIS, a toolbar and a sweeping ECG
trace around the sector (FACTS.md, DICOM ultrasound cines); the masking code must be tested on such
files, with the truth known. Each screen holds one phantom video (datasets/phantom.py, same anatomy
and labels) in a square sector whose place is given by a Sequence of Ultrasound Regions item (0018,6011),
with every piece of text and the ECG outside that region. Patients have several studies on real-looking
dates; the files are written the way a PACS export lays them out (one folder per patient and study).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from embedstore.datasets import phantom
from embedstore.errors import BadInput

SCREEN = (480, 640)  # rows, columns: the SonoSite-style export of FACTS.md
SECTOR = 352  # side of the square image region, pixels
_WHITE, _YELLOW, _GREEN = (235, 235, 235), (240, 220, 60), (40, 230, 60)
_SURNAMES = ("DOE", "ROE", "POE", "MOE", "LOE", "HOE", "COE", "FOE", "KOE", "NOE")


@dataclass(frozen=True)
class Layout:
    """Where a vendor's screen puts the image region, its text, the ECG strip and the toolbar (x0, y0, x1, y1)."""

    name: str
    region: tuple[int, int]  # top-left corner of the SECTOR x SECTOR image region
    name_at: tuple[int, int]  # patient name, date and time, preset
    side_at: tuple[int, int]  # MI/TIS, vendor and probe, one line under another
    ecg: tuple[int, int, int, int]
    bar: tuple[int, int, int, int]  # toolbar (or a grey-scale bar): static blocks
    doppler: tuple[int, int, int, int]  # where a spectral Doppler strip goes when asked for

    def region_box(self) -> tuple[int, int, int, int]:
        """Inclusive pixel box of the image region, as RegionLocationMinX0..MaxY1 state it."""
        x0, y0 = self.region
        return x0, y0, x0 + SECTOR - 1, y0 + SECTOR - 1


LAYOUTS = {
    # text top-left and down the right edge, a toolbar along the bottom, the sector in between
    "sonosite": Layout("sonosite", (144, 40), (6, 4), (506, 44), (144, 398, 495, 440), (0, 450, 639, 479),
                       (506, 250, 635, 440)),
    # the sector to the left, a title bar on top, text and a grey-scale bar on the right
    "wide": Layout("wide", (40, 60), (8, 6), (430, 70), (40, 420, 391, 462), (400, 60, 412, 300),
                   (430, 250, 630, 410)),
}


def make_dicom_phantom(out: Path | str, patients: int = 3, videos_per_patient: int = 2, studies_per_patient: int = 2,
                       seed: int = 0, frames: int = 32, fps: float = 30.0, layouts: tuple[str, ...] = ("sonosite",),
                       syntax: str = "jpeg", photometric: str = "YBR_FULL_422", regions: bool = True,
                       doppler: bool = False, avi: bool = False, reference: bool = False) -> dict:
    """Write phantom cines as DICOM screens under out/dicom/<patient>/<study>/ (and AVIs under out/avi/).

    Every video is written once per layout in `layouts` (same frames, other screen), so a test can
    check that vectors follow the heart and not the screen. `regions` False leaves out the Sequence of
    Ultrasound Regions (vendors that omit it); `doppler` adds a spectral Doppler strip and its region.
    Each study keeps its own sector, gain and TGC (narrower sectors, dark studies whose sector shows
    little but its walls; `screen_fan(layout, row["sector"])` is its outline). `reference` draws every
    cine with one preset instead (the widest sector, no gain or TGC offset), lit to its edge, so
    `screen_fan(layout)` is an outline the pixels show: what a test of how much of the fan a mask keeps needs.
    Returns the truth: per file, the patient, study, study date, layout, image region, sector and burned-in name.
    """
    unknown = sorted(set(layouts) - set(LAYOUTS))
    if unknown or not layouts:
        raise BadInput(f"unknown layout {', '.join(unknown) or '(none)'}; use {', '.join(LAYOUTS)}")
    from embedstore.video.dicom_write import write_dicom
    from embedstore.video.write import write_video

    out = Path(out)
    rng = np.random.default_rng([seed, 18])
    dates = _study_dates(patients, studies_per_patient, rng)
    uids: dict[str, str] = {}
    files = []
    for video in phantom.render_cohort(patients, videos_per_patient, studies_per_patient, seed, frames, fps, SECTOR,
                                       overlay=False, reference=reference):
        p = int(video["patient_id"][3:]) - 1
        k = int(video["study_id"].rsplit("-S", 1)[1]) - 1
        when = dates[p][k]
        name = f"{_SURNAMES[p % len(_SURNAMES)]}^PHANTOM{p + 1}"
        study_uid = uids.setdefault(video["study_id"], generate_uid(entropy_srcs=[str(seed), video["study_id"]]))
        series_uid = uids.setdefault(video["study_id"] + "/series", generate_uid(entropy_srcs=[str(seed), video["study_id"], "s"]))
        for layout_name in layouts:
            layout = LAYOUTS[layout_name]
            screen = compose_screen(video["frames"], layout, name, when, video["heart_rate"], fps, doppler, rng)
            stem = video["name"] if len(layouts) == 1 else f"{video['name']}_{layout_name}"
            folder = out / "dicom" / video["patient_id"] / video["study_id"]
            folder.mkdir(parents=True, exist_ok=True)
            header = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "BurnedInAnnotation": "YES",
                      "ViewName": "A4C", "SeriesNumber": 1, "InstanceNumber": len(files) + 1}
            if regions:
                header["SequenceOfUltrasoundRegions"] = _regions(layout, doppler)
            phi = {"PatientName": name, "PatientID": video["patient_id"], "StudyDate": when.strftime("%Y%m%d"),
                   "StudyTime": when.strftime("%H%M%S"), "ContentDate": when.strftime("%Y%m%d"),
                   "AcquisitionDateTime": when.strftime("%Y%m%d%H%M%S"), "AccessionNumber": f"ACC{seed}{p}{k}",
                   "StudyID": f"{p + 1}{k + 1}"}
            path = write_dicom(folder / f"{stem}.dcm", screen, fps=fps, syntax=syntax, photometric=photometric,
                               phi=phi, header=header)
            row = {"path": path, "name": stem, "video": video["name"], "patient_id": video["patient_id"],
                   "study_id": video["study_id"], "study_uid": study_uid, "acquired": when, "layout": layout_name,
                   "region": layout.region_box(), "sector": video["sector"], "patient_name": name, "ef": video["ef"]}
            if avi:
                (out / "avi").mkdir(parents=True, exist_ok=True)
                row["avi"] = write_video(out / "avi" / f"{stem}.avi", screen, fps, "mjpeg")
            files.append(row)
    return {"root": out, "dicom_dir": out / "dicom", "files": files, "patients": patients,
            "studies": patients * studies_per_patient, "frames": frames, "fps": fps, "screen": SCREEN}


def screen_fan(layout: str, sector: tuple[float, float] | None = None) -> np.ndarray:
    """Boolean [480, 640]: where the phantom's fan lies on a screen of `layout` (the truth for fan masks);
    `sector`: a file's own (half-angle, depth), its row["sector"]; None: the reference preset's widest sector."""
    out = np.zeros(SCREEN, dtype=bool)
    x0, y0 = LAYOUTS[layout].region
    out[y0:y0 + SECTOR, x0:x0 + SECTOR] = phantom.fan_mask(SECTOR, *(sector or ()))
    return out


def compose_screen(grey: np.ndarray, layout: Layout, patient_name: str, when: dt.datetime, heart_rate: float,
                   fps: float, doppler: bool, rng: np.random.Generator) -> np.ndarray:
    """RGB frames [T, 480, 640, 3]: the sector in its region, static text, toolbar, a sweeping ECG trace."""
    t = len(grey)
    static = _static_overlay(layout, patient_name, when, rng)
    screen = np.repeat(static[None], t, axis=0)
    x0, y0 = layout.region
    screen[:, y0:y0 + SECTOR, x0:x0 + SECTOR] = grey[..., None]
    _draw_ecg(screen, layout.ecg, heart_rate, fps, rng)
    if doppler:
        _draw_doppler(screen, layout.doppler, heart_rate, fps, rng)
    return screen


def _static_overlay(layout: Layout, patient_name: str, when: dt.datetime, rng: np.random.Generator) -> np.ndarray:
    """Text (the patient's name, the date), vendor lines and a toolbar, drawn with PIL's own font."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (SCREEN[1], SCREEN[0]))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    x, y = layout.name_at
    for i, line in enumerate((patient_name.replace("^", ", "), when.strftime("%d/%m/%Y %H:%M:%S"), "Adult Echo  A4C")):
        draw.text((x, y + 15 * i), line, fill=_WHITE, font=font)
    x, y = layout.side_at
    for i, line in enumerate(("MI 1.1", "TIS 0.6", "ExampleVendor", "P21x 1-5MHz", "Depth 16 cm", "Gain 52%",
                              "Res  HR")):
        draw.text((x, y + 18 * i), line, fill=_YELLOW if i < 2 else _WHITE, font=font)
    bx0, by0, bx1, by1 = layout.bar
    draw.rectangle((bx0, by0, bx1, by1), fill=(40, 40, 48))
    if by1 - by0 > bx1 - bx0:  # a vertical grey-scale bar
        for yy in range(by0, by1 + 1):
            draw.line((bx0, yy, bx1, yy), fill=(round(255 * (by1 - yy) / (by1 - by0)),) * 3)
    else:
        for xx in range(bx0 + 8, bx1 - 24, 48):
            draw.rectangle((xx, by0 + 6, xx + 30, by1 - 6), outline=_WHITE)
            draw.text((xx + 6, by0 + 9), ("2D", "CW", "PW", "M", "ZM", "FRZ", "SAVE", "END")[(xx // 48) % 8],
                      fill=_WHITE, font=font)
    return np.asarray(image)


def _draw_ecg(screen: np.ndarray, box: tuple[int, int, int, int], heart_rate: float, fps: float,
              rng: np.random.Generator) -> None:
    """A monitor-style ECG: a sweep bar moves right 2.5 screen-widths per 10 s and redraws the trace behind it."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0 + 1, y1 - y0 + 1
    seconds = np.arange(width) / width * 2.5 + rng.random()
    phase = (seconds * heart_rate / 60) % 1

    def bump(centre: float, w: float) -> np.ndarray:
        return np.exp(-(((phase - centre + 0.5) % 1 - 0.5) / w) ** 2)

    wave = bump(0.0, 0.012) - 0.2 * bump(0.035, 0.012) + 0.25 * bump(0.3, 0.05) + 0.12 * bump(0.9, 0.03)
    y = np.rint(y1 - 4 - (height - 10) * (wave + 0.2) / 1.2).astype(int)
    lo, hi = np.minimum(y, np.roll(y, 1)), np.maximum(y, np.roll(y, 1))
    lo[0], hi[0] = y[0], y[0]
    rows = np.arange(y0, y1 + 1)[:, None]
    trace = (rows >= lo) & (rows <= hi)
    speed = width / 2.5 / 4  # pixels per second: 10 s to cross the strip
    for t in range(len(screen)):
        sweep = int(t / fps * speed * 4) % width
        gap = (np.arange(width) - sweep) % width < 12  # the erase bar in front of the sweep
        shown = trace & ~gap
        screen[t, y0:y1 + 1, x0:x1 + 1][shown] = _GREEN


def _draw_doppler(screen: np.ndarray, box: tuple[int, int, int, int], heart_rate: float, fps: float,
                  rng: np.random.Generator) -> None:
    """A scrolling spectral Doppler strip: velocity envelopes beat by beat, new columns every frame."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0 + 1, y1 - y0 + 1
    rows = np.arange(height)[:, None]
    for t in range(len(screen)):
        seconds = (np.arange(width) + 3 * t) / 60
        envelope = height * 0.8 * np.clip(np.sin(2 * np.pi * seconds * heart_rate / 60), 0, 1)
        strip = (rows > height - envelope) * rng.uniform(80, 255, (height, width))
        screen[t, y0:y1 + 1, x0:x1 + 1] = strip[..., None].astype(np.uint8)


def _regions(layout: Layout, doppler: bool) -> list[Dataset]:
    """Sequence of Ultrasound Regions items: the 2D tissue region, and the Doppler strip when drawn."""
    spacing_cm = phantom.PIXEL_SPACING_CM * phantom.REF_SIZE / SECTOR
    boxes = [(layout.region_box(), 1, 1)] + ([(layout.doppler, 3, 3)] if doppler else [])
    items = []
    for (x0, y0, x1, y1), spatial, data_type in boxes:
        item = Dataset()
        item.RegionSpatialFormat, item.RegionDataType, item.RegionFlags = spatial, data_type, 0
        item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
        item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
        item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = (3, 3) if spatial == 1 else (4, 7)
        item.PhysicalDeltaX, item.PhysicalDeltaY = (spacing_cm, spacing_cm) if spatial == 1 else (0.01, 2.0)
        items.append(item)
    return items


def _study_dates(patients: int, studies: int, rng: np.random.Generator) -> list[list[dt.datetime]]:
    """Per patient, study dates months apart (the intervals that modified dates must keep)."""
    out = []
    for _ in range(patients):
        when = dt.datetime(2023, 1, 2, 8) + dt.timedelta(days=int(rng.integers(0, 365)), minutes=int(rng.integers(0, 540)))
        row = [when]
        for _ in range(studies - 1):
            when = when + dt.timedelta(days=int(rng.integers(30, 400)), minutes=int(rng.integers(-120, 120)))
            row.append(when)
        out.append(row)
    return out
