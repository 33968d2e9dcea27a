"""A synthetic, EchoNet-Dynamic-shaped cohort of apical four-chamber echo videos, written as real files.

Why: tests, demos and benchmarks need echo videos whose labels are true by construction. The
ejection fraction in FileList.csv is measured by the method of disks from the left ventricle that is
actually drawn in the pixels, VolumeTracings.csv traces that same ventricle, a patient's videos share
anatomy (so same-patient retrieval is a real signal, not noise) and reports.csv says what is drawn.
Everything is deterministic for a seed and fast enough to build inside a test.

Layout follows EchoNet-Dynamic: Videos/<FileName>.avi, FileList.csv (EchoNet's columns in EchoNet's
order, then PatientID and StudyID), VolumeTracings.csv (ES rows first, then ED, as EchoNet's loader
expects), plus reports.csv with one templated report per study.

Geometry lives in "reference pixels" of a 112-pixel frame; other frame sizes scale it, and the pixel
spacing scales inversely, so volumes in mL do not depend on the frame size.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from embedstore.errors import BadInput
from embedstore.video.write import write_video

REF_SIZE = 112
PIXEL_SPACING_CM = 0.15  # per reference pixel: end-diastolic volumes fall in 60-250 mL
N_DISKS = 20
FAN_HALF_ANGLE_DEG = 42.0
FAN_APEX_Y = 0.03  # fan apex below the top edge, fraction of the frame
FAN_RADIUS = 0.93  # fan depth, fraction of the frame
CODEC_SUFFIX = {"mjpeg": ".avi", "mpeg4": ".avi", "libx264": ".mp4"}
FILE_LIST_COLUMNS = ("FileName", "EF", "ESV", "EDV", "FrameHeight", "FrameWidth", "FPS", "NumberOfFrames", "Split",
                     "PatientID", "StudyID")
TRACING_COLUMNS = ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
REPORT_COLUMNS = ("report_id", "study_id", "patient_id", "text")

# Linear echo intensities (tissue = 1); displayed on a log scale like a scanner.
_MYOCARDIUM, _PERICARDIUM, _VALVE, _BACKGROUND, _BLOOD, _LEAD, _CLUTTER = 1.0, 2.0, 1.0, 0.05, 0.004, 8.0, 0.12
_TOP_DB, _RANGE_DB, _DEPTH_LOSS_DB = 13.0, 50.0, 8.0
_RV_BLUNTNESS = -0.8  # the RV tapers to its apex, unlike the bullet-shaped LV
_ATRIUM_CENTRE = 0.3  # widest at this fraction of the atrium's depth below the annulus
_LEVELS = 33  # contraction states: frames in the same state share one rendering of the chambers
_CHUNK = 16  # frames per step of the final, per-frame stage
_SUB = 2  # the chambers are smooth, so they are rendered at half resolution and upsampled
_LOW_EF_SHARE, _DEVICE_SHARE, _NEW_DEVICE_SHARE, _OVERLAY_SHARE = 0.35, 0.2, 0.25, 0.4


@dataclass(frozen=True)
class _Heart:
    """One patient's anatomy at one study, in reference pixels; every video of the study shares it."""

    ef: float  # intended ejection fraction, percent; the label is measured from the drawing
    heart_rate: float  # beats per minute
    lv_length: float  # end-diastolic long axis, apex to mitral annulus
    lv_width: float  # end-diastolic basal diameter
    bluntness: float  # 0 = half-ellipse, 1 = bullet
    tilt: float  # LV long axis from vertical, radians, base to the right
    apex: tuple[float, float]  # LV apex (x, y) from the fan apex
    wall: float
    septum: float
    rv_length: float  # fraction of the LV length
    rv_width: float  # fraction of the LV width
    la_size: tuple[float, float]  # (width, depth) as fractions of LV width and length
    ra_size: tuple[float, float]  # (width, depth) as fractions of RV width and LV length
    device: bool  # pacemaker lead through the right atrium into the right ventricle

    @property
    def long_shortening(self) -> float:
        """Fractional long-axis shortening: about 15% at normal EF, less when the LV fails."""
        return 0.25 * self.ef / 100

    @property
    def width_shortening(self) -> float:
        """Fractional narrowing that, with the long-axis shortening, gives the intended EF (V ~ W^2 L)."""
        return 1 - math.sqrt((1 - self.ef / 100) / (1 - self.long_shortening))

    @property
    def systole(self) -> float:
        """Share of the cycle spent ejecting; systole takes a larger share at faster rates."""
        return 0.28 + 0.0017 * (self.heart_rate - 50)


@dataclass(frozen=True)
class _Setup:
    """A study's acquisition: the probe pose, the machine's settings and the day's heart rate.

    Why per study: videos of one study share them, videos of another study of the same patient do
    not, so only the anatomy tells two studies of one patient apart from other patients.
    """

    rotation: float  # probe rotation about the fan apex, radians
    shift: tuple[float, float]  # reference pixels
    gain_db: float
    tgc_db: tuple[float, float, float]  # time-gain compensation at the near field, mid depth and far field
    sector: tuple[float, float]  # half-angle in degrees, depth as a fraction of the frame (at most the defaults)
    heart_rate: float


@dataclass(frozen=True)
class _Take:
    """One acquisition: probe pose, gain, timing and noise differ between a patient's videos."""

    rotation: float  # probe rotation about the fan apex, radians
    shift: tuple[float, float]  # reference pixels
    gain_db: float
    tgc_db: tuple[float, float, float]
    sector: tuple[float, float]
    fps: float
    texture_seed: int  # tissue texture: drawn per video, like the speckle (not a patient's signature)
    phase: float  # where the first end-diastole falls, as a fraction of where it may fall
    foreshortening: float  # factor on the LV length seen in this view
    squeeze: float  # factor on the narrowing: beat-to-beat and view-to-view variability
    overlay: bool  # burned-in text, ECG and depth ticks outside the sector
    seed: int


@dataclass(frozen=True)
class _Study:
    patient_id: str
    study_id: str
    split: str
    heart: _Heart
    takes: tuple[tuple[str, _Take], ...]  # (FileName, take)


@dataclass(frozen=True)
class _Pose:
    """Where the LV frame sits in the image: s runs from the LV apex to the base, v across to the right."""

    apex: tuple[float, float]  # image pixels
    axis: tuple[float, float]  # unit vector, apex to base
    across: tuple[float, float]  # unit vector, towards the image right
    scale: float  # image pixels per reference pixel

    def lv_coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dx, dy = x - self.apex[0], y - self.apex[1]
        s = (dx * self.axis[0] + dy * self.axis[1]) / self.scale
        v = (dx * self.across[0] + dy * self.across[1]) / self.scale
        return s.astype(np.float32), v.astype(np.float32)

    def to_image(self, s: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.apex[0] + self.scale * (s * self.axis[0] + v * self.across[0])
        y = self.apex[1] + self.scale * (s * self.axis[1] + v * self.across[1])
        return x, y


@dataclass(frozen=True)
class _Fan:
    """The sector, fixed for a frame size: soft mask, polar coordinates, and where overlays may go."""

    mask: np.ndarray  # float32 [H, W], 1 inside, soft 1-pixel edge
    radius: np.ndarray  # pixels from the fan apex
    angle: np.ndarray  # radians from vertical
    depth: float
    outside: np.ndarray  # bool, at least 2 pixels outside the sector


@dataclass(frozen=True)
class _Labels:
    """What FileList.csv and VolumeTracings.csv say about one video, measured from its drawing."""

    traces: dict[int, np.ndarray]  # frame -> [1 + N_DISKS, 4] (X1, Y1, X2, Y2); ES first, then ED
    esv: float
    edv: float

    @property
    def ef(self) -> float:
        return 100 * (self.edv - self.esv) / self.edv


def make_phantom(out: Path | str, patients: int = 20, videos_per_patient: int = 3, studies_per_patient: int = 1,
                 seed: int = 0, frames: int = 128, fps: float = 50.0, size: int = 112,
                 codec: str = "mjpeg", fps_spread: bool = False) -> dict:
    """Write a phantom cohort under `out` and return a summary (counts, paths, pixel spacing).

    About 35% of patients have EF < 50%; splits are by patient. A patient's videos are spread evenly
    over their studies; later studies drift a few EF points and sometimes gain a pacemaker lead.
    A patient is its anatomy (LV size and shape, walls, atria; a small drift between studies); each
    study has its own probe pose, gain, TGC, sector, heart rate; each video its own speckle and tissue
    texture. fps_spread: EchoNet-like frame rates (most videos at `fps`, the rest 30-100) instead of one.
    codec "mjpeg" or "mpeg4" (tag XVID) write .avi, "libx264" writes .mp4. The summary's `with_overlay` lists the videos with
    burned-in text outside the sector, `with_device` those showing a pacemaker lead, `sectors` each
    video's sector (half-angle in degrees, depth as a share of the frame).
    """
    _check(patients, videos_per_patient, studies_per_patient, seed, frames, fps, size, codec)
    out = Path(out)
    videos_dir = out / "Videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    cohort = plan_cohort(patients, videos_per_patient, studies_per_patient, seed, fps, fps_spread)
    labels = _write_videos(cohort, videos_dir, frames, size, codec)
    paths = {"file_list": out / "FileList.csv", "volume_tracings": out / "VolumeTracings.csv",
             "reports": out / "reports.csv"}
    file_rows = [[name, _num(labels[name].ef), _num(labels[name].esv), _num(labels[name].edv), size, size,
                  f"{take.fps:g}", frames, study.split, study.patient_id, study.study_id]
                 for study in cohort for name, take in study.takes]
    _write_csv(paths["file_list"], FILE_LIST_COLUMNS, file_rows)
    _write_csv(paths["volume_tracings"], TRACING_COLUMNS,
               [[f"{name}{CODEC_SUFFIX[codec]}", *map(_num, row), frame] for study in cohort for name, _ in study.takes
                for frame, trace in labels[name].traces.items() for row in trace])
    _write_csv(paths["reports"], REPORT_COLUMNS, [[f"{study.study_id}-R", study.study_id, study.patient_id,
                                                   _report(study.heart, [labels[name] for name, _ in study.takes])]
                                                  for study in cohort])
    splits = [row[8] for row in file_rows]
    return {
        "root": out, "videos_dir": videos_dir, **paths,
        "patients": patients, "studies": len(cohort), "videos": len(file_rows),
        "frames": frames, "fps": fps, "fps_spread": fps_spread, "size": size, "codec": codec,
        "pixel_spacing_cm": PIXEL_SPACING_CM * REF_SIZE / size,
        "splits": {s: splits.count(s) for s in ("TRAIN", "VAL", "TEST")},
        "with_overlay": [name for study in cohort for name, take in study.takes if take.overlay],
        "with_device": [name for study in cohort for name, _ in study.takes if study.heart.device],
        "sectors": {name: take.sector for study in cohort for name, take in study.takes},
    }


def _write_videos(cohort: list[_Study], videos_dir: Path, frames: int, size: int, codec: str) -> dict[str, _Labels]:
    """Draw and encode every video; FFmpeg encodes one video while the next is drawn."""
    labels: dict[str, _Labels] = {}
    pending: Future | None = None
    with ThreadPoolExecutor(max_workers=1) as writer:
        for study in cohort:
            for name, take in study.takes:
                grey, labels[name] = _render(study.heart, take, frames, size)
                if pending is not None:
                    pending.result()  # at most one drawn video waits in memory
                pending = writer.submit(write_video, videos_dir / f"{name}{CODEC_SUFFIX[codec]}", grey, take.fps, codec)
        pending.result()
    return labels


def fan_mask(size: int = REF_SIZE, half_angle_deg: float = FAN_HALF_ANGLE_DEG,
             depth_fraction: float = FAN_RADIUS) -> np.ndarray:
    """Boolean [size, size] mask of a phantom sector (True inside): by default the widest and deepest,
    which holds every study's; a video's own is fan_mask(size, *summary["sectors"][FileName])."""
    return _fan(size, half_angle_deg, depth_fraction).mask >= 0.5


def render_cohort(patients: int, videos_per_patient: int, studies_per_patient: int, seed: int, frames: int,
                  fps: float, size: int, overlay: bool | None = None, reference: bool = False) -> Iterator[dict]:
    """Each video of the cohort `make_phantom` would write, drawn in memory (grey uint8 [T, size, size]).

    Why: other writers (datasets/phantom_dicom.py: DICOM cines on a scanner screen) reuse the same
    anatomy and labels. `overlay` False/True forces the in-sector overlay off/on (None: as planned);
    `reference` draws every video with the reference acquisition (the widest sector, `fan_mask()`; no
    gain or TGC offset), as a scanner screen with a fixed image region and preset shows it, instead of
    the study's own sector, gain and TGC (anatomy, timing and speckle stay the video's own). Each
    video's "sector" is the (half-angle, depth) it was drawn with: `fan_mask(size, *sector)` is its fan.
    """
    _check(patients, videos_per_patient, studies_per_patient, seed, frames, fps, size, "mjpeg")
    for study in plan_cohort(patients, videos_per_patient, studies_per_patient, seed, fps, False):
        for name, take in study.takes:
            take = take if overlay is None else replace(take, overlay=overlay)
            if reference:
                take = replace(take, sector=(FAN_HALF_ANGLE_DEG, FAN_RADIUS), gain_db=0.0, tgc_db=(0.0, 0.0, 0.0))
            grey, labels = _render(study.heart, take, frames, size)
            yield {"name": name, "patient_id": study.patient_id, "study_id": study.study_id, "split": study.split,
                   "frames": grey, "ef": labels.ef, "heart_rate": study.heart.heart_rate, "sector": take.sector}


def disk_volume_ml(length: float, diameters: np.ndarray, spacing_cm: float) -> float:
    """Simpson's single-plane method of disks: sum of pi (d/2)^2 * L / n over the n chords."""
    diameters = np.asarray(diameters, dtype=float)
    return float(np.sum(np.pi * (diameters / 2) ** 2) * length / len(diameters) * spacing_cm ** 3)


# ---------------------------------------------------------------------------------------------
# cohort plan


def _check(patients: int, videos: int, studies: int, seed: int, frames: int, fps: float, size: int,
           codec: str) -> None:
    if min(patients, videos, studies) < 1:
        raise BadInput("patients, videos_per_patient and studies_per_patient must each be at least 1")
    if videos < studies:
        raise BadInput(f"{videos} videos per patient cannot fill {studies} studies; every study needs a video")
    if seed < 0:
        raise BadInput(f"seed must be a non-negative integer, got {seed}")
    if frames < 2 or not fps > 0:
        raise BadInput(f"need at least 2 frames and a positive frame rate, got {frames} frames at {fps} fps")
    if not 32 <= size <= 1024 or size % 2:
        raise BadInput(f"size must be an even number of pixels from 32 to 1024 (4:2:0 video), got {size}")
    if codec not in CODEC_SUFFIX:
        raise BadInput(f"codec {codec!r} is not supported; use one of {', '.join(CODEC_SUFFIX)}")


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per (seed, purpose, index...): adding videos never reshuffles others."""
    return np.random.default_rng([seed, *keys])


def plan_cohort(patients: int, videos: int, studies: int, seed: int, fps: float = 50.0, fps_spread: bool = False) -> list[_Study]:
    """Patients with their studies and takes (a patient's videos spread evenly over the studies);
    EF classes and splits are stratified by patient."""
    order = _rng(seed, 0).permutation(patients)
    n_low = max(1, round(_LOW_EF_SHARE * patients)) if patients >= 2 else int(_rng(seed, 1).random() < _LOW_EF_SHARE)
    low_ef = set(order[:n_low].tolist())
    splits = split_patients(patients, low_ef, _rng(seed, 2))
    names: set[str] = set()
    cohort = []
    for p in range(patients):
        heart = _draw_heart(_rng(seed, 3, p), p in low_ef)
        patient_id = f"PAT{p + 1:05d}"
        for k in range(studies):
            if k:
                heart = _follow_up(heart, _rng(seed, 4, p, k))
            setup = _study_setup(_rng(seed, 5, p, k), heart.heart_rate)
            takes = tuple((_file_name(_rng(seed, 6, p, k, i), names),
                           _draw_take(_rng(seed, 7, p, k, i), setup, _video_fps(_rng(seed, 8, p, k, i), fps, fps_spread)))
                          for i in range(videos // studies + (k < videos % studies)))
            cohort.append(_Study(patient_id, f"{patient_id}-S{k + 1}", splits[p],
                                 replace(heart, heart_rate=setup.heart_rate), takes))
    return cohort


def split_patients(patients: int, low_ef: set[int], rng: np.random.Generator) -> list[str]:
    """TRAIN/VAL/TEST by patient, about 75/12.5/12.5, each non-empty from 4 patients up, stratified by EF class.

    TRAIN keeps at least one patient of each class; a VAL or TEST split of two or more patients holds
    both classes when there are patients to spare, so a classifier trained on a small cohort can be
    selected on VAL and scored on TEST.
    """
    n_held = round(patients / 8)
    if patients >= 4:
        n_held = max(1, n_held)
    order = rng.permutation(patients).tolist()
    low, high = [p for p in order if p in low_ef], [p for p in order if p not in low_ef]
    split = ["TRAIN"] * patients
    for name in ("TEST", "VAL"):
        spare_low, spare_high = max(len(low) - 1, 0), max(len(high) - 1, 0)  # one of each stays in TRAIN
        n_low = min(round(n_held * len(low_ef) / patients), spare_low)
        if n_held >= 2 and spare_low and spare_high:
            n_low = min(max(n_low, 1), n_held - 1)
        n_high = min(n_held - n_low, spare_high)
        n_low = min(n_held - n_high, spare_low)
        if n_low + n_high < n_held:  # too few to spare: fill the split anyway
            n_high = min(n_held - n_low, len(high))
            n_low = min(n_held - n_high, len(low))
        for p in low[:n_low] + high[:n_high]:
            split[p] = name
        low, high = low[n_low:], high[n_high:]
    return split


def _file_name(rng: np.random.Generator, taken: set[str]) -> str:
    """EchoNet-style id: 0X and 16 upper-case hex digits."""
    while True:
        name = "0X" + rng.bytes(8).hex().upper()
        if name not in taken:
            taken.add(name)
            return name


def _draw_heart(rng: np.random.Generator, low_ef: bool) -> _Heart:
    """A patient: failing ventricles tend to be dilated; everything else varies independently."""
    ef = rng.uniform(15, 49) if low_ef else rng.uniform(51, 75)
    dilation = rng.uniform(0.25, 1.0) if low_ef else rng.uniform(0.0, 0.6)
    wall = rng.uniform(3.5, 7.0)
    return _Heart(
        ef=ef, heart_rate=rng.uniform(50, 110),
        lv_length=48 + 18 * dilation + rng.normal(0, 1.5), lv_width=26 + 16 * dilation + rng.normal(0, 1.2),
        bluntness=rng.uniform(0.2, 0.8), tilt=math.radians(rng.uniform(6, 14)),
        apex=(2.5 + rng.normal(0, 1.0), 13 + rng.normal(0, 0.8)), wall=wall, septum=wall * rng.uniform(0.9, 1.2),
        rv_length=rng.uniform(0.72, 0.85), rv_width=rng.uniform(0.65, 0.85),
        la_size=(rng.uniform(0.8, 1.0), rng.uniform(0.45, 0.65)),
        ra_size=(rng.uniform(0.85, 1.05), rng.uniform(0.4, 0.6)),
        device=bool(rng.random() < _DEVICE_SHARE),
    )


def _follow_up(heart: _Heart, rng: np.random.Generator) -> _Heart:
    """A later study of the same patient: EF drifts a few points, the anatomy a little, sometimes a device appears."""
    thicken = 1 + rng.normal(0, 0.03)
    return replace(heart, ef=float(np.clip(heart.ef + rng.normal(0, 3.0), 12, 78)),
                   lv_length=heart.lv_length * (1 + rng.normal(0, 0.015)),
                   lv_width=heart.lv_width * (1 + rng.normal(0, 0.015)),
                   bluntness=float(np.clip(heart.bluntness + rng.normal(0, 0.03), 0.1, 0.9)),
                   wall=heart.wall * thicken, septum=heart.septum * thicken,
                   la_size=tuple(x * (1 + rng.normal(0, 0.03)) for x in heart.la_size),
                   ra_size=tuple(x * (1 + rng.normal(0, 0.03)) for x in heart.ra_size),
                   device=heart.device or bool(rng.random() < _NEW_DEVICE_SHARE))


def _study_setup(rng: np.random.Generator, resting_rate: float) -> _Setup:
    """A study's probe pose, machine settings and heart rate: the day's set-up, around which its videos vary."""
    return _Setup(rotation=float(np.clip(rng.normal(0, math.radians(7.0)), -math.radians(14), math.radians(14))),
                  shift=(float(np.clip(rng.normal(0, 5.0), -9, 9)), float(np.clip(rng.normal(0, 4.0), -4, 8))),
                  gain_db=rng.normal(0, 5.0), tgc_db=tuple(float(x) for x in rng.normal(0, 4.0, 3)),
                  sector=(rng.uniform(34.0, FAN_HALF_ANGLE_DEG), rng.uniform(0.80, FAN_RADIUS)),
                  heart_rate=float(np.clip(resting_rate + rng.normal(0, 12), 45, 120)))


def _video_fps(rng: np.random.Generator, fps: float, spread: bool) -> float:
    """`fps`, or with spread an EchoNet-like rate: 70% at `fps`, the rest 30-100 frames per second."""
    return fps if not spread or rng.random() < 0.7 else float(rng.integers(30, 101))


def _draw_take(rng: np.random.Generator, setup: _Setup, fps: float) -> _Take:
    """One video of a study: small probe movements around the study's pose, new noise, texture and timing."""
    return _Take(rotation=setup.rotation + rng.normal(0, math.radians(1.0)),
                 shift=(setup.shift[0] + rng.normal(0, 0.8), setup.shift[1] + rng.normal(0, 0.8)),
                 gain_db=setup.gain_db + rng.normal(0, 0.8), tgc_db=setup.tgc_db, sector=setup.sector, fps=fps,
                 texture_seed=int(rng.integers(2 ** 32)),
                 phase=rng.random(), foreshortening=rng.uniform(0.94, 1.0),
                 squeeze=1 + rng.normal(0, 0.03), overlay=bool(rng.random() < _OVERLAY_SHARE),
                 seed=int(rng.integers(2 ** 32)))


# ---------------------------------------------------------------------------------------------
# timing and labels


def _activation(phase: np.ndarray, systole: float) -> np.ndarray:
    """0 at end-diastole, 1 at end-systole: ejection, rapid filling, diastasis, atrial kick."""
    knots = np.array([0.0, systole, systole + 0.3 * (1 - systole), 0.85, 1.0])
    values = np.array([0.0, 1.0, 0.25, 0.15, 0.0])
    i = np.clip(np.searchsorted(knots, phase, side="right") - 1, 0, 3)
    u = (phase - knots[i]) / (knots[i + 1] - knots[i])
    return values[i] + (values[i + 1] - values[i]) * (0.5 - 0.5 * np.cos(np.pi * u))


def _cycle(heart: _Heart, take: _Take, frames: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Per frame: contraction state (quantised) and whether the AV valves are shut; and the traced
    end-diastolic and end-systolic frames (one beat, as in EchoNet).

    The first end-diastole falls early enough for its systole to fit in the clip; a clip shorter than
    one systole shows part of it, and its traced frames are its fullest and emptiest.
    """
    beat = 60 * take.fps / heart.heart_rate
    start = take.phase * min(beat, max(frames - 1 - heart.systole * beat, 0))
    phase = ((np.arange(frames) - start) / beat) % 1
    state = (np.rint(_activation(phase, heart.systole) * (_LEVELS - 1)) / (_LEVELS - 1)).astype(np.float32)
    shut = (phase < heart.systole + 0.03) | (phase > 0.98)  # AV valves close at end-diastole
    ed, es = round(start), round(start + heart.systole * beat)
    if es >= frames:
        ed, es = int(np.argmin(state)), int(np.argmax(state))
    return state, shut, (ed, es)


def _lv_size(heart: _Heart, take: _Take, state: np.ndarray | float) -> tuple:
    """LV long axis and basal width drawn at a contraction state (apex fixed, base moves up)."""
    length = heart.lv_length * take.foreshortening * (1 - heart.long_shortening * state)
    width = heart.lv_width * (1 - heart.width_shortening * take.squeeze * state)
    return length, width


def _profile(x: np.ndarray, bluntness: float) -> np.ndarray:
    """1 - (half-width / max half-width)^2 at x = 1 - s/L (0 at the base, 1 at the apex).

    bluntness 0 is a half-ellipse, 1 a bullet (straight sides, round apex), negative tapers.
    """
    return x * x * ((1 - bluntness) + bluntness * x)


def _chords(length: float, width: float, bluntness: float) -> tuple[np.ndarray, np.ndarray]:
    """Disk centres along the long axis and the drawn cavity's diameter there."""
    s = (np.arange(N_DISKS) + 0.5) / N_DISKS * length
    return s, 2 * _half_width(s, length, width, bluntness)


def _trace(pose: _Pose, length: float, width: float, bluntness: float) -> np.ndarray:
    """EchoNet-style tracing rows: the long axis (apex to mitral midpoint), then the chords apex to base."""
    s, diameters = _chords(length, width, bluntness)
    ax, ay = pose.to_image(np.array([0.0, length]), np.zeros(2))
    x1, y1 = pose.to_image(s, -diameters / 2)
    x2, y2 = pose.to_image(s, diameters / 2)
    return np.vstack([[ax[0], ay[0], ax[1], ay[1]], np.stack([x1, y1, x2, y2], axis=1)])


def _volume(length: float, width: float, bluntness: float) -> float:
    _, diameters = _chords(length, width, bluntness)
    return disk_volume_ml(length, diameters, PIXEL_SPACING_CM)


# ---------------------------------------------------------------------------------------------
# drawing


@lru_cache(maxsize=64)
def _fan(size: int, half_angle_deg: float = FAN_HALF_ANGLE_DEG, depth_fraction: float = FAN_RADIUS) -> _Fan:
    """The sector: apex at the top centre, black outside; 84 degrees wide and 93% of the frame deep at
    most (a study may use a narrower, shallower one)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = x - (size - 1) / 2, y - FAN_APEX_Y * size
    radius, angle = np.hypot(dx, dy), np.arctan2(dx, dy)
    depth = depth_fraction * size
    inside = np.minimum((math.radians(half_angle_deg) - np.abs(angle)) * radius, depth - radius)
    fan = _Fan(np.clip(inside + 0.5, 0, 1), radius, angle, depth, inside < -2)
    for array in (fan.mask, fan.radius, fan.angle, fan.outside):
        array.setflags(write=False)
    return fan


@lru_cache(maxsize=8)
def _grid(size: int, sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of a grid `sub` times coarser than the frame."""
    centres = np.arange(math.ceil(size / sub), dtype=np.float32) * sub + (sub - 1) / 2
    y, x = np.meshgrid(centres, centres, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _pose(heart: _Heart, take: _Take, size: int) -> _Pose:
    """The probe's rotation turns the heart about the fan apex; its shift slides it."""
    scale = size / REF_SIZE
    c, s = math.cos(take.rotation), math.sin(take.rotation)
    hx, hy = heart.apex
    apex = ((size - 1) / 2 + scale * (hx * c + hy * s + take.shift[0]),
            FAN_APEX_Y * size + scale * (-hx * s + hy * c + take.shift[1]))
    theta = heart.tilt + take.rotation
    return _Pose(apex, (math.sin(theta), math.cos(theta)), (math.cos(theta), -math.sin(theta)), scale)


def _ramp(distance: np.ndarray, soft: float) -> np.ndarray:
    """Soft inside-mask from an (approximate) signed distance, positive inside."""
    return np.clip(distance / soft + 0.5, 0, 1)


def _half_width(s, length, width, bluntness: float) -> np.ndarray:
    """Half-width at s of a chamber with its apex at s = 0 and its base (full width) at s = length;
    zero beyond the apex and full width past the base."""
    x = np.clip(1 - s / length, 0, 1)
    return width / 2 * np.sqrt(1 - _profile(x, bluntness))


def _ventricle(s, v, half, base, soft: float) -> np.ndarray:
    """Soft mask of |v| < half (an axis-symmetric chamber) up to its base at s = `base`."""
    return np.minimum(_ramp(half - np.abs(v), soft), _ramp(base - s, soft))


def _ellipse(s, v, centre_s, centre_v, half_s, half_v, soft: float) -> np.ndarray:
    f = ((s - centre_s) / half_s) ** 2 + ((v - centre_v) / half_v) ** 2
    return _ramp((1 - f) * np.minimum(half_s, half_v) / 2, soft)


def _segment(s, v, start: tuple, end: tuple, half_thickness: float, soft: float) -> np.ndarray:
    """A thick line from `start` to `end` (each an (s, v) pair of scalars or broadcastable arrays)."""
    ds, dv = end[0] - start[0], end[1] - start[1]
    ps, pv = s - start[0], v - start[1]
    t = np.clip((ps * ds + pv * dv) / (ds * ds + dv * dv + 1e-6), 0, 1)
    ps -= t * ds
    pv -= t * dv
    return _ramp(half_thickness - np.sqrt(ps * ps + pv * pv), soft)


def _blend(image: np.ndarray, level: float, mask: np.ndarray) -> np.ndarray:
    return image + (level - image) * mask


def _right_ventricle(heart: _Heart, take: _Take, state) -> tuple:
    """RV apex and base positions along the LV axis, its basal width and the septal thickness.

    The RV is a crescent on the septum: its septal side is the LV's septal wall, its apex stays put
    and its base (the tricuspid annulus) moves with the mitral annulus.
    """
    apex = _lv_size(heart, take, 0.0)[0] - 2 - heart.rv_length * heart.lv_length
    base = _lv_size(heart, take, state)[0] - 2
    width = heart.rv_width * heart.lv_width * (1 - 0.15 * state)
    return apex, base, width, heart.septum * (1 + 0.3 * state)


def _chambers(s, v, heart: _Heart, take: _Take, state: np.ndarray, soft: float) -> np.ndarray:
    """Linear echo intensity of the four chambers and their walls, one image per state [S, h, w]."""
    state = state[:, None, None]
    length, width = _lv_size(heart, take, state)
    wall = heart.wall * (1 + 0.3 * state)  # myocardium thickens as it contracts
    tip = 0.8 * wall
    blunt = heart.bluntness
    half = _half_width(s, length, width, blunt)
    lv = _ventricle(s, v, half, length, soft)
    lv_wall = _ventricle(s, v, _half_width(s + tip, length + tip, width + 2 * wall, blunt), length + 1.5, soft)
    pericardium = _ventricle(s, v, _half_width(s + tip + 1.5, length + tip + 1.5, width + 2 * wall + 3, blunt),
                             length, soft)
    rv_apex, rv_base, rv_width, septum = _right_ventricle(heart, take, state)
    septal = -half - septum
    free = septal - _half_width(s - rv_apex, rv_base - rv_apex, 2 * rv_width, _RV_BLUNTNESS)
    rv = np.minimum(np.minimum(_ramp(septal - v, soft), _ramp(v - free, soft)), _ramp(rv_base - s, soft))
    rv_wall = np.minimum(np.minimum(_ramp(-half - v, soft), _ramp(v - free + 2.5, soft)),
                         np.minimum(_ramp(rv_base + 1.5 - s, soft), _ramp(s - rv_apex + 2.5, soft)))
    la_width, la_depth = _atrium_size(heart.la_size, heart.lv_width, heart, state)
    ra_width, ra_depth = _atrium_size(heart.ra_size, heart.rv_width * heart.lv_width, heart, state)
    atrial_septum = -heart.lv_width / 2 - heart.septum / 2  # in line with the ventricular septum; thin
    la, la_wall = _atrium(s, v, length, atrial_septum + 1.2 + la_width / 2, la_width, la_depth, soft)
    ra, ra_wall = _atrium(s, v, rv_base, atrial_septum - 1.2 - ra_width / 2, ra_width, ra_depth, soft)
    atrial_walls = np.maximum(la_wall, ra_wall)
    image = _blend(np.full(lv.shape, _BACKGROUND, np.float32), _PERICARDIUM, pericardium)
    image = _blend(image, _MYOCARDIUM, np.maximum(np.maximum(lv_wall, rv_wall), atrial_walls))
    return _blend(image, _BLOOD, np.maximum(np.maximum(lv, rv), np.maximum(la, ra)))


def _atrium_size(fractions: tuple[float, float], ventricle_width: float, heart: _Heart, state) -> tuple:
    """An atrium's width and depth: smallest at end-diastole, filling while the ventricles eject."""
    grow = 1 + 0.12 * state
    return fractions[0] * ventricle_width * grow, fractions[1] * heart.lv_length * grow


def _atrium(s, v, annulus, centre, width, depth, soft: float) -> tuple[np.ndarray, np.ndarray]:
    """An atrium below its valve annulus, widest a little beyond it (the AV junction is a waist):
    cavity and wall masks. It starts just inside the annulus so that blood runs through the open valve."""
    mid, half_depth = annulus + _ATRIUM_CENTRE * depth, (1 - _ATRIUM_CENTRE) * depth
    open_side = _ramp(s - annulus + 1, soft)
    cavity = np.minimum(_ellipse(s, v, mid, centre, half_depth, width / 2, soft), open_side)
    wall = np.minimum(_ellipse(s, v, mid, centre, half_depth + 1.5, width / 2 + 1.5, soft), open_side)
    return cavity, wall


def _leaflets(s, v, length, width, shut, soft: float) -> np.ndarray:
    """Two valve leaflets hinged on the annulus: bowed just atrial of it when shut, along the walls when open."""
    out = 0.0
    for side, reach in ((-1, 0.42), (1, 0.30)):
        tip_s = np.where(shut, length + 2.5, length - reach * width)
        tip_v = np.where(shut, 0.1 * width, side * 0.38 * width)
        out = np.maximum(out, _segment(s, v, (length, side * width / 2), (tip_s, tip_v), 0.55, soft))
    return out


def _draw_valves(linear: np.ndarray, s, v, pose: _Pose, heart: _Heart, take: _Take, state: np.ndarray,
                 shut: np.ndarray) -> None:
    """Mitral and tricuspid leaflets at full resolution, in place, only in windows around each annulus."""
    soft, state, shut = 1 / pose.scale, state[:, None, None], shut[:, None, None]
    length, width = _lv_size(heart, take, state)
    _, rv_base, rv_width, septum = _right_ventricle(heart, take, state)
    (length_ed, width_ed), (length_es, width_es) = _lv_size(heart, take, 0.0), _lv_size(heart, take, 1.0)
    rv_width_ed = heart.rv_width * heart.lv_width
    size = linear.shape[-1]
    rows, cols = _window(pose, (length_es - 0.45 * width_ed - 4, length_ed + 6), (-width_ed / 2 - 4, width_ed / 2 + 4),
                         size)
    block = linear[:, rows, cols]
    np.maximum(block, _VALVE * _leaflets(s[rows, cols], v[rows, cols], length, width, shut, soft), out=block)
    rows, cols = _window(pose, (length_es - 0.45 * rv_width_ed - 6, length_ed + 6),
                         (-width_ed / 2 - 1.3 * heart.septum - rv_width_ed - 5, -width_es / 2 - heart.septum + 5), size)
    block = linear[:, rows, cols]
    centre = -width / 2 - septum - rv_width / 2
    np.maximum(block, _VALVE * _leaflets(s[rows, cols], v[rows, cols] - centre, rv_base, rv_width, shut, soft),
               out=block)


def _window(pose: _Pose, s_range: tuple, v_range: tuple, size: int) -> tuple[slice, slice]:
    """Image rows and columns covering a box of the LV frame (small parts need not touch the whole frame)."""
    s, v = np.meshgrid(np.asarray(s_range, float), np.asarray(v_range, float))
    x, y = pose.to_image(s, v)
    return (slice(max(0, math.floor(y.min())), max(0, min(size, math.ceil(y.max()) + 1))),
            slice(max(0, math.floor(x.min())), max(0, min(size, math.ceil(x.max()) + 1))))


def _lead(s, v, heart: _Heart, take: _Take, soft: float) -> np.ndarray:
    """A pacemaker lead: from deep in the right atrium, through the tricuspid valve, along the septum
    to the RV apex."""
    length, width = _lv_size(heart, take, 0.0)
    rv_apex, rv_base, rv_width, septum = _right_ventricle(heart, take, 0.0)

    def in_rv(fraction: float, across: float) -> np.ndarray:
        """A point `fraction` of the way from RV apex to base, `across` of the way from septum to free wall."""
        at = rv_apex + fraction * (rv_base - rv_apex)
        septal = -_half_width(at, length, width, heart.bluntness) - septum
        span = _half_width(at - rv_apex, rv_base - rv_apex, 2 * rv_width, _RV_BLUNTNESS)
        return np.array([at, septal - across * span])

    start = np.array([rv_base + 0.7 * heart.ra_size[1] * heart.lv_length, -width / 2 - septum - 0.6 * rv_width])
    bend, end = in_rv(0.8, 0.35), in_rv(0.15, 0.5)
    u = np.linspace(0, 1, 16)[:, None]
    points = (1 - u) ** 2 * start + 2 * (1 - u) * u * bend + u ** 2 * end
    out = np.zeros(s.shape, np.float32)
    for a, b in zip(points[:-1], points[1:]):
        out = np.maximum(out, _segment(s, v, tuple(a), tuple(b), 0.6, soft))
    return _LEAD * out


def _upsample(images: np.ndarray, size: int, sub: int) -> np.ndarray:
    """Bilinear from the coarse grid of `_grid` back to full resolution [S, size, size]."""
    n = images.shape[-1]
    src = np.clip((np.arange(size, dtype=np.float32) - (sub - 1) / 2) / sub, 0, n - 1)
    lo = np.minimum(src.astype(int), n - 2)
    w = (src - lo).astype(np.float32)
    rows = images[:, lo] * (1 - w)[:, None] + images[:, lo + 1] * w[:, None]
    return rows[:, :, lo] * (1 - w) + rows[:, :, lo + 1] * w


def _texture_db(s: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Slowly varying tissue brightness (moves with the probe), drawn anew for every video."""
    field = gaussian_filter(np.random.default_rng(seed).standard_normal((96, 96)), 4)
    field *= 3.0 / (field.std() + 1e-9)
    coords = np.stack([(s + 60) / 2.5, (v + 120) / 2.5])  # covers s in [-60, 180), v in [-120, 120)
    return map_coordinates(field, coords, order=1, mode="nearest").astype(np.float32)


@lru_cache(maxsize=8)
def _polar_taps(size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Bilinear taps from each pixel into a polar (depth x beam) grid: indices, weights, grid shape."""
    fan = _fan(size)
    n_r, n_a = size, max(8, size // 2)
    half = math.radians(FAN_HALF_ANGLE_DEG)
    r = np.clip(fan.radius / fan.depth * (n_r - 1), 0, n_r - 1).ravel()
    a = np.clip((fan.angle + half) / (2 * half) * (n_a - 1), 0, n_a - 1).ravel()
    r0, a0 = np.minimum(r.astype(int), n_r - 2), np.minimum(a.astype(int), n_a - 2)
    fr, fa = (r - r0).astype(np.float32), (a - a0).astype(np.float32)
    index = np.stack([r0 * n_a + a0, r0 * n_a + a0 + 1, (r0 + 1) * n_a + a0, (r0 + 1) * n_a + a0 + 1])
    weight = np.stack([(1 - fr) * (1 - fa), (1 - fr) * fa, fr * (1 - fa), fr * fa])
    return index, weight, (n_r, n_a)


def _speckle_fields(rng: np.random.Generator, size: int) -> np.ndarray:
    """Three independent complex Gaussian speckle fields [6, H*W] (real parts, then imaginary).

    Why this way: |complex Gaussian|^2 is the physics of fully developed speckle, and drawing it on
    the polar (beam) grid makes it coarser laterally with depth, like a scan-converted sector.
    """
    index, weight, shape = _polar_taps(size)
    polar = gaussian_filter(rng.standard_normal((6, *shape)).astype(np.float32), sigma=(0, 0.7, 0.9)).reshape(6, -1)
    sampled = sum(weight[k] * polar[:, index[k]] for k in range(4))
    return sampled / np.sqrt(2 * (sampled ** 2).mean(axis=1, keepdims=True))


def _speckle_mix(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Unit weights [T, 3] turning slowly through the three fields: speckle decorrelates over ~10
    frames and no frame repeats an earlier one."""
    t = np.arange(frames)
    alpha, beta = rng.uniform(0, 2 * np.pi) + 0.12 * t, rng.uniform(0, 2 * np.pi) + 0.09 * t
    return np.stack([np.cos(alpha), np.sin(alpha) * np.cos(beta), np.sin(alpha) * np.sin(beta)], 1).astype(np.float32)


def _speckle_db(fields: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """Speckle power in dB (mean power 1) for the frames whose weights are `mix`, [t, H*W]."""
    power = _combine(mix, fields[:3])
    power *= power
    imag = _combine(mix, fields[3:])
    imag *= imag
    power += imag
    power += 1e-4
    np.log(power, out=power)
    power *= 10 / math.log(10)
    return power


def _combine(weights: np.ndarray, fields: np.ndarray) -> np.ndarray:
    out = weights[:, :1] * fields[0]
    for k in range(1, len(fields)):
        out += weights[:, k:k + 1] * fields[k]
    return out


def _overlay(rng: np.random.Generator, fan: _Fan, heart: _Heart, size: int) -> np.ndarray:
    """Burned-in text, an ECG strip and depth ticks outside the sector, as scanners print them."""
    image = np.zeros((size, size), np.float32)
    for x0, y0 in ((2, 2), (2, 9), (size - 26, 2)):
        glyphs = rng.random((6, 5, 3)) < 0.55
        for i, glyph in enumerate(glyphs):
            image[y0:y0 + 5, x0 + 4 * i:x0 + 4 * i + 3] = np.where(glyph, 230, 0)[: size - y0, : size - x0 - 4 * i]
    image = np.maximum(image, _ecg(rng, heart, size))
    spacing_px = PIXEL_SPACING_CM / (size / REF_SIZE)
    ticks = np.arange(1, fan.depth * spacing_px) / spacing_px
    angle = math.radians(FAN_HALF_ANGLE_DEG + 4)
    tx = np.rint((size - 1) / 2 + ticks * math.sin(angle)).astype(int)
    ty = np.rint(FAN_APEX_Y * size + ticks * math.cos(angle)).astype(int)
    keep = (tx >= 0) & (tx < size) & (ty >= 0) & (ty < size)
    image[ty[keep], tx[keep]] = 255
    return (image * fan.outside).astype(np.uint8)


def _ecg(rng: np.random.Generator, heart: _Heart, size: int) -> np.ndarray:
    """A static ECG strip along the bottom: 2.5 s of P-QRS-T at the patient's rate."""
    x = np.arange(size)
    phase = (x / size * 2.5 * heart.heart_rate / 60 + rng.random()) % 1

    def bump(centre: float, width: float) -> np.ndarray:
        return np.exp(-(((phase - centre + 0.5) % 1 - 0.5) / width) ** 2)

    wave = bump(0.0, 0.012) - 0.2 * bump(0.035, 0.012) + 0.25 * bump(0.3, 0.05) + 0.12 * bump(0.9, 0.03)
    y = size - 5 - 0.06 * size * wave
    lo = np.floor(np.minimum(y, np.roll(y, 1)))
    hi = np.ceil(np.maximum(y, np.roll(y, 1)))
    lo[0], hi[0] = np.floor(y[0]), np.ceil(y[0])
    rows = np.arange(size)[:, None]
    return np.where((rows >= lo) & (rows <= hi), 180, 0).astype(np.float32)


def _display(display: np.ndarray, inverse: np.ndarray, fields: np.ndarray, mix: np.ndarray,
             mask: np.ndarray) -> np.ndarray:
    """Add speckle to each frame's state image, log-compress to 0-255 and blank outside the fan.

    Works in chunks of frames, in place: small temporaries stay in cache and memory stays bounded
    for long videos.
    """
    out = np.empty((len(inverse), display.shape[1]), np.uint8)
    for start in range(0, len(inverse), _CHUNK):
        part = _speckle_db(fields, mix[start:start + _CHUNK])
        part *= 255 / _RANGE_DB
        part += display[inverse[start:start + _CHUNK]]
        np.clip(part, 0, 255, out=part)
        part *= mask
        out[start:start + len(part)] = part
    return out


def _render(heart: _Heart, take: _Take, frames: int, size: int) -> tuple[np.ndarray, _Labels]:
    """Draw one video (uint8 grey [T, H, W]) and measure its labels from the very shapes drawn."""
    fan, pose = _fan(size, *take.sector), _pose(heart, take, size)
    rng = np.random.default_rng(take.seed)
    state, shut, (ed, es) = _cycle(heart, take, frames)
    keys, key_of_frame = np.unique(np.rint(state * (_LEVELS - 1)).astype(int) * 2 + shut, return_inverse=True)
    s, v = pose.lv_coords(*_grid(size, 1))
    display = _state_display(_state_images(keys, s, v, pose, heart, take), s, v, take, fan)
    grey = _display(display.reshape(len(keys), -1), key_of_frame.ravel(), _speckle_fields(rng, size),
                    _speckle_mix(rng, frames), fan.mask.ravel()).reshape(frames, size, size)
    if take.overlay:
        grey = np.maximum(grey, _overlay(rng, fan, heart, size))
    traces = {f: _trace(pose, *_lv_size(heart, take, float(state[f])), heart.bluntness) for f in (es, ed)}
    edv, esv = (_volume(*_lv_size(heart, take, float(state[f])), heart.bluntness) for f in (ed, es))
    return grey, _Labels(traces, esv, edv)


def _state_images(keys: np.ndarray, s, v, pose: _Pose, heart: _Heart, take: _Take) -> np.ndarray:
    """Linear intensity [K, H, W] for each (contraction level, valves shut) key = 2 * level + shut.

    The chambers are drawn once per level at half resolution; the thin leaflets and lead at full.
    """
    size = s.shape[-1]
    levels = np.unique(keys // 2)
    s_half, v_half = pose.lv_coords(*_grid(size, _SUB))
    chambers = _chambers(s_half, v_half, heart, take, (levels / (_LEVELS - 1)).astype(np.float32), 1.5 / pose.scale)
    linear = _upsample(chambers, size, _SUB)[np.searchsorted(levels, keys // 2)]
    _draw_valves(linear, s, v, pose, heart, take, (keys // 2 / (_LEVELS - 1)).astype(np.float32), keys % 2 == 1)
    if heart.device:
        np.maximum(linear, _lead(s, v, heart, take, soft=1 / pose.scale), out=linear)
    return linear


def _state_display(linear: np.ndarray, s, v, take: _Take, fan: _Fan) -> np.ndarray:
    """Log-compress state images to display units (0-255 before speckle), in place: near-field
    clutter, tissue texture, gain, time-gain compensation and depth attenuation as a scanner shows them."""
    size = fan.mask.shape[0]
    linear += _CLUTTER * np.exp(-fan.radius / (0.06 * size))
    display = np.log(linear, out=linear)
    display *= 20 / math.log(10)
    depth = fan.radius / (FAN_RADIUS * size)  # attenuation is physical: per reference depth, not per sector depth
    tgc = np.interp(depth, (0.0, 0.5, 1.0), take.tgc_db).astype(np.float32)
    display += _texture_db(s, v, take.texture_seed) + take.gain_db + tgc - _DEPTH_LOSS_DB * depth + _RANGE_DB - _TOP_DB
    display *= 255 / _RANGE_DB
    return display


# ---------------------------------------------------------------------------------------------
# files


def _write_csv(path: Path, header: tuple[str, ...], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _num(value: float) -> str:
    return f"{float(value):.4f}"


def _report(heart: _Heart, videos: list[_Labels]) -> str:
    """An upper-case echo report stating what the study's videos show."""
    ef, edv = float(np.mean([v.ef for v in videos])), float(np.mean([v.edv for v in videos]))
    size = "NORMAL IN SIZE" if edv < 150 else "MILDLY DILATED" if edv < 200 else "SEVERELY DILATED"
    function = ("NORMAL" if ef >= 55 else "MILDLY REDUCED" if ef >= 45 else "MODERATELY REDUCED" if ef >= 30
                else "SEVERELY REDUCED")
    la_width, la_depth = _atrium_size(heart.la_size, heart.lv_width, heart, 1.0)
    t = np.linspace(-_ATRIUM_CENTRE / (1 - _ATRIUM_CENTRE), 1, 201)  # annulus to far end, in half-depths
    la_area = la_width * (1 - _ATRIUM_CENTRE) * la_depth * np.sqrt(1 - t ** 2).mean() * (t[-1] - t[0])
    la_area *= PIXEL_SPACING_CM ** 2
    parts = [
        f"THE LEFT VENTRICLE IS {size}. ",
        "THERE IS MILD CONCENTRIC LEFT VENTRICULAR HYPERTROPHY. " if heart.wall * PIXEL_SPACING_CM >= 1.0 else "",
        f"LEFT VENTRICULAR SYSTOLIC FUNCTION IS {function}. ",
        "THERE IS GLOBAL HYPOKINESIS OF THE LEFT VENTRICLE. " if ef < 40 else "",
        f"THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE {round(ef)}%. ",
        f"THE LEFT ATRIUM IS {'DILATED' if la_area >= 20 else 'NORMAL IN SIZE'}. ",
        "THE RIGHT VENTRICLE IS NORMAL IN SIZE. ",
        "A PACEMAKER LEAD IS SEEN IN THE RIGHT HEART. " if heart.device else "",
        "THERE IS NO PERICARDIAL EFFUSION.",
    ]
    return "".join(parts)
