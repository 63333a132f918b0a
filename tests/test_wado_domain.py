"""The pure parts of WADO-RS: Accept negotiation, frame lists, bulk data paths and the
substitution that turns stored placeholders into URLs."""

from __future__ import annotations

import json

import pytest

from vna.dicom import mediatypes as mt
from vna.dicom.frames import parse_frame_numbers
from vna.dicom.metadata import BulkDataPath, metadata_array, with_bulkdata_urls
from vna.dicom.transcode import can_transcode

JPEG = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
ELE = mt.EXPLICIT_LE


def always(*_: str) -> bool:
    return True


def test_parse_accept_quoted_unquoted_and_q() -> None:
    ranges = mt.parse_accept('multipart/related; type="application/dicom"; '
                             'transfer-syntax="*", application/dicom+json;q=0.5, '
                             'multipart/related; type=application/octet-stream;q=0, junk')
    assert [(r.media_type, r.related_type, r.transfer_syntax, r.q) for r in ranges] == [
        ("multipart/related", "application/dicom", "*", 1.0),
        ("application/dicom+json", None, None, 0.5)]
    assert mt.parse_accept(None) == [mt.MediaRange("*/*")]
    assert mt.parse_accept("  ") == [mt.MediaRange("*/*")]


def test_instance_syntax() -> None:
    def syntax(accept: str, stored: str) -> str | None:
        return mt.instance_syntax(mt.parse_accept(accept), stored, can_transcode)

    related = 'multipart/related; type="application/dicom"'
    assert syntax(related, JPEG) == JPEG
    assert syntax(f"{related}; transfer-syntax=*", JPEG) == JPEG
    assert syntax(f"{related}; transfer-syntax={ELE}", JPEG) == ELE
    assert syntax(f"{related}; transfer-syntax={ELE}", ELE) == ELE
    assert syntax(f"{related}; transfer-syntax={JPEG}", ELE) is None  # no compressed target
    assert syntax(f"{related}; transfer-syntax={JPEG}, {related}; transfer-syntax={ELE}",
                  RLE) == ELE
    assert syntax("*/*", RLE) == RLE
    assert syntax("application/dicom", RLE) == RLE
    assert syntax("application/dicom+json", RLE) is None
    assert syntax('multipart/related; type="image/jpeg"', JPEG) is None


@pytest.mark.parametrize(("accept", "stored", "expected"), [
    # OHIF, quoted and unquoted: compressed as stored, labelled octet-stream with its syntax
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', JPEG,
     (False, "application/octet-stream", JPEG)),
    ('multipart/related; type=application/octet-stream; transfer-syntax="*"', JPEG,
     (False, "application/octet-stream", JPEG)),
    ('multipart/related; type="application/octet-stream"; transfer-syntax=*', mt.IMPLICIT_LE,
     (False, "application/octet-stream", ELE)),
    # octet-stream without a syntax, or Explicit VR Little Endian: decoded
    ('multipart/related; type="application/octet-stream"', JPEG,
     (True, "application/octet-stream", ELE)),
    (f'multipart/related; type="application/octet-stream"; transfer-syntax={ELE}', RLE,
     (True, "application/octet-stream", ELE)),
    # */* and the codec's own type: as stored, in that type
    ('multipart/related; type="*/*"', JPEG, (False, "image/jpeg", JPEG)),
    ("*/*", RLE, (False, "image/dicom-rle", RLE)),
    ('multipart/related; type="image/x-dicom-rle"', RLE, (False, "image/dicom-rle", RLE)),
    ('multipart/related; type="image/*"', JPEG, (False, "image/jpeg", JPEG)),
    (None, mt.EXPLICIT_BE, (False, "application/octet-stream", ELE)),
    # nothing that can be made
    ('multipart/related; type="image/jp2"', JPEG, None),
    ('multipart/related; type="image/jpeg"', ELE, None),
    ("application/dicom+json", JPEG, None),
])
def test_frame_answer(accept: str | None, stored: str,
                      expected: tuple[bool, str, str] | None) -> None:
    answer = mt.frame_answer(mt.parse_accept(accept), stored, always)
    got = None if answer is None else (answer.decode, answer.media_type,
                                       answer.transfer_syntax)
    assert got == expected


def test_frame_answer_without_a_decoder() -> None:
    ranges = mt.parse_accept('multipart/related; type="application/octet-stream"')
    assert mt.frame_answer(ranges, JPEG, lambda _ts: False) is None


def test_takes_json_and_rendered_type() -> None:
    assert mt.takes_json(mt.parse_accept(
        'application/dicom+json, multipart/related; type="application/octet-stream"; '
        'transfer-syntax=*'))
    assert mt.takes_json(mt.parse_accept(None))
    assert not mt.takes_json(mt.parse_accept('multipart/related; type="application/dicom"'))
    assert mt.rendered_type(mt.parse_accept(None)) == "image/jpeg"
    assert mt.rendered_type(mt.parse_accept("image/png, image/jpeg;q=0.5")) == "image/png"
    assert mt.rendered_type(mt.parse_accept("image/gif")) is None


def test_frame_numbers() -> None:
    assert parse_frame_numbers("1,3,5") == [1, 3, 5]
    assert parse_frame_numbers("0") == [0]  # well-formed; no such frame is for the instance
    for bad in ("", "1,", ",1", "a", "1;2", "-1", "1.0", "²", "1234567890"):
        with pytest.raises(ValueError):
            parse_frame_numbers(bad)


def test_bulkdata_paths() -> None:
    assert BulkDataPath.parse("7FE00010") == BulkDataPath((), 0x7FE00010)
    p = BulkDataPath.parse("54000100/2/54001010")
    assert p.items == ((0x54000100, 2),) and p.tag == 0x54001010
    assert str(p) == "54000100/2/54001010"
    for bad in ("", "7FE0", "54000100/0/54001010", "54000100/1", "54000100/x/54001010",
                "../7FE00010", "7FE00010/../7FE00010"):
        with pytest.raises(ValueError):
            BulkDataPath.parse(bad)


def test_placeholders_become_urls_without_decoding() -> None:
    header = json.dumps({
        "00101010": {"vr": "LO", "Value": ['"BulkDataURI": "bulkdata:not-one']},
        "54000100": {"vr": "SQ", "Value": [{"54001010": {
            "vr": "OW", "BulkDataURI": "bulkdata:54000100/1/54001010"}}]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata:7FE00010"}})
    url = 'http://h"x/dicomweb/studies/1/series/2/instances/3'
    out = json.loads(with_bulkdata_urls(header, url))
    assert out["7FE00010"]["BulkDataURI"] == url + "/bulkdata/7FE00010"
    assert out["54000100"]["Value"][0]["54001010"]["BulkDataURI"] == \
        url + "/bulkdata/54000100/1/54001010"
    assert out["00101010"]["Value"] == ['"BulkDataURI": "bulkdata:not-one']  # a value stays
    assert json.loads(metadata_array([header, header])) == [json.loads(header)] * 2
