"""Reading the index's attributes from raw bytes (vna.dicom.part10.ElementReader +
header_from_elements)
gives exactly what pydicom's reading gives, or gives up; never something else."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from tests.factory import make_instance, write
from vna.dicom.attributes import (
    HEADER_ELEMENTS,
    InstanceHeader,
    InvalidInstance,
    extract_header,
    header_from_elements,
)
from vna.dicom.part10 import read_header, read_transfer_syntax

DATA = Path(pydicom.__file__).parent / "data"
PYDICOM_FILES = sorted([*(DATA / "test_files").rglob("*.dcm"),
                        *(DATA / "charset_files").rglob("*.dcm")])


def _raw(path: Path, cut: int | None = None) -> InstanceHeader | None | str:
    """The header as the raw reader gives it (None: it gave up; "invalid": refused)."""
    ts, offset = read_transfer_syntax(path)
    data = path.read_bytes()[offset:]
    head = data[:cut] if cut is not None else data
    implicit, little = ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian
    elements = HEADER_ELEMENTS.read(head, implicit_vr=implicit, little_endian=little,
                                    complete=len(head) == len(data))
    if elements is None:
        return None
    try:
        return header_from_elements(elements, implicit_vr=implicit, little_endian=little)
    except InvalidInstance as exc:
        return f"invalid: {exc}"


def _pydicom(path: Path) -> InstanceHeader | str:
    ts, offset = read_transfer_syntax(path)
    try:
        return extract_header(read_header(path, ts, offset))
    except InvalidInstance as exc:
        return f"invalid: {exc}"


def _plain_syntax(path: Path) -> bool:
    try:
        ts, _ = read_transfer_syntax(path)
    except Exception:
        return False
    return bool(ts) and ts.startswith("1.2.840.10008.1.2") and ts != "1.2.840.10008.1.2.1.99"


READABLE = [p for p in PYDICOM_FILES if _plain_syntax(p)]


@pytest.mark.parametrize("path", READABLE, ids=lambda p: p.name)
def test_same_as_pydicom_or_gives_up(path: Path) -> None:
    try:
        expected = _pydicom(path)
    except Exception:
        pytest.skip("pydicom cannot read it either")
    got = _raw(path)
    assert got is None or got == expected


def test_most_files_need_no_pydicom() -> None:
    read = [p for p in READABLE if _raw(p) is not None]
    assert len(read) >= 0.8 * len(READABLE), sorted(set(READABLE) - set(read))


def _variants(tmp_path: Path) -> list[Path]:
    out = []
    seq_item = Dataset()
    seq_item.CodeValue = "X"
    seq_item.ConceptNameCodeSequence = Sequence([Dataset()])
    for i, (ts, extra) in enumerate([
        (None, {}),
        (ImplicitVRLittleEndian, {}),
        (ExplicitVRBigEndian, {}),
        (None, {"ProcedureCodeSequence": Sequence([seq_item, Dataset()])}),
        (ImplicitVRLittleEndian, {"ProcedureCodeSequence": Sequence([seq_item])}),
        (None, {"SpecificCharacterSet": "ISO_IR 100", "PatientName": "Öberg^Åsa",
                "InstitutionName": "Länssjukhuset"}),
        (None, {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "Öberg^Åsa=オーベリ"}),
        (None, {"PatientName": "Öberg^Åsa"}),  # no character set: pydicom's default
    ]):
        ds = make_instance(**extra)
        if ts is not None:
            ds.file_meta.TransferSyntaxUID = ts
        out.append(write(ds, tmp_path / f"v{i}.dcm"))
    return out


def test_variants_same_as_pydicom(tmp_path: Path) -> None:
    for path in _variants(tmp_path):
        got = _raw(path)
        assert got is not None, path.name
        assert got == _pydicom(path), path.name


def test_other_vrs_and_nul_bytes(tmp_path: Path) -> None:
    """Values sent with another VR than the dictionary's go through pydicom's conversion on
    both paths; a NUL inside text is dropped (PostgreSQL refuses it in text)."""
    ds = make_instance(patient_name="Doe\x00^John")
    del ds.Rows
    ds.add_new(0x00280010, "IS", "8")  # Rows as IS, not US
    del ds.InstanceNumber
    ds.add_new(0x00200013, "US", 5)  # InstanceNumber as US, not IS
    path = write(ds, tmp_path / "vr.dcm")
    got = _raw(path)
    assert isinstance(got, InstanceHeader) and got == _pydicom(path)
    assert got.instance["rows"] == 8 and got.instance["instance_number"] == "5"
    assert got.patient["patient_name"] == "Doe^John"


def test_refuses_what_pydicom_path_refuses(tmp_path: Path) -> None:
    ds = make_instance()
    del ds.SeriesInstanceUID
    path = write(ds, tmp_path / "x.dcm")
    assert _raw(path) == _pydicom(path) == "invalid: SeriesInstanceUID is missing"


def test_a_cut_head_gives_up_unless_past_the_last_wanted_tag(tmp_path: Path) -> None:
    path = _variants(tmp_path)[3]  # with a sequence
    _, offset = read_transfer_syntax(path)
    size = len(path.read_bytes()) - offset
    whole = _pydicom(path)
    for cut in range(0, size, 7):
        got = _raw(path, cut)
        assert got is None or got == whole, cut
    assert _raw(path, size - 10) == whole  # inside the pixel data: all wanted tags read


def test_iso_2022_escapes_are_decoded_not_kept() -> None:
    """ISO 2022 escape sequences are ASCII bytes: such names still need their character set."""
    path = DATA / "charset_files" / "chrH31.dcm"
    for header in (_raw(path), _pydicom(path)):
        assert isinstance(header, InstanceHeader)
        assert header.patient["patient_name"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
