"""Read ultrasound DICOM (multi-frame cines and single-frame stills) into uint8 RGB frames.

Colour: pydicom 3 decoders convert YBR_FULL / YBR_FULL_422 to RGB themselves (as_rgb, for native,
RLE and JPEG data alike, and JPEG 2000 YBR_RCT/ICT come out as RGB), and they correct a header
whose photometric interpretation contradicts the JPEG codestream (JFIF vs Adobe RGB). So this module
never converts YBR itself: it reads the photometric interpretation pydicom reports *after* decoding,
which avoids the classic double conversion that turns frames green. Monochrome is replicated to three
channels (MONOCHROME1 inverted), palette colour goes through the file's LUT, and samples of more
than 8 bits are scaled to 0-255. Header checks (size, frame count, codec) run before any decoding.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from embedstore.errors import TooManyFrames, VideoError
from embedstore.video.deid import deidentify, default_salt
from embedstore.video.frames import MAX_FRAMES, MAX_SIDE, Video
from embedstore.video.regions import header_regions

SUPPORTED_PHOTOMETRIC = {
    "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "PALETTE COLOR", "MONOCHROME1", "MONOCHROME2",
}
_LIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
# pip packages that provide a decoder, by transfer syntax UID prefix (RLE is built into pydicom)
_DECODER_PACKAGES = {
    "1.2.840.10008.1.2.4.5": _LIBJPEG,  # JPEG baseline, extended, lossless (.50, .51, .57)
    "1.2.840.10008.1.2.4.70": _LIBJPEG,  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.8": _LIBJPEG,  # JPEG-LS
    "1.2.840.10008.1.2.4.9": _OPENJPEG,  # JPEG 2000
    "1.2.840.10008.1.2.4.20": _OPENJPEG,  # HTJ2K (.201-.203)
}


def read_dicom(
    path: str | Path,
    max_frames: int = MAX_FRAMES,
    salt: str = "",
    allow: Iterable[str] = frozenset(),
    id_map: Mapping[str, str] | None = None,
) -> Video:
    """Decode a DICOM file to Video(format="dicom"); `meta` holds technical fields and `deid` only.

    `salt`, `allow` and `id_map` go to embedstore.video.deid.deidentify (salt defaults to
    $EMBEDSTORE_SALT; without any salt the hashed ids are None).
    """
    path = Path(path)
    ds = _read_header(path)
    if "PixelData" not in ds:
        raise VideoError(f"{path}: has no pixel data (7FE0,0010); it is not an image")
    rows, cols, n_frames, samples = _geometry(ds, path, max_frames)
    photometric = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise VideoError(
            f"{path}: photometric interpretation {photometric or '(missing)'} is not supported; "
            "export the cine as RGB, YBR or monochrome"
        )
    deid = deidentify(ds, salt or default_salt(), allow, id_map)  # before decoding: a bad `allow` fails fast
    tsyntax = _transfer_syntax(ds)
    frames = _decode(ds, path, tsyntax, (n_frames, rows, cols), photometric, samples)
    fps, fps_source = frame_rate(ds)
    sop_class = ds.get("SOPClassUID")
    meta = {
        "transfer_syntax": tsyntax.name,
        "photometric": photometric,
        "sop_class": UID(str(sop_class)).name if sop_class else None,
        "modality": str(ds.get("Modality") or "") or None,
        "n_frames": n_frames,
        "rows": rows,
        "columns": cols,
        "bits_stored": int(ds.get("BitsStored") or 8),
        "fps_source": fps_source,
        "deid": deid,
        "us_regions": header_regions(ds),  # chosen and applied by video/regions.mask_video
        "burned_in_annotation": str(ds.get("BurnedInAnnotation") or "").strip().upper() or None,
    }
    return Video(frames, fps, "dicom", path, meta)


def frame_rate(ds: Dataset) -> tuple[float, str]:
    """Frames per second and the element it came from; 30 (the usual cine rate) when none says."""
    frame_time = _positive(ds.get("FrameTime"))
    if frame_time:
        return 1000.0 / frame_time, "FrameTime"
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(ds.get(keyword))
        if rate:
            return rate, keyword
    vector = ds.get("FrameTimeVector")
    if vector is not None:
        times = [t for t in map(_positive, vector if isinstance(vector, Iterable) else [vector]) if t]
        if times:  # the first entry is 0 by definition (no increment before frame 1)
            return 1000.0 / float(np.mean(times)), "FrameTimeVector"
    return 30.0, "default"


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _read_header(path: Path) -> Dataset:
    """Parse the file with pixel data deferred, so a refused header costs no pixel I/O."""
    try:
        return pydicom.dcmread(path, defer_size="1 MB")
    except pydicom.errors.InvalidDicomError as exc:
        raise VideoError(f"{path}: not a DICOM file (no DICM preamble); check that it is a DICOM export") from exc
    except Exception as exc:  # truncated or corrupt headers surface as many exception types
        raise VideoError(f"{path}: unreadable DICOM header ({_why(exc)}); re-copy or re-export the file") from exc


def _geometry(ds: Dataset, path: Path, max_frames: int) -> tuple[int, int, int, int]:
    """Rows, columns, frames and samples per pixel, refusing absurd values before any allocation."""
    try:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        n_frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError) as exc:
        raise VideoError(f"{path}: malformed image header ({_why(exc)}); re-export the file") from exc
    if rows <= 0 or cols <= 0:
        raise VideoError(f"{path}: header has no valid Rows/Columns ({rows}x{cols}); re-export the file")
    if max(rows, cols) > MAX_SIDE:
        raise VideoError(f"{path}: frames of {cols}x{rows} pixels exceed the {MAX_SIDE}-pixel limit")
    if n_frames < 1:
        raise VideoError(f"{path}: header declares {n_frames} frames; re-export the file")
    if n_frames > max_frames:
        raise TooManyFrames(f"{path}: has {n_frames} frames, more than max_frames={max_frames}; raise max_frames to read it")
    if samples not in (1, 3):
        raise VideoError(f"{path}: {samples} samples per pixel is not supported; export as RGB or monochrome")
    return rows, cols, n_frames, samples


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; a file without one is native in the encoding it was parsed with."""
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax:
        return UID(str(tsyntax))
    return ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian


def _decode(
    ds: Dataset, path: Path, tsyntax: UID, shape: tuple[int, int, int], photometric: str, samples: int
) -> np.ndarray:
    """Decode frame by frame into one preallocated uint8 [T, H, W, 3] array."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise VideoError(
            f"{path}: pixel data is {tsyntax.name}, which has no DICOM image decoder; "
            "export the cine as JPEG, RLE or uncompressed DICOM, or as MP4"
        ) from exc
    if not decoder.is_available:
        package = next((p for prefix, p in _DECODER_PACKAGES.items() if tsyntax.startswith(prefix)), "pylibjpeg")
        raise VideoError(f"{path}: no decoder installed for {tsyntax.name}; pip install {package}")
    bits = int(ds.get("BitsStored") or 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    lut = _palette(ds, path, bits) if photometric == "PALETTE COLOR" else None
    out = np.empty(shape + (3,), dtype=np.uint8)
    try:
        for i, (arr, info) in enumerate(_iter_frames(decoder, ds, tsyntax, shape[0])):
            out[i] = _to_rgb(arr, str(info["photometric_interpretation"]), bits, signed, lut, path, samples)
    except VideoError:
        raise
    except Exception as exc:  # each decoder plugin raises its own exception types
        raise VideoError(f"{path}: pixel data cannot be decoded ({_why(exc)}); re-copy or re-export the file") from exc
    return out


def _iter_frames(decoder: Decoder, ds: Dataset, tsyntax: UID, n_frames: int) -> Iterator[tuple[np.ndarray, dict]]:
    """Decoded frames with their post-decoding metadata, as_rgb on (pydicom converts YBR itself).

    Native data goes frame by frame through as_array: pydicom 3.0.2's iter_array keeps the
    expanded photometric of native YBR_FULL_422 after frame 0, so frame 1 comes back misaligned
    and later frames raise "insufficient pixel data". Indexing native frames costs nothing extra.
    """
    if tsyntax.is_encapsulated:
        yield from decoder.iter_array(ds, as_rgb=True)
    else:
        for index in range(n_frames):
            yield decoder.as_array(ds, index=index, as_rgb=True)


def _to_rgb(
    arr: np.ndarray, photometric: str, bits: int, signed: bool, lut: np.ndarray | None, path: Path, samples: int
) -> np.ndarray:
    """One decoded frame (as pydicom hands it back, colour already converted) to uint8 RGB."""
    if lut is not None:
        return lut[arr]
    if photometric == "RGB" and samples == 3:
        return _scale(arr, bits, signed)
    if photometric in ("MONOCHROME1", "MONOCHROME2") and samples == 1:
        grey = _scale(arr, bits, signed)
        if photometric == "MONOCHROME1":  # 0 is white
            grey = 255 - grey
        return np.repeat(grey[..., None], 3, axis=-1)
    raise VideoError(f"{path}: decoder returned {photometric} data with {samples} samples per pixel; cannot show it as RGB")


def _scale(arr: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Map `bits`-bit samples (signed ones shifted up) onto 0-255."""
    if bits == 8 and not signed:
        return arr.astype(np.uint8, copy=False)
    values = arr.astype(np.float32)
    if signed:
        values += 1 << (bits - 1)
    return np.clip(np.rint(values * (255.0 / ((1 << bits) - 1))), 0, 255).astype(np.uint8)


def _palette(ds: Dataset, path: Path, bits: int) -> np.ndarray:
    """The file's palette as a uint8 [2**bits, 3] table, indexed by the stored values."""
    if bits > 16:
        raise VideoError(f"{path}: palette colour with {bits}-bit indices is not supported")
    try:
        table = apply_color_lut(np.arange(1 << bits, dtype=np.uint16 if bits > 8 else np.uint8), ds)
    except Exception as exc:  # missing or inconsistent LUT elements raise several types
        raise VideoError(f"{path}: palette colour lookup table is unusable ({_why(exc)}); re-export as RGB") from exc
    table = table[..., :3]
    if table.dtype == np.uint16 and table.max() > 255:
        # 16-bit entries span 0-65535; some writers put 8-bit values in 16-bit entries, kept as they are
        table = np.rint(table / 257.0)
    return table.astype(np.uint8)


def _why(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160]
