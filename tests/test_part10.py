"""The Part 10 byte layer (vna/dicom/part10.py): one VR table, the file meta read directly
as pydicom reads it, and a file written as it streams in described exactly as reading it
back would describe it."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from tests.factory import make_instance, write
from vna.dicom.part10 import (
    HEADER_BYTES,
    LONG_VRS,
    PREAMBLE,
    VRS,
    FileMeta,
    Part10Writer,
    ReceivedFile,
    encode_file_meta,
    hash_file,
    parse_file_meta,
    read_transfer_syntax,
)

DATA = Path(pydicom.__file__).parent / "data"


def test_one_vr_table_the_same_as_pydicom() -> None:
    assert {vr.decode() for vr in LONG_VRS} == {str(vr) for vr in EXPLICIT_VR_LENGTH_32}
    assert {vr.decode() for vr in VRS} == {str(vr) for vr in VR if "_" not in vr.name}


def _read_back(path: Path) -> ReceivedFile:
    """What the archive learns of a file on disk (`vna import`)."""
    ts, offset = read_transfer_syntax(path)
    sha256, size, head = hash_file(path, head=(offset, HEADER_BYTES))
    return ReceivedFile(str(path), ts, offset, sha256, size, head)


@pytest.mark.parametrize("path", sorted((DATA / "test_files").glob("*.dcm"))[:40],
                         ids=lambda p: p.name)
def test_file_meta_read_directly_as_pydicom_reads_it(path: Path) -> None:
    try:
        expected = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        pytest.skip("pydicom cannot read it")
    head = path.read_bytes()[:64 << 10]
    parsed = parse_file_meta(head)
    if parsed is None:  # no preamble or group length: read_transfer_syntax asks pydicom
        return
    ts, offset = parsed
    assert ts == str(expected.file_meta.TransferSyntaxUID)
    assert (ts, offset) == read_transfer_syntax(path)


def test_a_dataset_received_over_dimse(tmp_path: Path) -> None:
    meta = FileMeta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1",
                    "1.2.3", "VNA_1")
    dataset = bytes(range(256)) * 5000  # more than HEADER_BYTES
    writer = Part10Writer(str(tmp_path / "a.dcm"), meta)
    for start in range(0, len(dataset), 16384):
        writer.write(memoryview(dataset)[start:start + 16384])
    received = writer.finish()
    assert (tmp_path / "a.dcm").read_bytes() == PREAMBLE + encode_file_meta(meta) + dataset
    assert received == _read_back(tmp_path / "a.dcm")
    assert not received.whole_dataset


@pytest.mark.parametrize("size,chunk", [(8, 7), (8, 1 << 20), (400, 65536)])
def test_a_part10_file_streamed_in(tmp_path: Path, size: int, chunk: int) -> None:
    """A STOW-RS part: the whole file arrives, its file meta is read from what was kept."""
    source = write(make_instance(size=size), tmp_path / "src.dcm")
    data = source.read_bytes()
    writer = Part10Writer(str(tmp_path / "in.dcm"))
    for start in range(0, len(data), chunk):
        writer.write(data[start:start + chunk])
    received = writer.finish()
    expected = _read_back(tmp_path / "in.dcm")
    assert (tmp_path / "in.dcm").read_bytes() == data
    assert received.dataset_head == expected.dataset_head[:len(received.dataset_head)]
    assert received == ReceivedFile(expected.path, expected.transfer_syntax_uid,
                                    expected.dataset_offset, expected.sha256, expected.size,
                                    received.dataset_head)
    assert received.whole_dataset == (size == 8)


def test_a_stream_that_is_not_part10(tmp_path: Path) -> None:
    writer = Part10Writer(str(tmp_path / "x.dcm"))
    writer.write(b"not DICOM at all" * 100)
    with pytest.raises(ValueError, match="not a DICOM Part 10 file"):
        writer.finish()
    writer.discard()
    assert not (tmp_path / "x.dcm").exists()
