"""Write real DICOM ultrasound files whose pixels and header are known: the reader's tests and the phantom use it.

The files go through pydicom's own encoders (RLE, JPEG 2000 via pylibjpeg-openjpeg) and Pillow for
JPEG baseline (pydicom 3 has no JPEG baseline encoder), so the reader meets the same codestreams a
scanner or PACS export produces: JFIF YCbCr for YBR_FULL_422, Adobe RGB for RGB, MCT for YBR_RCT/ICT.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UID,
    generate_uid,
)

SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg": JPEGBaseline8Bit,
    "jpeg2000": JPEG2000,
    "jpeg2000lossless": JPEG2000Lossless,
}
US_MULTIFRAME = UID("1.2.840.10008.5.1.4.1.1.3.1")
US_IMAGE = UID("1.2.840.10008.5.1.4.1.1.6.1")

DEFAULT_PHI: dict[str, str] = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-1234567",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "InstitutionName": "St Example Hospital",
    "InstitutionAddress": "1 Example Road, Sampletown",
    "StudyDate": "20240102",
    "StudyTime": "093015",
    "ContentDate": "20240102",
    "AcquisitionDateTime": "20240102093016",
    "AccessionNumber": "ACC998877",
    "StudyID": "ST-31337",
    "ReferringPhysicianName": "REF^DOCTOR",
    "OperatorsName": "SONO^GRAPHER",
    "StationName": "ECHO-ROOM-3",
    "DeviceSerialNumber": "SN-42",
}


def write_dicom(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 30.0,
    syntax: str = "explicit",
    photometric: str = "RGB",
    phi: dict[str, str | None] | None = None,
    timing: str = "frame_time",
    bits: int = 8,
    header: dict[str, object] | None = None,
) -> Path:
    """Write `frames` (uint8 [T,H,W,3] RGB or [T,H,W] grey) as an ultrasound DICOM file.

    `phi` overrides DEFAULT_PHI (None as a value drops that element); `header` adds other keywords.
    `timing` is frame_time, cine_rate, display_rate, frame_time_vector or none. `bits` > 8 stores
    monochrome data as 16-bit words with that many bits used. Pixels are stored so that a correct
    reader shows `frames` back (MONOCHROME1 stored inverted, palette built from the colours used).
    """
    path = Path(path)
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim not in (3, 4):
        raise ValueError(f"frames must be [T,H,W] or [T,H,W,3], got {frames.shape}")
    if syntax not in SYNTAXES:
        raise ValueError(f"syntax must be one of {sorted(SYNTAXES)}, got {syntax!r}")
    t, h, w = frames.shape[:3]
    tsyntax = SYNTAXES[syntax]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    ds.SOPClassUID = US_MULTIFRAME if t > 1 else US_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.Manufacturer = "ExampleVendor"
    ds.ManufacturerModelName = "EchoModel 9000"
    for keyword, value in {**DEFAULT_PHI, **(phi or {})}.items():
        if value is not None:
            setattr(ds, keyword, value)
    for keyword, value in (header or {}).items():
        setattr(ds, keyword, value)
    _set_timing(ds, timing, fps, t)

    ds.Rows, ds.Columns = h, w
    if t > 1:
        ds.NumberOfFrames = t
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit = bits, bits - 1
    stored = _stored_pixels(ds, frames, photometric, bits, syntax)
    ds.SamplesPerPixel = 3 if stored.ndim == 4 or photometric.startswith("YBR") else 1
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0

    if syntax == "jpeg":
        _encode_jpeg(ds, stored, photometric, bits)
    elif tsyntax.is_compressed:
        arr = stored if t > 1 else stored[0]
        ds.compress(tsyntax, arr, j2k_cr=[5] if tsyntax == JPEG2000 else None, generate_instance_uid=False)
    else:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OB" if bits <= 8 else "OW"
    if tsyntax in (JPEGBaseline8Bit, JPEG2000):
        ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path


def _set_timing(ds: Dataset, timing: str, fps: float, t: int) -> None:
    """The frame-rate elements a scanner writes, one style at a time, to test the reader's fallbacks."""
    if timing == "frame_time":
        ds.FrameTime = f"{1000.0 / fps:.6g}"
        ds.FrameIncrementPointer = Tag("FrameTime")
    elif timing == "cine_rate":
        ds.CineRate = round(fps)
    elif timing == "display_rate":
        ds.RecommendedDisplayFrameRate = round(fps)
    elif timing == "frame_time_vector":
        ds.FrameTimeVector = [0.0] + [float(f"{1000.0 / fps:.6g}")] * (t - 1)
        ds.FrameIncrementPointer = Tag("FrameTimeVector")
    elif timing != "none":
        raise ValueError(f"unknown timing {timing!r}")


def _stored_pixels(ds: Dataset, frames: np.ndarray, photometric: str, bits: int, syntax: str) -> np.ndarray:
    """The array as it must sit in Pixel Data (before compression) for `photometric`."""
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = frames if frames.ndim == 3 else frames.mean(axis=-1).round().astype(np.uint8)
        top = (1 << bits) - 1
        values = np.round(grey.astype(np.float64) * top / 255.0)
        if photometric == "MONOCHROME1":
            values = top - values
        return values.astype(np.uint8 if bits <= 8 else np.uint16)
    if bits != 8:
        raise ValueError("only monochrome data is written with more than 8 bits")
    rgb = frames if frames.ndim == 4 else np.repeat(frames[..., None], 3, axis=-1)
    if photometric == "PALETTE COLOR":
        if syntax in ("jpeg", "jpeg2000"):
            raise ValueError("palette indices cannot go through a lossy codec")
        colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        if len(colours) > 256:
            raise ValueError(f"palette colour needs <= 256 distinct colours, got {len(colours)}")
        lut = np.zeros((256, 3), dtype=np.uint16)
        lut[: len(colours)] = colours.astype(np.uint16) * 257  # 16-bit entries, as scanners write them
        for i, colour in enumerate(("Red", "Green", "Blue")):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", lut[:, i].astype("<u2").tobytes())
        return index.reshape(rgb.shape[:3]).astype(np.uint8)
    if photometric == "RGB" or syntax == "jpeg" or (photometric in ("YBR_RCT", "YBR_ICT") and "2000" in syntax):
        return rgb  # the encoder (Pillow JPEG, openjpeg MCT) does the colour transform itself
    if photometric == "YBR_FULL":
        return convert_color_space(rgb, "RGB", "YBR_FULL")
    if photometric == "YBR_FULL_422" and syntax in ("explicit", "implicit"):
        return _subsample_422(convert_color_space(rgb, "RGB", "YBR_FULL"))
    raise ValueError(f"photometric {photometric!r} is not valid with syntax {syntax!r}")


def _subsample_422(ybr: np.ndarray) -> np.ndarray:
    """Native YBR_FULL_422 layout: per pair of pixels Y1 Y2 Cb Cr, chroma averaged over the pair."""
    if ybr.shape[2] % 2:
        raise ValueError("YBR_FULL_422 needs an even number of columns")
    y, cb, cr = (ybr[..., i].astype(np.uint16) for i in range(3))
    out = np.empty(ybr.shape[:2] + (ybr.shape[2] // 2, 4), dtype=np.uint8)
    out[..., 0], out[..., 1] = y[..., 0::2], y[..., 1::2]
    out[..., 2] = (cb[..., 0::2] + cb[..., 1::2] + 1) // 2
    out[..., 3] = (cr[..., 0::2] + cr[..., 1::2] + 1) // 2
    return out


def _encode_jpeg(ds: Dataset, stored: np.ndarray, photometric: str, bits: int) -> None:
    """JPEG baseline frames from Pillow: JFIF YCbCr (4:2:2 or 4:4:4), Adobe RGB, or greyscale."""
    if bits != 8:
        raise ValueError("JPEG baseline holds 8-bit samples only")
    options: dict[str, object] = {"quality": 95}
    if photometric == "YBR_FULL_422":
        options["subsampling"] = "4:2:2"
    elif photometric == "YBR_FULL":
        options["subsampling"] = "4:4:4"
    elif photometric == "RGB":
        options["keep_rgb"] = True
    elif photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric {photometric!r} is not written as JPEG baseline")
    encoded = []
    for frame in stored:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", **options)
        encoded.append(buf.getvalue())
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
