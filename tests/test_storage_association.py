"""The storage fast path (services/dicom_scp/storage_association.py): which associations it
serves, what it sends, and what a peer that breaks the protocol gets (an A-ABORT, nothing
archived, nothing left in incoming). Both receive paths are also run by the byte-for-byte,
refusal and kill -9 tests in test_dicom_scp.py and by DCMTK in test_dcmtk.py."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_role
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from services.dicom_scp.storage_association import accepts
from tests import dicom_client as dc
from tests.conftest import Backend, running_scp
from tests.factory import dataset_bytes, make_instance, write
from tests.test_dicom_scp import index_count, objects_on_disk
from vna.dicom.dimse import ProtocolError, parse_command, pdata_pdus

STORAGE = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def _rq(*abstract: str, calling: str = "RAWSCU", extra: list[object] | None = None,
        max_pdu: int = 16384) -> A_ASSOCIATE:
    rq = A_ASSOCIATE()
    rq.application_context_name = "1.2.840.10008.3.1.1.1"
    rq.calling_ae_title, rq.called_ae_title = calling, "VNA"
    for i, sop_class in enumerate(abstract):
        cx = build_context(sop_class, ExplicitVRLittleEndian)
        cx.context_id = 2 * i + 1
        rq.presentation_context_definition_list.append(cx)
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.826.0.1.3680043.9.3811.1"
    rq.user_information = [max_length, impl, *(extra or [])]
    return rq


def _store_rq(sop_uid: str, message_id: int = 1) -> bytes:
    req = C_STORE()
    req.MessageID = message_id
    req.AffectedSOPClassUID = CTImageStorage
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    msg.command_set.CommandDataSetType = 0x0001
    return encode(msg.command_set, True, True)


# -- which associations it serves ---------------------------------------------------------


def test_accepts_storage_and_verification_only() -> None:
    ae = AE("VNA")
    assert accepts(_rq(CTImageStorage, Verification), STORAGE, ae)
    assert not accepts(_rq(CTImageStorage, StudyRootQueryRetrieveInformationModelFind),
                       STORAGE, ae)
    assert not accepts(_rq("1.2.3.4.5.6"), STORAGE, ae)  # unknown: pynetdicom rejects it


def test_leaves_negotiation_and_policy_to_pynetdicom() -> None:
    ae = AE("VNA")
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 1
    identity.primary_field = b"user"
    assert not accepts(_rq(CTImageStorage, extra=[identity]), STORAGE, ae)
    role = build_role(CTImageStorage, scp_role=True)
    assert not accepts(_rq(CTImageStorage, extra=[role]), STORAGE, ae)
    ae.require_calling_aet = ["GOOD"]
    assert not accepts(_rq(CTImageStorage, calling="EVIL"), STORAGE, ae)
    assert accepts(_rq(CTImageStorage, calling="GOOD"), STORAGE, ae)
    ae.require_called_aet = True
    rq = _rq(CTImageStorage, calling="GOOD")
    rq.called_ae_title = "OTHER"
    assert not accepts(rq, STORAGE, ae)


# -- what it reads and sends ------------------------------------------------------------


def test_parse_command_reads_what_pynetdicom_encodes() -> None:
    cmd = parse_command(_store_rq("1.2.3.4", message_id=77))
    assert (cmd.command_field, cmd.message_id, cmd.has_dataset) == (0x0001, 77, True)
    assert (cmd.sop_class_uid, cmd.sop_instance_uid) == (CTImageStorage, "1.2.3.4")


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00\x01\x04\x00",  # truncated element header
    struct.pack("<HHI", 0, 0x0100, 20) + b"\x01\x00",  # value longer than the set
    struct.pack("<HHI", 8, 0x0100, 2) + b"\x01\x00",  # not group 0000
    struct.pack("<HHI", 0, 0x0100, 2) + b"\x01\x00",  # no MessageID
])
def test_parse_command_refuses_malformed(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_command(data)


@pytest.mark.parametrize("max_pdu", [0, 16384, 64])
def test_pdata_pdus_fit_the_peer(max_pdu: int) -> None:
    data = bytes(range(256)) * 2
    raw = pdata_pdus(3, True, data, max_pdu)
    pdus, pos = [], 0
    while pos < len(raw):
        length = struct.unpack(">I", raw[pos + 2:pos + 6])[0]
        assert not max_pdu or length <= max_pdu
        pdu = P_DATA_TF()
        pdu.decode(raw[pos:pos + 6 + length])
        pdus.append(pdu)
        pos += 6 + length
    pdvs = [pdv for pdu in pdus for pdv in pdu.presentation_data_value_items]
    assert all(pdv.presentation_context_id == 3 for pdv in pdvs)
    assert b"".join(pdv.data[1:] for pdv in pdvs) == data
    assert [pdv.data[0] for pdv in pdvs] == [0x01] * (len(pdvs) - 1) + [0x03]


def test_pdu_reader_hands_out_whole_pdus() -> None:
    """Whatever the sender's write sizes: PDUs smaller and larger than the buffer, several
    in one segment, one cut over many."""
    import threading

    from services.dicom_scp.storage_association import PDUReader

    bodies = [bytes([i % 251]) * n for i, n in enumerate([10, 0, 5000, 70_000, 3, 200_000, 7])]
    wire = b"".join(struct.pack(">BxI", 0x04, len(b)) + b for b in bodies)
    ours, theirs = socket.socketpair()

    def send() -> None:
        for i in range(0, len(wire), 3001):  # odd slices: PDUs cut anywhere
            theirs.sendall(wire[i:i + 3001])
        theirs.close()

    sender = threading.Thread(target=send)
    sender.start()
    reader = PDUReader(ours, 16 << 10)
    got = []
    for _ in bodies:
        pdu_type, body = reader.next()
        got.append((pdu_type, bytes(body)))
    sender.join(5)
    assert got == [(0x04, b) for b in bodies]
    from services.dicom_scp.storage_association import PeerGone

    with pytest.raises(PeerGone):
        reader.next()
    ours.close()


# -- over the wire ----------------------------------------------------------------------


class RawPeer:
    """A requestor that writes PDUs by hand, to break the protocol on purpose; with
    `also_query` it proposes C-FIND too, so that pynetdicom serves it."""

    def __init__(self, port: int, *, also_query: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        pdu = A_ASSOCIATE_RQ()
        pdu.from_primitive(_rq(CTImageStorage, *(
            [StudyRootQueryRetrieveInformationModelFind] if also_query else [])))
        self.sock.sendall(pdu.encode())
        pdu_type, body = self.read_pdu()
        assert pdu_type == 0x02, "association not accepted"

    def read_pdu(self) -> tuple[int, bytes]:
        head = self._read(6)
        return head[0], self._read(struct.unpack(">I", head[2:6])[0])

    def _read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError("closed")
            out += chunk
        return out

    def pdv(self, context_id: int, control: int, data: bytes) -> None:
        self.sock.sendall(struct.pack(">BxIIBB", 0x04, len(data) + 6, len(data) + 2,
                                      context_id, control) + data)

    def close(self) -> None:
        self.sock.close()

    def hang_up(self) -> None:
        """Close our side and wait until the SCP has closed its own: by then it has read
        everything sent (a busy SCP may not have, when the test looks)."""
        self.sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            while self.sock.recv(65536):
                pass
        self.sock.close()


def _left_in_incoming(backend: Backend) -> list[Path]:
    return [p for p in (backend.data_dir / "incoming").rglob("*") if p.is_file()]


def _until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


BREACHES = ["abort mid-dataset", "disconnect mid-dataset", "unknown context",
            "dataset without command", "release mid-dataset", "garbage command"]


@pytest.mark.parametrize("breach,also_query", [
    *((b, False) for b in BREACHES),
    # pynetdicom's own path, for what both must survive alike
    ("abort mid-dataset", True), ("disconnect mid-dataset", True)])
def test_peer_breaking_the_protocol(embedded: Backend, tmp_path: Path, breach: str,
                                    also_query: bool) -> None:
    f = write(make_instance(size=64), tmp_path / "a.dcm")
    data = dataset_bytes(f)
    with running_scp(embedded) as scp:
        peer = RawPeer(scp.port, also_query=also_query)
        try:
            if breach in ("abort mid-dataset", "disconnect mid-dataset", "release mid-dataset"):
                peer.pdv(1, 0x03, _store_rq("1.2.3.4"))
                peer.pdv(1, 0x00, data[:len(data) // 2])
                if breach == "abort mid-dataset":
                    peer.sock.sendall(struct.pack(">BxI2xBB", 0x07, 4, 0, 0))
                elif breach == "release mid-dataset":
                    peer.sock.sendall(struct.pack(">BxI4x", 0x05, 4))
                    assert peer.read_pdu()[0] == 0x07
            elif breach == "unknown context":
                peer.pdv(99, 0x03, _store_rq("1.2.3.4"))
                assert peer.read_pdu()[0] == 0x07  # A-ABORT
            elif breach == "dataset without command":
                peer.pdv(1, 0x02, data)
                assert peer.read_pdu()[0] == 0x07
            else:
                peer.pdv(1, 0x03, b"\x00\x00\x01\x00\xff\xff\xff\x7f")
                assert peer.read_pdu()[0] == 0x07
        finally:
            peer.hang_up()
        _until(lambda: not _left_in_incoming(embedded))  # pynetdicom: right after the close
        assert _left_in_incoming(embedded) == []
        assert index_count(embedded) == 0 and objects_on_disk(embedded) == []
        assert dc.store(scp.port, [f]) == [0]  # the service goes on
        assert index_count(embedded) == 1


def test_fragments_both_ways(embedded: Backend, tmp_path: Path) -> None:
    """A dataset in many small PDUs (VNA_DICOM_MAX_PDU=4096) is archived whole; responses
    are fragmented to a peer that takes 64-byte PDUs."""
    files = [write(make_instance(size=96, instance_number=i), tmp_path / f"{i}.dcm")
             for i in range(3)]
    with running_scp(embedded, VNA_DICOM_MAX_PDU="4096") as scp:
        assert dc.store(scp.port, files, max_pdu=64) == [0, 0, 0]
        pairs = set(dc.file_pairs(files).values())
        studies = [str(dc.read_uids(p).StudyInstanceUID) for p in files]
        final, received = dc.get(scp.port, "STUDY", {"StudyInstanceUID": studies}, pairs)
        assert final is not None and final.NumberOfCompletedSuboperations == 3
        for p in files:
            assert received.datasets[str(dc.read_uids(p).SOPInstanceUID)] == dataset_bytes(p)


def test_association_limit(embedded: Backend, tmp_path: Path) -> None:
    """Storage associations count against the AE's limit like pynetdicom's own."""
    f = write(make_instance(), tmp_path / "a.dcm")
    limit = 8
    with running_scp(embedded, VNA_DICOM_PROCESSES="1", VNA_DICOM_MAX_ASSOCIATIONS="8",
                     VNA_DICOM_MAX_ASSOCIATIONS_PER_AET="8") as scp:
        peers: list[RawPeer] = []
        try:
            with pytest.raises(AssertionError, match="not accepted"):
                for _ in range(limit + 1):
                    peers.append(RawPeer(scp.port))
            # (the start-up probe's connection may still count for pynetdicom)
            assert limit - 1 <= len(peers) <= limit
        finally:
            for p in peers:
                p.close()
        _until(lambda: False, 1.0)  # the closed ones end
        assert dc.store(scp.port, [f]) == [0]


def _response_status(peer: RawPeer) -> int:
    from io import BytesIO

    from pydicom.filereader import read_dataset

    pdu_type, body = peer.read_pdu()
    assert pdu_type == 0x04
    data = body[6:]  # one PDV: length, context, control, command set
    return int(read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True).Status)


def test_request_without_valid_uids_is_refused(embedded: Backend, tmp_path: Path) -> None:
    """A C-STORE-RQ whose Affected SOP Instance UID is not a UID: 0xC000, nothing kept."""
    f = write(make_instance(size=64), tmp_path / "a.dcm")
    with running_scp(embedded) as scp:
        peer = RawPeer(scp.port)
        try:
            command = _store_rq("1.2.3.4").replace(b"1.2.3.4\x00", b"1.2.\xff.4\x00")
            peer.pdv(1, 0x03, command)
            peer.pdv(1, 0x02, dataset_bytes(f))
            assert _response_status(peer) == 0xC000
        finally:
            peer.close()
        assert index_count(embedded) == 0 and _left_in_incoming(embedded) == []


def test_receive_file_that_cannot_be_written_is_out_of_resources(embedded: Backend,
                                                                 tmp_path: Path) -> None:
    """A receive file that cannot be made (here: a file where the incoming folder was;
    or no inode left): A700 for that C-STORE, and the association goes on. A folder that
    was just removed is made again."""
    import shutil

    f = write(make_instance(size=64), tmp_path / "a.dcm")
    with running_scp(embedded, VNA_DICOM_PROCESSES="1") as scp:
        peer = RawPeer(scp.port)
        try:
            [incoming] = (embedded.data_dir / "incoming").iterdir()
            shutil.rmtree(incoming)
            peer.pdv(1, 0x03, _store_rq(str(dc.read_uids(f).SOPInstanceUID)))
            peer.pdv(1, 0x02, dataset_bytes(f))
            assert _response_status(peer) == 0x0000  # made again
            shutil.rmtree(incoming)
            incoming.write_bytes(b"not a folder")
            peer.pdv(1, 0x03, _store_rq("1.2.3.4", message_id=2))
            peer.pdv(1, 0x02, dataset_bytes(f))
            assert _response_status(peer) == 0xA700
            incoming.unlink()
            peer.pdv(1, 0x03, _store_rq("1.2.3.4", message_id=3))  # still served
            peer.pdv(1, 0x02, dataset_bytes(f))
            assert _response_status(peer) == 0xA900  # the data set's UID is another
        finally:
            peer.close()
        assert index_count(embedded) == 1
        assert "could not write the received file" in scp.logtext()


def test_stale_receive_files_are_swept(tmp_path: Path) -> None:
    """The safety net under both paths: a receive file nobody wrote for 10 minutes goes."""
    import os

    from services.dicom_scp.server import STALE_INCOMING_SECONDS, sweep_incoming

    stale, busy = tmp_path / "in-1.dcm", tmp_path / "in-2.dcm"
    stale.write_bytes(b"half")
    busy.write_bytes(b"being received")
    old = time.time() - STALE_INCOMING_SECONDS - 1
    os.utime(stale, (old, old))
    assert sweep_incoming(tmp_path) == 1
    assert not stale.exists() and busy.exists()
