"""The benchmark's data sets (issue 7 "What to build" 1), generated deterministically with
``imagebridge.apps.synthetic`` and cached under ``bench/work/data/<name>-<hash of parameters>/``.

* ``big``: one CT study of >= 390 slices of 512 x 512 (>= 200 MB);
* ``huge``: one CT study of 1024 x 1024 slices, >= 1 GB;
* ``small``: 10,000 one-instance studies across 1,000 patients (names, dates, IDs varied);
* the compressed sample files of pydicom and pydicom-data (``synthetic.sample_files``).

``--quick`` uses smaller sets with the same shapes. A set is complete once its ``manifest.json``
exists, so an interrupted generation is redone.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pydicom

from imagebridge.apps.synthetic import PatientSpec, StudySpec, dataset_bytes, generate_study, sample_files

#: The patient every CT study of the benchmark belongs to (one patient-context token sees them all).
CT_PATIENT = PatientSpec("BENCH-CT", "Benchmark^Casey", "19700101", "F")
_FAMILIES = (
    "Smith",
    "Garcia",
    "Nguyen",
    "Okafor",
    "Schmidt",
    "Rossi",
    "Kowalski",
    "Tanaka",
    "Silva",
    "Dubois",
)
_GIVEN = ("Ann", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon")


@dataclass(frozen=True)
class Instance:
    """One PS3.10 file of a data set and the UIDs it carries."""

    path: str
    size: int
    study: str
    series: str
    sop: str


@dataclass(frozen=True)
class DataSet:
    name: str
    directory: Path
    instances: tuple[Instance, ...]

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.instances)

    @property
    def studies(self) -> list[str]:
        return list(dict.fromkeys(i.study for i in self.instances))

    def paths(self) -> list[Path]:
        return [self.directory / i.path for i in self.instances]


@dataclass(frozen=True)
class Sizes:
    """The shape of each data set in one mode."""

    big_slices: int
    huge_slices: int
    patients: int
    studies_per_patient: int


FULL = Sizes(big_slices=420, huge_slices=520, patients=1000, studies_per_patient=10)
QUICK = Sizes(big_slices=60, huge_slices=64, patients=50, studies_per_patient=10)


def _ct(description: str, date: str, accession: str, slices: int, side: int, seed: int) -> StudySpec:
    return StudySpec(
        CT_PATIENT,
        "CT",
        description,
        "CHEST",
        date,
        accession_number=accession,
        instances_per_series=slices,
        rows=side,
        columns=side,
        seed=seed,
    )


def big_spec(slices: int) -> StudySpec:
    return _ct("Benchmark chest CT", "20240115", "BENCH-BIG", slices, 512, 0)


def huge_spec(slices: int) -> StudySpec:
    return _ct("Benchmark high-resolution CT", "20240116", "BENCH-HUGE", slices, 1024, 1)


def small_specs(patients: int, per_patient: int) -> list[StudySpec]:
    """One 64 x 64 CT image per study; names from a small pool (so fuzzy matches find several)."""
    rng = random.Random(7)
    specs = []
    for p in range(patients):
        patient = PatientSpec(
            f"BENCH{p:05d}",
            f"{rng.choice(_FAMILIES)}^{rng.choice(_GIVEN)}",
            f"{rng.randint(1930, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}",
            rng.choice("MF"),
        )
        for n in range(per_patient):
            date = f"{rng.randint(2015, 2024)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            specs.append(
                StudySpec(
                    patient,
                    "CT",
                    f"Benchmark study {n}",
                    "CHEST",
                    date,
                    "101500",
                    accession_number=f"BA{p:05d}{n:02d}",
                    rows=64,
                    columns=64,
                    seed=p * 100 + n,
                )
            )
    return specs


def _key(name: str, specs: Sequence[StudySpec]) -> str:
    digest = hashlib.sha256(json.dumps([asdict(s) for s in specs], sort_keys=True).encode()).hexdigest()
    return f"{name}-{digest[:12]}"


def _load(name: str, directory: Path) -> DataSet | None:
    manifest = directory / "manifest.json"
    if not manifest.exists():
        return None
    return DataSet(name, directory, tuple(Instance(**i) for i in json.loads(manifest.read_text())))


def _save(name: str, directory: Path, instances: list[Instance]) -> DataSet:
    (directory / "manifest.json").write_text(json.dumps([asdict(i) for i in instances]))
    return DataSet(name, directory, tuple(instances))


def generated(work: Path, name: str, specs: Sequence[StudySpec]) -> DataSet:
    """The PS3.10 files of ``specs`` under ``work/data``, generated on first use."""
    directory = work / "data" / _key(name, specs)
    cached = _load(name, directory)
    if cached is not None:
        return cached
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    instances = []
    for s, spec in enumerate(specs):
        for ds in generate_study(spec):
            data = dataset_bytes(ds)
            path = f"{s:05d}-{int(ds.SeriesNumber):02d}-{int(ds.InstanceNumber):05d}.dcm"
            (directory / path).write_bytes(data)
            instances.append(
                Instance(path, len(data), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            )
    return _save(name, directory, instances)


def samples(work: Path) -> DataSet:
    """pydicom's compressed (and a few uncompressed) sample files, each SOP Instance once."""
    directory = work / "data" / "samples"
    directory.mkdir(parents=True, exist_ok=True)
    instances = []
    seen: set[str] = set()
    for sample in sample_files():
        target = directory / sample.name
        shutil.copyfile(sample.path, target)
        ds = pydicom.dcmread(target, stop_before_pixels=True)
        if ds.SOPInstanceUID in seen:  # one SOP Instance in two encodings: store it once
            continue
        seen.add(ds.SOPInstanceUID)
        size = target.stat().st_size
        instances.append(
            Instance(sample.name, size, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        )
    return DataSet("samples", directory, tuple(instances))


def variant(instance: Instance, data: bytes, number: int) -> bytes:
    """``data`` as a new study: its study, series and SOP Instance UIDs with their last four digits
    replaced by ``number`` (same length, so every element length and the padding stay valid)."""
    if number == 0:
        return data
    for uid in (instance.study, instance.series, instance.sop):
        data = data.replace(uid.encode(), f"{uid[:-4]}{number:04d}".encode())
    return data
