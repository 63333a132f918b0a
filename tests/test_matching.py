"""Unit tests of the pure matching and attribute-mapping logic."""

from __future__ import annotations

import pytest

from tests.factory import make_instance
from vna.dicom.attributes import (
    BY_KEYWORD,
    InvalidInstance,
    extract_header,
    is_valid_uid,
    normalize_time,
)
from vna.dicom.matching import (
    AnyOf,
    InvalidQuery,
    Range,
    Single,
    Universal,
    Wildcard,
    parse_matcher,
    wildcard_to_like,
)


def m(keyword: str, value: object) -> object:
    return parse_matcher(BY_KEYWORD[keyword], value)


def test_universal_and_single() -> None:
    assert m("PatientID", "") == Universal()
    assert m("PatientID", "*") == Universal()
    assert m("PatientID", None) == Universal()
    assert m("PatientID", "ABC ") == Single("ABC")


def test_wildcards_escape_sql_like_characters() -> None:
    assert m("PatientID", "AB*") == Wildcard("AB%")
    assert m("PatientID", "A?C") == Wildcard("A_C")
    assert wildcard_to_like("50%_off*") == "50\\%\\_off%"
    assert m("PatientName", "DOE^*") == Wildcard("DOE^%")


def test_pn_trailing_carets_ignored() -> None:
    assert m("PatientName", "DOE^JOHN^^^") == Single("DOE^JOHN")


def test_date_ranges() -> None:
    assert m("StudyDate", "20240101-20241231") == Range("20240101", "20241231")
    assert m("StudyDate", "-20241231") == Range(None, "20241231")
    assert m("StudyDate", "20240101-") == Range("20240101", None)
    assert m("StudyDate", "20240101") == Single("20240101")
    with pytest.raises(InvalidQuery):
        m("StudyDate", "2024-01-01-2025")
    with pytest.raises(InvalidQuery):
        m("StudyDate", "notadate")


def test_time_single_value_covers_its_precision() -> None:
    assert m("StudyTime", "10") == Range("100000.000000", "105959.999999")
    assert m("StudyTime", "1015-1130") == Range("101500.000000", "113000.000000")
    assert normalize_time("101530.5") == "101530.500000"
    assert normalize_time("10:15") == "101500.000000"


def test_uid_lists() -> None:
    assert m("StudyInstanceUID", "1.2.3\\1.2.4") == AnyOf(("1.2.3", "1.2.4"))
    assert m("StudyInstanceUID", ["1.2.3", "1.2.4"]) == AnyOf(("1.2.3", "1.2.4"))
    assert m("SOPInstanceUID", "1.2.3") == Single("1.2.3")


def test_uid_validation() -> None:
    assert is_valid_uid("1.2.840.10008.1.2")
    assert not is_valid_uid("1.2.abc")
    assert not is_valid_uid("../../etc")
    assert not is_valid_uid("1." + "2" * 70)


def test_extract_header_maps_levels() -> None:
    ds = make_instance(patient_id="P9", patient_name="Doe^Jane", study_time="1015")
    h = extract_header(ds)
    assert h.patient["patient_id"] == "P9"
    assert h.patient["patient_name_upper"] == "DOE^JANE"
    assert h.study["study_time"] == "101500.000000"
    assert h.series["modality"] == "CT"
    assert h.instance["rows"] == 8


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_extract_header_refuses_missing_uids(missing: str) -> None:
    ds = make_instance()
    delattr(ds, missing)
    with pytest.raises(InvalidInstance, match=missing):
        extract_header(ds)


def test_extract_header_refuses_path_like_uid() -> None:
    ds = make_instance()
    ds.SOPInstanceUID = "../../../etc/passwd"
    with pytest.raises(InvalidInstance, match="not a valid UID"):
        extract_header(ds)
