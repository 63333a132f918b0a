"""A pynetdicom client for the tests: store files as they are, find, get, and a move peer."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from services.dicom_scp.pynetdicom_compat import install_requestor

# Send files as they are and receive straight to files: the byte-for-byte tests need both.
_config.STORE_SEND_CHUNKED_DATASET = True
_config.STORE_RECV_CHUNKED_DATASET = True
install_requestor()  # TCP_NODELAY, and pynetdicom's requestor race with a fast SCP (see there)

FIND = {"PATIENT": PatientRootQueryRetrieveInformationModelFind,
        "STUDY": StudyRootQueryRetrieveInformationModelFind}
GET = {"PATIENT": PatientRootQueryRetrieveInformationModelGet,
       "STUDY": StudyRootQueryRetrieveInformationModelGet}
MOVE = {"PATIENT": PatientRootQueryRetrieveInformationModelMove,
        "STUDY": StudyRootQueryRetrieveInformationModelMove}


def identifier(level: str, keys: dict[str, Any]) -> Dataset:
    """A query/retrieve identifier at `level` with these keys."""
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    return ident


def file_pairs(paths: Iterable[Path]) -> dict[Path, tuple[str, str]]:
    out = {}
    for p in paths:
        meta, _ = split_dataset(p)
        out[p] = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
    return out


def _cx(sop_class: str, ts: Sequence[str]) -> PresentationContext:
    cx = PresentationContext()
    cx.abstract_syntax = sop_class
    cx.transfer_syntax = list(ts)
    return cx


def associate(port: int, contexts: list[PresentationContext], *, calling: str = "TESTSCU",
              called: str = "VNA", roles: list[Any] | None = None,
              handlers: list[Any] | None = None, max_pdu: int | None = None) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    if max_pdu is not None:
        ae.maximum_pdu_size = max_pdu
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title=called,
                         ext_neg=roles or [], evt_handlers=handlers or [])
    return assoc


def echo(port: int, calling: str = "TESTSCU") -> Association:
    assoc = associate(port, [_cx(Verification, ["1.2.840.10008.1.2"])], calling=calling)
    return assoc


def store(port: int, paths: Sequence[Path], *, calling: str = "TESTSCU",
          also_query: bool = False, max_pdu: int | None = None) -> list[int]:
    """C-STORE each file as stored on disk; the status of each.

    A storage-only association is served by the SCP's storage fast path; `also_query`
    proposes a C-FIND context too, so that pynetdicom serves it.
    """
    return [int(rsp.Status) if "Status" in rsp else -1
            for rsp in store_responses(port, paths, calling=calling, also_query=also_query,
                                       max_pdu=max_pdu)]


def store_responses(port: int, paths: Sequence[Path], *, calling: str = "TESTSCU",
                    also_query: bool = False, max_pdu: int | None = None) -> list[Dataset]:
    """C-STORE each file as stored on disk; the C-STORE-RSP of each (Status, ErrorComment)."""
    pairs = file_pairs(paths)
    contexts = [_cx(sc, [ts]) for sc, ts in sorted(set(pairs.values()))]
    if also_query:
        contexts.append(_cx(FIND["STUDY"], ["1.2.840.10008.1.2.1"]))
    assert len(contexts) <= 128
    assoc = associate(port, contexts, calling=calling, max_pdu=max_pdu)
    assert assoc.is_established, "association refused"
    try:
        return [assoc.send_c_store(p) for p in paths]
    finally:
        assoc.release()


def find(port: int, level: str, keys: dict[str, Any], *, model: str = "STUDY") -> \
        tuple[int, list[Dataset]]:
    ident = identifier(level, keys)
    assoc = associate(port, [_cx(FIND[model], ["1.2.840.10008.1.2.1"])])
    assert assoc.is_established
    results, final = [], -1
    try:
        for status, ds in assoc.send_c_find(ident, FIND[model]):
            if status and status.Status in (0xFF00, 0xFF01):
                results.append(ds)
            elif status:
                final = int(status.Status)
    finally:
        assoc.release()
    return final, results


@dataclass
class Received:
    """Datasets received by a Storage SCP (C-GET requester or C-MOVE destination)."""

    datasets: dict[str, bytes] = field(default_factory=dict)
    syntaxes: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, event: Any) -> int:
        path = Path(event.dataset_path)
        meta, offset = split_dataset(path)
        with self.lock:
            uid = str(event.request.AffectedSOPInstanceUID)
            self.datasets[uid] = path.read_bytes()[offset:]
            self.syntaxes[uid] = str(meta.TransferSyntaxUID)
        return 0x0000


def get(port: int, level: str, keys: dict[str, Any], storage: set[tuple[str, str]], *,
        model: str = "STUDY") -> tuple[Dataset | None, Received]:
    """C-GET; `storage` is the (SOP class, transfer syntax) pairs we accept as Storage SCP."""
    ident = identifier(level, keys)
    received = Received()
    contexts = [_cx(GET[model], ["1.2.840.10008.1.2.1"])]
    contexts += [_cx(sc, [ts]) for sc, ts in sorted(storage)]
    roles = [build_role(sc, scp_role=True) for sc in sorted({sc for sc, _ in storage})]
    assert len(contexts) <= 128
    assoc = associate(port, contexts, roles=roles,
                      handlers=[(evt.EVT_C_STORE, received.handler)])
    assert assoc.is_established
    final = None
    try:
        for status, _ in assoc.send_c_get(ident, GET[model]):
            if status and status.Status not in (0xFF00, 0xFF01):
                final = status
    finally:
        assoc.release()
    return final, received


def move(port: int, level: str, keys: dict[str, Any], destination: str, *,
         model: str = "STUDY") -> Dataset | None:
    ident = identifier(level, keys)
    assoc = associate(port, [_cx(MOVE[model], ["1.2.840.10008.1.2.1"])])
    assert assoc.is_established
    final = None
    try:
        for status, _ in assoc.send_c_move(ident, destination, MOVE[model]):
            if status and status.Status not in (0xFF00, 0xFF01):
                final = status
    finally:
        assoc.release()
    return final


class StoragePeer:
    """A pynetdicom Storage SCP to act as C-MOVE destination."""

    def __init__(self, port: int, ae_title: str = "PEER") -> None:
        from pydicom.uid import AllTransferSyntaxes
        from pynetdicom import AllStoragePresentationContexts

        self.received = Received()
        ae = AE(ae_title=ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [str(t) for t in AllTransferSyntaxes])
        self.server = ae.start_server(("127.0.0.1", port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.received.handler)])

    def close(self) -> None:
        self.server.shutdown()


def read_uids(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True)
