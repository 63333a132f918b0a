"""Synthetic, deterministic DICOM corpora for the benchmarks (generated once, then reused).

A corpus is a folder `<workdir>/corpus/<kind>-<count>/` holding nothing but one Part 10 file
per instance (so it can be given to `vna import` as is), and a manifest
`<workdir>/corpus/<kind>-<count>.json` written last, so a half-generated corpus is never
reused. UIDs derive from the corpus name and the instance's position: a regenerated corpus is
identical.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

DEFAULT_WORKDIR = Path(os.environ.get("VNA_BENCH_DIR", "/tmp/vna-bench"))
_UID_NS = uuid.UUID("6f1c8e52-7a1e-4d0b-9a55-0c6f3b1d2e77")

FIRST_NAMES = ["Anna", "Erik", "Maria", "Lars", "Karin", "Johan", "Eva", "Anders", "Sara",
               "Per", "Emma", "Nils", "Ingrid", "Olof", "Elin", "Gustav", "Linnea", "Axel"]
LAST_NAMES = ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Larsson", "Olsson",
              "Persson", "Svensson", "Gustafsson", "Pettersson", "Jonsson", "Lindberg", "Berg"]

# modality -> (SOP class, study description, body part, station)
MODALITIES = {
    "CT": (CTImageStorage, "CT THORAX BUK", "CHEST", "CT01"),
    "MR": (MRImageStorage, "MR HJARNA", "HEAD", "MR01"),
    "CR": (ComputedRadiographyImageStorage, "RTG LUNGOR", "CHEST", "CR01"),
}


@dataclass(frozen=True)
class Layout:
    """How a corpus is shaped: image size and how instances group into series/studies/patients."""

    kind: str
    size: int
    per_series: int
    series_per_study: int
    studies_per_patient: int
    modalities: tuple[str, ...]


KINDS: dict[str, Layout] = {
    # 512x512x16 bit CT slices, ~0.5 MB each: 2 series of 100 slices per study.
    "ct": Layout("ct", 512, 100, 2, 1, ("CT",)),
    # 64x64x16 bit images, ~8 KB: many small studies of mixed modality.
    "tiny": Layout("tiny", 64, 10, 2, 2, ("CT", "MR", "CR")),
    # The C-FIND index: 1 study x 2 series x 5 instances per patient.
    "find": Layout("find", 64, 5, 2, 1, ("CT", "MR", "CR")),
    # One study of one series of `count` 512x512x16 bit CT slices (per_series 0: all of
    # them): DICOMweb's series metadata, retrieval, frames and the big STOW.
    "series": Layout("series", 512, 0, 1, 1, ("CT",)),
}


@dataclass
class Corpus:
    """A generated corpus: its files in send order and their total size."""

    kind: str
    count: int
    root: Path
    files: list[Path]
    nbytes: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.count}"

    def patient_ids(self) -> list[str]:
        """Every PatientID in the corpus (derived, not read back from the files)."""
        lay = layout(self.kind, self.count)
        per_patient = lay.per_series * lay.series_per_study * lay.studies_per_patient
        return [patient_id(i) for i in range((self.count + per_patient - 1) // per_patient)]


def layout(kind: str, count: int) -> Layout:
    """The layout of `kind`-`count` (a one-series kind holds all `count` in its series)."""
    lay = KINDS[kind]
    return replace(lay, per_series=count) if lay.per_series == 0 else lay


def study_uid(corpus: str, study_no: int) -> UID:
    """The StudyInstanceUID of study `study_no` (from 0) of the corpus named `corpus`."""
    return uid(corpus, "study", study_no)


def series_uid(corpus: str, study_no: int, series_no: int) -> UID:
    return uid(corpus, "series", study_no, series_no)


def instance_uid(corpus: str, i: int) -> UID:
    """The SOPInstanceUID of the corpus's instance `i` (from 0, in send order)."""
    return uid(corpus, "instance", i)


def uid(*parts: object) -> UID:
    """A deterministic UID under 2.25 (UUID-derived), the same on every machine."""
    return UID("2.25." + str(uuid.uuid5(_UID_NS, "/".join(map(str, parts))).int))


def _luhn_digit(digits: str) -> int:
    total = 0
    for i, ch in enumerate(digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


def _birth(idx: int) -> tuple[dt.date, int]:
    # 7919 is prime to 36500: unique birth dates within each block of 36,500 patients.
    born = dt.date(1930, 1, 1) + dt.timedelta(days=(idx * 7919) % 36500)
    serial = (idx // 36500) * 100 + idx % 100
    return born, serial


def patient_id(idx: int) -> str:
    """A unique, checksum-valid Swedish personnummer (YYYYMMDD-NNNC), as in a real region."""
    born, serial = _birth(idx)
    core = born.strftime("%y%m%d") + f"{serial:03d}"
    return f"{born:%Y%m%d}-{serial:03d}{_luhn_digit(core)}"


def _template(lay: Layout) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstitutionName = "Regionsjukhuset"
    ds.Manufacturer = "VNA-BENCH"
    ds.ManufacturerModelName = "Synthetic"
    ds.ReferringPhysicianName = "Remiss^Doktor"
    ds.StudyID = "1"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = lay.size
    ds.Columns = lay.size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    return ds


def _phantom(size: int) -> np.ndarray:
    """A body-like disc with some texture: realistic enough, and cheap to vary per slice."""
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2) / (size / 2)
    img = np.where(r < 0.9, 1040, 24).astype(np.int32)
    img += ((x * 7 + y * 13) % 64).astype(np.int32)
    return img


def generate(kind: str, count: int, workdir: Path = DEFAULT_WORKDIR, *,
             quiet: bool = False) -> Corpus:
    """The corpus `kind`-`count` under workdir, generated unless a complete one is there."""
    lay = layout(kind, count)
    root = workdir / "corpus" / f"{kind}-{count}"
    manifest = root.with_name(root.name + ".json")
    params = json.loads(json.dumps(asdict(lay) | {"count": count, "version": 1}))
    if manifest.is_file():
        meta = json.loads(manifest.read_text())
        if meta.get("params") == params:
            return Corpus(kind, count, root, [root / rel for rel in meta["files"]],
                          int(meta["nbytes"]))
    manifest.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    t0 = time.monotonic()
    ds = _template(lay)
    base = _phantom(lay.size)
    per_study = lay.per_series * lay.series_per_study
    files: list[Path] = []
    nbytes = 0
    name = f"{kind}-{count}"
    this_study = this_series = UID("")
    for i in range(count):
        study_no, rest = divmod(i, per_study)
        series_no, inst_no = divmod(rest, lay.per_series)
        patient_no = study_no // lay.studies_per_patient
        modality = lay.modalities[study_no % len(lay.modalities)]
        sop_class, description, body_part, station = MODALITIES[modality]
        if inst_no == 0:
            this_study = study_uid(name, study_no)
            this_series = series_uid(name, study_no, series_no)
        if rest == 0:
            born, serial = _birth(patient_no)
            day = dt.date(2024, 1, 1) + dt.timedelta(days=study_no % 366)
            minute = 7 * 60 + (study_no * 17) % (11 * 60)
            ds.PatientID = patient_id(patient_no)
            ds.PatientName = (f"{LAST_NAMES[patient_no % len(LAST_NAMES)]}^"
                              f"{FIRST_NAMES[(patient_no // 3) % len(FIRST_NAMES)]}")
            ds.PatientBirthDate = f"{born:%Y%m%d}"
            ds.PatientSex = "M" if serial % 2 else "F"
            ds.StudyInstanceUID = this_study
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"{day:%Y%m%d}"
            ds.StudyTime = f"{minute // 60:02d}{minute % 60:02d}00"
            ds.AccessionNumber = f"RAD{study_no + 1:08d}"
            ds.StudyDescription = description
            ds.Modality = modality
            ds.BodyPartExamined = body_part
            ds.StationName = station
            ds.SOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPClassUID = sop_class
        if inst_no == 0:
            ds.SeriesInstanceUID = this_series
            ds.SeriesNumber = series_no + 1
            ds.SeriesDescription = f"{description} {series_no + 1}"
            ds.SeriesTime = ds.StudyTime
        sop_uid = instance_uid(name, i)
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.InstanceNumber = inst_no + 1
        ds.ImagePositionPatient = [-179.2, -179.2, -float(inst_no)]
        ds.SliceLocation = -float(inst_no)
        ds.ContentTime = ds.StudyTime
        ds.PixelData = ((base + (i % 97)) & 0x0FFF).astype(np.uint16).tobytes()
        rel = Path(f"s{study_no:06d}") / f"r{series_no:02d}" / f"i{inst_no:05d}.dcm"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        nbytes += path.stat().st_size
        if not quiet and (i + 1) % 1000 == 0:
            print(f"  generated {i + 1}/{count} {name} files", file=sys.stderr, flush=True)
    meta = {"params": params, "nbytes": nbytes, "files": [str(p.relative_to(root)) for p in files]}
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(manifest)
    if not quiet:
        print(f"corpus {name}: {count} files, {nbytes / 1e6:.0f} MB generated in "
              f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return Corpus(kind, count, root, files, nbytes)


def warm(corpus: Corpus) -> None:
    """Read every file once, so that the first measured run does not pay for the disk."""
    for p in corpus.files:
        with open(p, "rb") as f:
            while f.read(1 << 20):
                pass


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Generate (or check) a benchmark corpus.")
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("count", type=int)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    a = ap.parse_args()
    c = generate(a.kind, a.count, a.workdir)
    print(f"{c.root}: {len(c.files)} files, {c.nbytes / 1e6:.1f} MB")
