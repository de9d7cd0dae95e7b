"""Synthetic, valid, deterministic DICOM studies for the demo, the tests and the benchmarks.

Each object follows the PS3.3 IOD of its modality: A.3 CT Image, A.4 MR Image, A.2 Computed
Radiography Image, A.26 Digital X-Ray Image (For Presentation), A.6 Ultrasound Image and A.7
Ultrasound Multi-frame Image. They carry the Patient (C.7.1.1), General Study (C.7.2.1), Patient
Study (C.7.2.2), General Series (C.7.3.1), Frame of Reference (C.7.4.1, CT/MR), General Equipment
(C.7.5.1), General Image (C.7.6.1), Image Plane (C.7.6.2, CT/MR), Image Pixel (C.7.6.3), the
modality's series and image modules, VOI LUT (C.11.2) and SOP Common (C.12.1) modules, encoded
Explicit VR Little Endian in PS3.10 files. UIDs are name-based UUIDs under ``2.25.`` (PS3.5 B.2)
derived from the specification, so a specification always yields the same bytes.

Pixels are cheap numpy phantoms (HU body phantom for CT, head for MR, chest or extremity
radiographs for CR/DX, a speckled fan for US). The attributes shared by a series are encoded once
and reused as raw elements, so a 512x512 CT study is produced at disk speed.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.charset import convert_encodings
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

MODALITIES = ("CT", "MR", "CR", "DX", "US")
CHARACTER_SET = "ISO_IR 100"
_ENCODINGS = convert_encodings([CHARACTER_SET])
#: Pixel spacing (mm) of the cross-sectional modalities; slices are 2 mm apart.
_SPACING = {"CT": 0.7, "MR": 0.9}
#: Namespace of the name-based (version 5) UUIDs behind every UID we mint.
_UID_NAMESPACE = uuid.UUID("5b0f7a52-6c1e-4d57-9a0e-3e1f0a1b2c3d")
#: Body parts that come in pairs, so their images need a laterality (PS3.3 C.7.3.1, C.7.6.1).
_PAIRED = frozenset({"ANKLE", "KNEE", "FOOT", "HAND", "WRIST", "ELBOW", "SHOULDER", "HIP", "BREAST"})
#: SNOMED CT codes of common regions (PS3.16 CID 4031 "Common Anatomic Regions").
_ANATOMY = {
    "CHEST": ("51185008", "Thorax"),
    "HEAD": ("69536005", "Head"),
    "ABDOMEN": ("818981001", "Abdomen"),
    "PELVIS": ("12921003", "Pelvis"),
    "KNEE": ("72696002", "Knee"),
    "ANKLE": ("70258002", "Ankle joint"),
    "HAND": ("85562004", "Hand"),
    "FOOT": ("56459004", "Foot"),
}
#: DX views (PS3.16 CID 4010 "DX View").
_VIEWS = {
    "PA": ("272479007", "SCT", "postero-anterior"),
    "AP": ("399348003", "SCT", "antero-posterior"),
    "LL": ("399173006", "SCT", "left lateral"),
}
_NOISE_PLANES = 4


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
    body_part: str  # DICOM Body Part Examined, e.g. "CHEST", "HEAD", "ANKLE", "PELVIS"
    study_date: str  # DA "YYYYMMDD"
    study_time: str = "090000"
    accession_number: str = ""
    series_count: int = 1
    instances_per_series: int = 1
    rows: int = 256
    columns: int = 256
    frames: int = 1  # > 1: a multi-frame (cine) ultrasound object
    seed: int = 0


@dataclass(frozen=True)
class SampleFile:
    name: str
    path: Path
    transfer_syntax_uid: str
    description: str


Elements = dict[BaseTag, DataElement | RawDataElement]


def _uid(*parts: object) -> str:
    """A UID derived from ``parts``: ``2.25.`` and a name-based UUID as an integer (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(map(str, parts))).int}"


def study_uid_for(spec: StudySpec) -> str:
    """The Study Instance UID of ``spec``: it depends on the study's identity and seed, not its size."""
    p = spec.patient
    return _uid(
        "study",
        p.patient_id,
        p.name,
        p.birth_date,
        p.sex,
        spec.modality,
        spec.description,
        spec.body_part,
        spec.study_date,
        spec.study_time,
        spec.accession_number,
        spec.seed,
    )


def _sop_class(spec: StudySpec) -> UID:
    if spec.modality == "US":
        return UltrasoundMultiFrameImageStorage if spec.frames > 1 else UltrasoundImageStorage
    return {
        "CT": CTImageStorage,
        "MR": MRImageStorage,
        "CR": ComputedRadiographyImageStorage,
        "DX": DigitalXRayImageStorageForPresentation,
    }[spec.modality]


# Pixels. Phantoms are cached per geometry (and quantized position); noise planes are reused.


_T = TypeVar("_T", bound=np.generic)


def _frozen(array: NDArray[_T]) -> NDArray[_T]:
    """Cached arrays are shared: make accidental writes fail."""
    array.setflags(write=False)
    return array


@lru_cache(maxsize=8)
def _grid(rows: int, columns: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Normalized coordinates: ``y`` down (posterior/feet), ``x`` right (patient left), both -1..1."""
    y = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, columns, dtype=np.float32)[None, :]
    return _frozen(np.broadcast_to(y, (rows, columns)).copy()), _frozen(
        np.broadcast_to(x, (rows, columns)).copy()
    )


@lru_cache(maxsize=8)
def _noise(rows: int, columns: int, seed: int) -> NDArray[np.int16]:
    """A few planes of uniform noise in -16..15, reused across instances."""
    rng = np.random.default_rng(seed)
    return _frozen(rng.integers(-16, 16, size=(_NOISE_PLANES, rows, columns), dtype=np.int16))


def _ellipse(
    y: NDArray[np.float32], x: NDArray[np.float32], cy: float, cx: float, ry: float, rx: float
) -> NDArray[np.bool_]:
    mask: NDArray[np.bool_] = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    return mask


@lru_cache(maxsize=64)
def _ct_phantom(rows: int, columns: int, level: int) -> tuple[NDArray[np.int16], NDArray[np.bool_]]:
    """Stored values (HU + 1024) of a thorax at ``level`` -8..8 (feet..head), and the body mask."""
    y, x = _grid(rows, columns)
    z = level / 8
    body = _ellipse(y, x, 0.0, 0.0, 0.62, 0.85)
    muscle = _ellipse(y, x, 0.0, 0.0, 0.56, 0.78)
    ribs = body & ~_ellipse(y, x, 0.0, 0.0, 0.52, 0.74) & muscle & (np.sin(np.arctan2(y, x) * 14) > 0.55)
    lung_ry = 0.42 * (1 - 0.4 * z * z)
    lungs = _ellipse(y, np.abs(x), -0.02, 0.38, lung_ry, 0.27)
    heart = _ellipse(y, x, -0.05, 0.1, 0.24 * max(0.1, 1 - z), 0.26 * max(0.1, 1 - z))
    aorta = _ellipse(y, x, 0.3, 0.12, 0.07, 0.07)
    spine = _ellipse(y, x, 0.45, 0.0, 0.1, 0.1)
    hu = np.full((rows, columns), -1000, np.int16)
    hu[body] = -100  # subcutaneous fat
    hu[muscle] = 40
    hu[lungs] = -850
    hu[heart & ~lungs] = 45
    hu[ribs] = 600
    hu[aorta] = 250  # contrast-enhanced
    hu[spine] = 700
    return _frozen(hu + np.int16(1024)), _frozen(body)


def _unsigned(stored: NDArray[np.int16]) -> NDArray[np.uint16]:
    """Phantom plus noise is never negative: reinterpret it as unsigned 12-bit stored values."""
    out: NDArray[np.uint16] = stored.view(np.uint16)
    return out


def _ct_pixels(spec: StudySpec, z: float, plane: int) -> NDArray[np.uint16]:
    anatomy, body = _ct_phantom(spec.rows, spec.columns, round(z * 8))
    noise = _noise(spec.rows, spec.columns, spec.seed)[plane]
    return _unsigned(anatomy + noise * body)


@lru_cache(maxsize=64)
def _mr_phantom(rows: int, columns: int, level: int) -> tuple[NDArray[np.int16], NDArray[np.bool_]]:
    """A T1-weighted-looking axial head at ``level`` -8..8 (neck..vertex), and the head mask."""
    y, x = _grid(rows, columns)
    z = level / 8
    r = max(0.25, 0.85 * (1 - 0.6 * z * z))
    scalp = _ellipse(y, x, 0.0, 0.0, r * 1.15, r)
    skull = _ellipse(y, x, 0.0, 0.0, r * 1.08, r * 0.93)
    brain = _ellipse(y, x, 0.0, 0.0, r * 1.0, r * 0.86)
    white = _ellipse(y, x, 0.0, 0.0, r * 0.78, r * 0.64)
    ventricles = _ellipse(y, np.abs(x), -0.05, 0.08, 0.28 * r, 0.07 * r)
    image = np.zeros((rows, columns), np.int16)
    image[scalp] = 1300  # fat
    image[skull] = 150  # cortical bone
    image[brain] = 600  # grey matter
    image[white] = 800
    image[ventricles] = 250  # CSF
    return _frozen(image), _frozen(scalp)


def _mr_pixels(spec: StudySpec, z: float, plane: int) -> NDArray[np.uint16]:
    anatomy, head = _mr_phantom(spec.rows, spec.columns, round(z * 8))
    noise = _noise(spec.rows, spec.columns, spec.seed)[plane]
    return _unsigned(anatomy + noise * head * np.int16(3))


@lru_cache(maxsize=16)
def _xray_phantom(rows: int, columns: int, body_part: str) -> NDArray[np.uint16]:
    """A 12-bit MONOCHROME2 projection: chest, extremity or a generic trunk."""
    y, x = _grid(rows, columns)
    image = np.full((rows, columns), 150.0, np.float32)
    if body_part == "CHEST":
        body = _ellipse(y, x, 0.05, 0.0, 1.1, 0.85)
        lungs = _ellipse(y, np.abs(x), -0.1, 0.4, 0.62, 0.25)
        ribs = lungs & (np.sin((y + 0.3 * np.abs(x)) * 30) > 0.4)
        image[body] = 1700
        image[lungs] = 700
        image[ribs] += 500
        image += 1100 * np.exp(-((x / 0.12) ** 2)) * (y > -0.8)  # mediastinum and spine
    elif body_part in _PAIRED:
        soft = np.abs(x) < 0.45 - 0.1 * y
        image[soft] = 1500
        image += 1400 * (np.abs(x + 0.1) < 0.09) * (y < 0.25)  # tibia
        image += 1100 * (np.abs(x - 0.22) < 0.035) * (y < 0.3)  # fibula
        image += 1400 * _ellipse(y, x, 0.45, 0.0, 0.18, 0.25)  # talus
    else:
        body = _ellipse(y, x, 0.0, 0.0, 1.2, 0.9)
        image[body] = 1600 - 300 * np.abs(x[body])
        image += 1200 * (np.abs(x) < 0.1)  # spine
        image += 900 * (_ellipse(y, x, 0.35, 0.0, 0.45, 0.65) & ~_ellipse(y, x, 0.35, 0.0, 0.36, 0.55))
    return _frozen(np.clip(image, 0, 4000).astype(np.uint16))


def _xray_pixels(spec: StudySpec, plane: int) -> NDArray[np.uint16]:
    anatomy = _xray_phantom(spec.rows, spec.columns, spec.body_part)
    noise = _noise(spec.rows, spec.columns, spec.seed)[plane]
    out: NDArray[np.uint16] = anatomy + (noise * 5 + 80).astype(np.uint16)  # 0..155 over 150
    return out


@lru_cache(maxsize=8)
def _fan(rows: int, columns: int) -> NDArray[np.bool_]:
    """The sector of a curved-array probe with its apex at the top centre."""
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    angle = np.arctan2(xx - columns / 2, yy + rows * 0.1)
    depth = np.hypot(xx - columns / 2, yy + rows * 0.1)
    return _frozen((np.abs(angle) < 0.65) & (depth > rows * 0.15) & (depth < rows * 1.05))


def _us_pixels(spec: StudySpec, instance: int) -> NDArray[np.uint8]:
    """8-bit frames: speckle in the fan, an organ that moves a little from frame to frame."""
    rows, columns = spec.rows, spec.columns
    y, x = _grid(rows, columns)
    fan = _fan(rows, columns)
    speckle = (((_noise(rows, columns, spec.seed) + 16) * 3 + 40) * fan).astype(np.uint8)  # 40..133
    out = np.empty((spec.frames, rows, columns), np.uint8)
    for f in range(spec.frames):
        shift = 0.06 * float(np.sin(2 * np.pi * f / max(spec.frames, 2) + instance))
        out[f] = speckle[(f + instance) % _NOISE_PLANES]
        out[f][_ellipse(y, x, 0.25 + shift, 0.0, 0.3, 0.35) & fan] //= 3  # anechoic, like a full bladder
    return out


# Headers. Series-constant attributes are encoded once and reused as raw data elements.


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _age(birth_date: str, on: str) -> str:
    """Patient's Age (AS) on date ``on``, e.g. ``"043Y"``."""
    years = int(on[:4]) - int(birth_date[:4]) - (on[4:] < birth_date[4:])
    return f"{max(years, 0):03d}Y"


def _common(spec: StudySpec, series: int) -> Dataset:
    """Patient, General Study, Patient Study, General Series, General Equipment and SOP Common."""
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = spec.study_date
    ds.InstanceCreationTime = spec.study_time
    ds.SOPClassUID = _sop_class(spec)
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = spec.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = spec.study_time
    ds.AccessionNumber = spec.accession_number
    ds.Modality = spec.modality
    ds.Manufacturer = "imagebridge"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Chen^Lin"
    ds.StationName = f"SYNTH{spec.modality}1"
    ds.StudyDescription = spec.description
    ds.SeriesDescription = f"{spec.description} series {series + 1}"
    ds.ManufacturerModelName = "Synthetic"
    ds.PatientName = spec.patient.name
    ds.PatientID = spec.patient.patient_id
    ds.PatientBirthDate = spec.patient.birth_date
    ds.PatientSex = spec.patient.sex
    ds.PatientAge = _age(spec.patient.birth_date, spec.study_date)
    ds.BodyPartExamined = spec.body_part
    ds.SoftwareVersions = "1"
    ds.StudyInstanceUID = study_uid_for(spec)
    ds.SeriesInstanceUID = _series_uid(spec, series)
    ds.StudyID = spec.accession_number[-16:] or "1"
    ds.SeriesNumber = series + 1
    ds.AcquisitionNumber = 1
    if spec.body_part in _PAIRED:
        ds.ImageLaterality = "L"
    return ds


def _series_uid(spec: StudySpec, series: int) -> str:
    return _uid("series", study_uid_for(spec), series)


def _cross_section(ds: Dataset, spec: StudySpec) -> None:
    """Frame of Reference and the constant part of Image Plane (C.7.4.1, C.7.6.2)."""
    ds.FrameOfReferenceUID = _uid("frame-of-reference", study_uid_for(spec))
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [_SPACING[spec.modality]] * 2
    ds.SliceThickness = 2.0


def _pixel_module(ds: Dataset, spec: StudySpec, bits: int, stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = bits
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0


def _modality(ds: Dataset, spec: StudySpec, series: int) -> None:
    """The modality's series and image modules (PS3.3 C.8)."""
    if spec.modality == "CT":  # C.8.2.1 CT Image
        _cross_section(ds, spec)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.ConvolutionKernel = "STANDARD"
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = [40, -600]
        ds.WindowWidth = [400, 1500]
        ds.WindowCenterWidthExplanation = ["MEDIASTINUM", "LUNG"]
        _pixel_module(ds, spec, 16, 12)
    elif spec.modality == "MR":  # C.8.3.1 MR Image
        _cross_section(ds, spec)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 500
        ds.EchoTime = 15
        ds.EchoTrainLength = 1
        ds.MagneticFieldStrength = 1.5
        ds.ImagingFrequency = 63.87
        ds.WindowCenter = 650
        ds.WindowWidth = 1300
        _pixel_module(ds, spec, 16, 12)
    elif spec.modality in ("CR", "DX"):  # C.8.1 CR Series/Image, C.8.11 DX modules
        views = ("PA", "LL") if spec.body_part == "CHEST" else ("AP", "LL")
        ds.ViewPosition = views[series % 2]
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.KVP = 110 if spec.body_part == "CHEST" else 60
        ds.WindowCenter = 1800
        ds.WindowWidth = 3600
        _pixel_module(ds, spec, 16, 12)
        if spec.modality == "DX":
            ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
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
            ds.ImageLaterality = ds.get("ImageLaterality", "U")  # unpaired unless _common set it
            ds.PatientOrientation = ["L", "F"] if series % 2 == 0 else ["P", "F"]
            ds.PositionerType = ""
            code, meaning = _ANATOMY.get(spec.body_part, ("38266002", "Entire body"))
            ds.AnatomicRegionSequence = [_code(code, "SCT", meaning)]
            ds.ViewCodeSequence = [_code(*_VIEWS[ds.ViewPosition])]
            ds.AcquisitionContextSequence = []
    else:  # C.8.5.6 US Image, C.7.6.6 Multi-frame, C.7.6.5 Cine
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
        ds.LossyImageCompression = "00"
        _pixel_module(ds, spec, 8, 8)
        if spec.frames > 1:
            ds.NumberOfFrames = spec.frames
            ds.FrameIncrementPointer = 0x00181063  # Frame Time
            ds.FrameTime = 33.3
            ds.CineRate = 30


@lru_cache(maxsize=4)
def _series_header(spec: StudySpec, series: int) -> Elements:
    """The series-constant attributes, encoded once, as raw Explicit VR Little Endian elements."""
    ds = _common(spec, series)
    _modality(ds, spec, series)
    if "PatientOrientation" not in ds:
        ds.PatientOrientation = ""
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, ds)
    return dict(read_dataset(io.BytesIO(encoded.getvalue()), False, True).items())


def _instance(spec: StudySpec, series: int, index: int) -> Dataset:
    sop_uid = _uid("instance", _series_uid(spec, series), index)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _sop_class(spec)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "IMAGEBRIDGE_1"
    ds = Dataset(dict(_series_header(spec, series)))
    ds.set_original_encoding(False, True, _ENCODINGS)  # so the raw elements are written as they are
    ds.file_meta = meta
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = index + 1
    plane = (index + series) % _NOISE_PLANES
    z = 2 * index / (spec.instances_per_series - 1) - 1 if spec.instances_per_series > 1 else 0.0
    if spec.modality in ("CT", "MR"):
        spacing = _SPACING[spec.modality]
        ds.ImagePositionPatient = [
            round(-spec.columns * spacing / 2, 3),
            round(-spec.rows * spacing / 2, 3),
            -2.0 * index,
        ]
        ds.SliceLocation = -2.0 * index
        pixels = _ct_pixels(spec, z, plane) if spec.modality == "CT" else _mr_pixels(spec, z, plane)
        ds.add_new(0x7FE00010, "OW", pixels.tobytes())
    elif spec.modality == "US":
        ds.add_new(0x7FE00010, "OB", _us_pixels(spec, index).tobytes())
    else:
        ds.add_new(0x7FE00010, "OW", _xray_pixels(spec, plane).tobytes())
    return ds


def generate_study(spec: StudySpec) -> Iterator[Dataset]:
    """The instances of ``spec``, series by series, built one at a time as they are consumed."""
    if spec.modality not in MODALITIES:
        raise ValueError(f"unsupported modality {spec.modality!r}; expected one of {MODALITIES}")
    for series in range(spec.series_count):
        for index in range(spec.instances_per_series):
            yield _instance(spec, series, index)


def dataset_bytes(ds: Dataset) -> bytes:
    """PS3.10 bytes: 128-byte preamble, ``DICM``, File Meta Information and the data set."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_study(spec: StudySpec, outdir: Path) -> list[Path]:
    """Write ``spec`` as PS3.10 files ``<modality><series:02><instance:05>.dcm`` in ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in generate_study(spec):
        path = outdir / f"{spec.modality}{int(ds.SeriesNumber):02d}{int(ds.InstanceNumber):05d}.dcm"
        path.write_bytes(dataset_bytes(ds))
        paths.append(path)
    return paths


_SAMPLES = (
    ("CT_small.dcm", "CT 128x128, Explicit VR Little Endian"),
    ("image_dfl.dcm", "OT 512x512, Deflated Explicit VR Little Endian"),
    ("MR_small_RLE.dcm", "MR 64x64, RLE Lossless"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR 64x64, JPEG-LS Lossless"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "US 1024x768, JPEG Lossless SV1"),
    ("examples_ybr_color.dcm", "US cine 30 frames 320x240, JPEG Baseline, YBR_FULL_422"),
    ("693_J2KR.dcm", "CT 512x512, JPEG 2000 Lossless"),
    ("693_J2KI.dcm", "CT 512x512, JPEG 2000 (lossy)"),
    ("eCT_Supplemental.dcm", "Enhanced CT, 2 frames 512x512, Explicit VR Little Endian"),
)


def sample_files() -> list[SampleFile]:
    """Real-world samples from pydicom and pydicom-data (offline), one per transfer syntax."""
    samples = []
    for name, description in _SAMPLES:
        found = get_testdata_file(name)
        if found is None:
            continue
        path = Path(str(found))
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        samples.append(SampleFile(name, path, str(meta.TransferSyntaxUID), description))
    return samples
