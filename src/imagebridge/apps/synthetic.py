"""Synthetic, valid, deterministic DICOM studies for the demo, the tests and the benchmarks.

Objects follow the PS3.3 IODs of their modality (A.3 CT Image, A.4 MR Image, A.2 CR Image,
A.26 Digital X-Ray Image "For Presentation", A.7 Ultrasound Multi-frame Image): Patient,
General Study, Patient Study, General Series, Frame of Reference (CT/MR), General Equipment,
General Image, Image Plane (CT/MR), Image Pixel, the modality module and SOP Common. UIDs live
under the ``2.25.`` root (PS3.5 B.2) and derive from the study specification, so a given
specification always produces the same bytes. Pixels are plausible phantoms, built with numpy.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
)

SOP_CLASSES = {
    "CT": CTImageStorage,
    "MR": MRImageStorage,
    "CR": ComputedRadiographyImageStorage,
    "DX": DigitalXRayImageStorageForPresentation,
    "US": UltrasoundMultiFrameImageStorage,
}


@dataclass(frozen=True)
class PatientSpec:
    patient_id: str
    name: str  # DICOM PN, "Family^Given"
    birth_date: str  # DA "YYYYMMDD"
    sex: str  # "M" | "F" | "O"


@dataclass(frozen=True)
class StudySpec:
    patient: PatientSpec
    modality: str  # "CT" | "MR" | "CR" | "DX" | "US"
    description: str
    body_part: str
    study_date: str  # DA "YYYYMMDD"
    study_time: str = "090000"
    accession_number: str = ""
    series_count: int = 1
    instances_per_series: int = 1
    rows: int = 256
    columns: int = 256
    frames: int = 1
    seed: int = 0


@dataclass(frozen=True)
class SampleFile:
    name: str
    path: Path
    transfer_syntax_uid: str
    description: str


def _uid(*parts: object) -> str:
    """A deterministic UID under 2.25 (PS3.5 B.2: a UUID-sized integer)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def _spec_key(spec: StudySpec) -> tuple[object, ...]:
    return (
        spec.patient.patient_id,
        spec.modality,
        spec.description,
        spec.study_date,
        spec.accession_number,
        spec.seed,
    )


def study_uid_for(spec: StudySpec) -> str:
    """The Study Instance UID ``generate_study`` gives ``spec``."""
    return _uid("study", *_spec_key(spec))


def _grid(rows: int, columns: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    return (yy - rows / 2) / (rows / 2), (xx - columns / 2) / (columns / 2)


@cache
def _noise(rows: int, columns: int, seed: int, planes: int = 4) -> NDArray[np.int16]:
    return np.random.default_rng(seed).integers(-15, 16, size=(planes, rows, columns), dtype=np.int16)


def _ct_slice(rows: int, columns: int, z: float, seed: int, index: int) -> NDArray[np.int16]:
    """Hounsfield units: air, soft tissue, lungs and a spine, changing with slice position ``z``."""
    anatomy, body = _ct_anatomy(rows, columns, round(z * 8) / 8)
    out: NDArray[np.int16] = anatomy + _noise(rows, columns, seed)[index % 4] * body
    return out


@cache
def _ct_anatomy(rows: int, columns: int, z: float) -> tuple[NDArray[np.int16], NDArray[np.int16]]:
    y, x = _grid(rows, columns)
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 < 1
    lungs = ((np.abs(x) - 0.38) / 0.27) ** 2 + (y / (0.45 - 0.1 * abs(z))) ** 2 < 1
    spine = (x / 0.08) ** 2 + ((y - 0.45) / 0.08) ** 2 < 1
    hu = np.full((rows, columns), -1000, np.int16)
    hu[body] = 40
    hu[body & lungs] = -850
    hu[spine] = 700
    return hu, body.astype(np.int16)


def _mr_slice(rows: int, columns: int, z: float, seed: int, index: int) -> NDArray[np.uint16]:
    image, head = _mr_anatomy(rows, columns, round(z * 8) / 8)
    noisy = image + _noise(rows, columns, seed)[index % 4] * 4 * head
    out: NDArray[np.uint16] = np.clip(noisy, 0, 4095).astype(np.uint16)
    return out


@cache
def _mr_anatomy(rows: int, columns: int, z: float) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    y, x = _grid(rows, columns)
    radius = max(0.2, 0.8 * (1 - z * z))
    head = (x / radius) ** 2 + (y / (radius * 1.2)) ** 2 < 1
    ventricles = (np.abs(x) / 0.12) ** 2 + (y / 0.3) ** 2 < 1
    image = np.zeros((rows, columns), np.int32)
    image[head] = 600
    image[head & ventricles] = 1400
    return image, head.astype(np.int32)


def _xray(rows: int, columns: int, seed: int, index: int) -> NDArray[np.uint16]:
    y, x = _grid(rows, columns)
    bone = np.exp(-((x / 0.25) ** 2)) * (np.abs(y) < 0.9)
    tissue = np.exp(-((x / 0.6) ** 2))
    image = 400 + 1800 * tissue + 1500 * bone * (1 + 0.1 * np.sin(12 * y + index))
    out: NDArray[np.uint16] = np.clip(image + _noise(rows, columns, seed)[index % 4] * 6, 0, 4095).astype(
        np.uint16
    )
    return out


def _us_frames(rows: int, columns: int, frames: int, seed: int) -> NDArray[np.uint8]:
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    angle = np.arctan2(x - columns / 2, y + 1)
    depth = np.hypot(x - columns / 2, y)
    fan = (np.abs(angle) < 0.6) & (depth < rows * 0.95)
    rng = np.random.default_rng(seed)
    out = np.zeros((frames, rows, columns), np.uint8)
    for f in range(frames):
        speckle = rng.integers(0, 90, size=(rows, columns), dtype=np.uint8)
        organ = (
            ((x - columns / 2) / (columns * 0.15)) ** 2 + ((y - rows * (0.5 + 0.02 * f)) / (rows * 0.12)) ** 2
        ) < 1
        frame = np.where(fan, speckle + 40, 0)
        frame[fan & organ] //= 3
        out[f] = frame
    return out


#: SNOMED CT codes of the body parts the demo uses (PS3.16 CID 4031 "Common Anatomic Regions").
_ANATOMY = {
    "CHEST": ("51185008", "Thorax"),
    "HEAD": ("69536005", "Head"),
    "HEART": ("80891009", "Heart"),
    "KNEE": ("72696002", "Knee"),
    "ANKLE": ("70258002", "Ankle joint"),
    "PELVIS": ("12921003", "Pelvis"),
}


def _anatomy_code(body_part: str) -> Dataset:
    code, meaning = _ANATOMY.get(body_part, ("38266002", "Entire body"))
    item = Dataset()
    item.CodeValue = code
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def _base(spec: StudySpec, series_index: int, instance_index: int) -> Dataset:
    sop_class = SOP_CLASSES[spec.modality]
    study_uid = study_uid_for(spec)
    series_uid = _uid("series", study_uid, series_index)
    sop_uid = _uid("instance", series_uid, instance_index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "IMAGEBRIDGE_1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.study_date
    ds.StudyTime = spec.study_time
    ds.SeriesTime = ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.Modality = spec.modality
    ds.Manufacturer = "imagebridge synthetic"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Chen^Lin"
    ds.StudyDescription = spec.description
    ds.SeriesDescription = f"{spec.description} series {series_index + 1}"
    ds.PatientName = spec.patient.name
    ds.PatientID = spec.patient.patient_id
    ds.PatientBirthDate = spec.patient.birth_date
    ds.PatientSex = spec.patient.sex
    ds.BodyPartExamined = spec.body_part
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = spec.accession_number[-8:] or "1"
    ds.SeriesNumber = series_index + 1
    ds.InstanceNumber = instance_index + 1
    ds.PatientOrientation = ""
    return ds


def _plane(ds: Dataset, spec: StudySpec, series_uid_seed: str, index: int, spacing: float) -> None:
    ds.FrameOfReferenceUID = _uid("frame", series_uid_seed)
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [
        -spec.columns * spacing / 2,
        -spec.rows * spacing / 2,
        -float(index) * spacing * 2,
    ]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = spacing * 2
    ds.SliceLocation = -float(index) * spacing * 2
    ds.PatientPosition = "HFS"


def _grayscale(
    ds: Dataset, pixels: NDArray[np.int16] | NDArray[np.uint16], signed: bool, stored: int
) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2], pixels.shape[-1]
    ds.BitsAllocated = 16
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = pixels.tobytes()


def _instance(spec: StudySpec, series_index: int, index: int) -> Dataset:
    ds = _base(spec, series_index, index)
    n = max(1, spec.instances_per_series - 1)
    z = (index / n) * 2 - 1 if spec.instances_per_series > 1 else 0.0
    seed = spec.seed * 1000 + series_index
    if spec.modality == "CT":
        _plane(ds, spec, ds.SeriesInstanceUID, index, 0.7)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        _grayscale(ds, (_ct_slice(spec.rows, spec.columns, z, seed, index) + 1024).astype(np.int16), True, 16)
    elif spec.modality == "MR":
        _plane(ds, spec, ds.SeriesInstanceUID, index, 0.9)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTrainLength = 1
        ds.RepetitionTime = 500
        ds.EchoTime = 15
        ds.MagneticFieldStrength = 1.5
        ds.ImagingFrequency = 63.87
        ds.WindowCenter = 700
        ds.WindowWidth = 1400
        _grayscale(ds, _mr_slice(spec.rows, spec.columns, z, seed, index), False, 12)
    elif spec.modality in ("CR", "DX"):
        ds.ImageType = ["ORIGINAL", "PRIMARY"] if spec.modality == "CR" else ["ORIGINAL", "PRIMARY", ""]
        ds.ViewPosition = ["PA", "LL", "AP"][series_index % 3]
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.KVP = 70
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096
        if spec.modality == "DX":
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.DetectorType = "SCINTILLATOR"
            ds.BurnedInAnnotation = "NO"
            ds.LossyImageCompression = "00"
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
            ds.RescaleType = "US"
            ds.PixelIntensityRelationship = "LIN"
            ds.PixelIntensityRelationshipSign = 1
            ds.PresentationLUTShape = "IDENTITY"
            ds.ImageLaterality = "L"
            ds.PatientOrientation = ["A", "F"]
            ds.PositionerType = ""
            ds.AnatomicRegionSequence = [_anatomy_code(spec.body_part)]
            ds.AcquisitionContextSequence = []
        _grayscale(ds, _xray(spec.rows, spec.columns, seed, index), False, 12)
    else:
        frames = _us_frames(spec.rows, spec.columns, spec.frames, seed + index)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", ""]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = spec.rows, spec.columns
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.NumberOfFrames = spec.frames
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 33.3
        ds.LossyImageCompression = "00"
        ds.PixelData = frames.tobytes()
    return ds


def generate_study(spec: StudySpec) -> Iterator[Dataset]:
    """The instances of ``spec``, one at a time (never the whole study in memory)."""
    if spec.modality not in SOP_CLASSES:
        raise ValueError(f"unsupported modality {spec.modality!r}")
    for series_index in range(spec.series_count):
        for index in range(spec.instances_per_series):
            yield _instance(spec, series_index, index)


def dataset_bytes(ds: Dataset) -> bytes:
    """PS3.10 bytes: 128-byte preamble, ``DICM``, file meta and the data set."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_study(spec: StudySpec, outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in generate_study(spec):
        path = outdir / f"{spec.modality}{int(ds.SeriesNumber):02d}{int(ds.InstanceNumber):05d}.dcm"
        path.write_bytes(dataset_bytes(ds))
        paths.append(path)
    return paths


_SAMPLES = (
    ("CT_small.dcm", "CT, Explicit VR Little Endian"),
    ("MR_small_RLE.dcm", "MR, RLE Lossless"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR, JPEG-LS Lossless"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US, JPEG Lossless SV1"),
    ("examples_ybr_color.dcm", "US multi-frame, JPEG Baseline, YBR color"),
    ("693_J2KR.dcm", "CT, JPEG 2000 Lossless"),
    ("RG1_J2KI.dcm", "CR, JPEG 2000 lossy"),
    ("eCT_Supplemental.dcm", "Enhanced CT, multi-frame"),
    ("SC_rgb_rle_32bit_2frame.dcm", "Secondary capture, RLE, 2 frames"),
)


def sample_files() -> list[SampleFile]:
    """Compressed and multi-frame samples shipped by pydicom and pydicom-data (offline)."""
    import pydicom

    samples = []
    for name, description in _SAMPLES:
        try:
            path = Path(str(get_testdata_file(name)))
        except (ValueError, OSError):
            continue
        if not path.is_file():
            continue
        ts = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        samples.append(SampleFile(name, path, ts, description))
    return samples
