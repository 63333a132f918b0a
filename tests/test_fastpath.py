"""The lean receive path encodes exactly what pynetdicom would."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode

from services.dicom_scp.pynetdicom_compat import encode_response, received_file_meta
from vna.dicom.part10 import encode_file_meta


@pytest.mark.parametrize("sop_class,sop_uid,ts", [
    ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5.6", "1.2.840.10008.1.2.1"),
    ("1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.8.498.123456789012", "1.2.840.10008.1.2"),
    ("1.2.840.10008.5.1.4.1.1.77.1.4", "9.99", "1.2.840.10008.1.2.4.91"),
])
def test_file_meta_identical(sop_class: str, sop_uid: str, ts: str) -> None:
    ours = encode_file_meta(received_file_meta(sop_class, sop_uid, ts))
    buf = BytesIO()
    write_file_meta_info(buf, create_file_meta(sop_class_uid=sop_class,
                                               sop_instance_uid=sop_uid, transfer_syntax=ts))
    assert ours == buf.getvalue()


@pytest.mark.parametrize("status,comment", [(0x0000, None), (0xA900, "SOPInstanceUID is missing"),
                                            (0xC001, "odd")])
def test_store_response_identical(status: int, comment: str | None) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    rsp.AffectedSOPInstanceUID = "1.2.3.4.5"
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    assert encode_response(rsp) == encode(msg.command_set, True, True)


@pytest.mark.parametrize("identifier", [None, b"\x10\x00\x20\x00\x04\x00\x00\x00ABCD"])
def test_find_response_identical(identifier: bytes | None) -> None:
    from pynetdicom.dimse_messages import C_FIND_RSP
    from pynetdicom.dimse_primitives import C_FIND

    from services.dicom_scp.pynetdicom_compat import FastFindResponse

    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 3
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Status = 0xFF00 if identifier else 0x0000
    rsp.Identifier = BytesIO(identifier) if identifier else None
    slow, fast = C_FIND_RSP(), FastFindResponse()
    slow.primitive_to_message(rsp)
    fast.primitive_to_message(rsp)
    for max_pdu in (0, 16384, 40):
        a = [p.presentation_data_value_list for p in slow.encode_msg(1, max_pdu)]
        b = [p.presentation_data_value_list for p in fast.encode_msg(1, max_pdu)]
        assert a == b


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children still running (Linux /proc)."""
    import os

    total = 0
    for p in [pid, *map(int, os.popen(f"pgrep -P {pid}").read().split())]:
        fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def test_idle_association_sleeps_and_answers_at_once(scp: Any) -> None:
    """The DUL waits on its socket and on a wake-up from the association, not by polling:
    an open, idle association costs (almost) no CPU, and responses still go out at once
    (a missed wake-up would hold each one for up to 50 ms)."""
    import time

    from tests.dicom_client import echo

    assoc = echo(scp.port)
    try:
        before = _cpu_seconds(scp.proc.pid)
        time.sleep(2)
        assert _cpu_seconds(scp.proc.pid) - before < 0.2
        t0 = time.perf_counter()
        for _ in range(40):
            assert assoc.send_c_echo().Status == 0
        assert (time.perf_counter() - t0) / 40 < 0.02
    finally:
        assoc.release()


def test_response_taken_by_the_reactor_goes_back_to_the_waiting_sender() -> None:
    """pynetdicom #875: a response the reactor reads while a `send_c_*()` waits (checkpoint
    cleared) is put back on the queue that sender reads, not dropped as unexpected."""
    from pynetdicom import AE, Association

    from services.dicom_scp import pynetdicom_compat

    pynetdicom_compat.install_requestor()
    assert Association._serve_request is pynetdicom_compat._serve_request
    assoc = Association(AE(), mode="requestor")
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo, rsp.Status = 7, 0x0000
    assert rsp.is_valid_response and not rsp.is_valid_request
    assoc._reactor_checkpoint.clear()  # a sender waits for its response
    assoc._serve_request(rsp, 3)
    assert assoc.dimse.msg_queue.get_nowait() == (3, rsp)
