"""Pure logic of the document archive: metadata rules, MIME checks, ranges, access rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.xds_api.content import (
    RangeNotSatisfiable,
    content_disposition,
    etag_matches,
    parse_range,
)
from storage.index.documents import split_cx
from tests.media import make_jpeg, make_mp4, make_pdf, make_wav
from vna.access import Action, Principal, Role
from vna.documents import mime
from vna.documents.entry import (
    AvailabilityStatus,
    DocumentMetadata,
    MetadataPatch,
    check_filename,
    parse_metadata,
)

ALLOWED = frozenset(["application/pdf", "audio/wav", "audio/mp4", "video/mp4", "image/jpeg"])


def test_metadata_defaults_and_required() -> None:
    m = parse_metadata(b'{"patientId": "191212121212", "classCode": "report", '
                       b'"practiceSettingCode": "lung"}')
    assert (m.confidentialityCode, m.languageCode, m.source.value) == ("N", "sv-SE",
                                                                      "department")
    assert m.creationTime is None  # the archive sets it on receipt
    with pytest.raises(ValidationError) as exc:
        parse_metadata(b'{"patientId": "191212121212"}')
    assert {e["loc"][0] for e in exc.value.errors()} == {"classCode", "practiceSettingCode"}
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_metadata(b'{"patientId": ')


@pytest.mark.parametrize("pid", ["19121212-1212", "12345^^^&1.2.752.129.2.1.3.1&ISO",
                                 "PAT_7"])
def test_patient_id_accepted(pid: str) -> None:
    DocumentMetadata(patientId=pid, classCode="c", practiceSettingCode="d")


@pytest.mark.parametrize("pid", ["", "19*", "19%", "a b", "x';--", "_leading", "é1", "1/2"])
def test_patient_id_refused(pid: str) -> None:
    with pytest.raises(ValidationError):
        DocumentMetadata(patientId=pid, classCode="c", practiceSettingCode="d")


def test_times_are_utc() -> None:
    m = DocumentMetadata(patientId="1", classCode="c", practiceSettingCode="d",
                         creationTime="2026-05-01T10:00:00+02:00")  # type: ignore[arg-type]
    assert m.creationTime is not None and m.creationTime.isoformat() == \
        "2026-05-01T08:00:00+00:00"


def test_replace_patch_keeps_the_patient() -> None:
    old = DocumentMetadata(patientId="1", classCode="c", practiceSettingCode="d", title="a",
                           mimeType="application/pdf")
    new = MetadataPatch(title="b").apply_to(old)
    assert (new.title, new.classCode, new.mimeType) == ("b", "c", None)
    with pytest.raises(ValueError, match="patientId"):
        MetadataPatch(patientId="2").apply_to(old)


@pytest.mark.parametrize("name", ["../x.pdf", "a/b.pdf", "..\\x", "..", "a\x00b"])
def test_filenames_with_paths_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_filename(name)


def test_plain_filenames_kept() -> None:
    assert check_filename("röntgen svar (2).pdf") == "röntgen svar (2).pdf"
    assert check_filename(None) is None


@pytest.mark.parametrize(("make", "expected"), [
    (make_pdf, "application/pdf"), (make_wav, "audio/wav"), (make_mp4, "video/mp4"),
    (make_jpeg, "image/jpeg")])
def test_sniffing_real_media(make: object, expected: str) -> None:
    head = make()[:mime.SNIFF_BYTES]  # type: ignore[operator]
    assert mime.check(head, [expected, None], ALLOWED) == expected


def test_mime_aliases_and_containers() -> None:
    wav = make_wav()
    assert mime.check(wav, ["audio/x-wav", "application/octet-stream"], ALLOWED) == "audio/wav"
    assert mime.agrees("audio/mp4", "video/mp4")  # one ISO-BMFF family
    assert not mime.agrees("application/pdf", "video/mp4")


@pytest.mark.parametrize("content", [
    b"\x7fELF\x02\x01\x01" + b"\0" * 100, b"MZ\x90\x00\x03" + b"\0" * 200,
    b"<html><body><script>alert(1)</script></body></html>", b"#!/bin/sh\nrm -rf /\n"])
def test_dangerous_content_refused(content: bytes) -> None:
    with pytest.raises(mime.MediaTypeRefused):
        mime.check(content, ["application/pdf"], ALLOWED)


def test_declared_type_must_agree() -> None:
    with pytest.raises(mime.MediaTypeRefused, match="declared as image/jpeg"):
        mime.check(make_pdf(), ["image/jpeg"], ALLOWED)


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("bytes=0-0", (0, 0)), ("bytes=10-", (10, 99)), ("bytes=-10", (90, 99)),
    ("bytes=-1000", (0, 99)), ("bytes=5-500", (5, 99)), ("bytes=0-1,5-6", None),
    ("items=0-1", None), ("bytes=50-10", None), ("bytes=x-1", None), ("bytes=-", None)])
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=-0", "bytes=500-600"])
def test_unsatisfiable_range(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


def test_etag_and_disposition() -> None:
    assert etag_matches('W/"abc", "def"', '"abc"') and etag_matches("*", '"x"')
    assert not etag_matches('"abc"', '"abd"')
    d = content_disposition('a"b\r\n.pdf', "2.25.1", "application/pdf")
    assert "\r" not in d and "\n" not in d and d.count('"') == 2
    assert content_disposition(None, "2.25.9", "application/pdf").startswith(
        'inline; filename="2.25.9.pdf"')


def test_access_rules() -> None:
    viewer = Principal("t1", Role.VIEWER, frozenset({"lung"}))
    assert viewer.may(Action.DOCUMENT_READ) and not viewer.may(Action.DOCUMENT_CREATE)
    assert viewer.in_department("lung") and not viewer.in_department("derm")
    assert viewer.sees(AvailabilityStatus.DEPRECATED)
    assert not viewer.sees(AvailabilityStatus.SUBMITTED)
    reviewer = Principal("t2", Role.REVIEWER)
    assert reviewer.sees(AvailabilityStatus.SUBMITTED)
    assert not reviewer.sees(AvailabilityStatus.REJECTED)
    uploader = Principal("t3", Role.UPLOADER)
    assert uploader.may(Action.DOCUMENT_REPLACE) and not uploader.may(Action.DOCUMENT_FIND)
    admin = Principal("t4", Role.ADMIN)
    assert all(admin.may(a) for a in Action) and admin.sees(AvailabilityStatus.REJECTED)
    assert admin.in_department("anything")


def test_split_cx() -> None:
    assert split_cx("12345") == ("12345", None)
    assert split_cx("12345^^^&1.2.752.129.2.1.3.1&ISO") == ("12345", "1.2.752.129.2.1.3.1")
    assert split_cx("12345^^^SE") == ("12345", "SE")
