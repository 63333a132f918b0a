"""DICOM over TLS on the wire: DCMTK `storescu`/`findscu`/`echoscu` with `+tls` (3.6.7's
`getscu` has no TLS option: C-GET with pynetdicom) and pynetdicom
with an ssl context against `vna scp` on VNA_DICOM_TLS_PORT, mutual TLS (no certificate,
another CA's certificate, TLS 1.0/1.1: refused), the plain port off, an AE title bound to a
certificate subject, and C-MOVE to a peer marked `/tls`."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from services.dicom_scp.pynetdicom_compat import tls_identity
from tests import dicom_client as dc
from tests.conftest import (
    VNA,
    Backend,
    RunningSCP,
    free_port,
    stop_scp,
    vna_env,
    wait_port,
)
from tests.factory import dataset_bytes, make_instance, write
from tests.tls_pki import PKI, Identity, make_pki

pytestmark = pytest.mark.timeout(300)

STUDY1, STUDY2, STUDY5 = "1.2.826.0.1.3680043.10.1500.1", "1.2.826.0.1.3680043.10.1500.2", \
    "1.2.826.0.1.3680043.10.1500.5"
CLIENT_CN = "ct1.modality.test"
OTHER_CN = "mr1.modality.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), clients=(CLIENT_CN, OTHER_CN))


def tls_env(pki: PKI, tls_port: int, *, mutual: bool = True) -> dict[str, str]:
    env = {"VNA_DICOM_TLS_PORT": str(tls_port), "VNA_DICOM_TLS_CERT": str(pki.server.cert),
           "VNA_DICOM_TLS_KEY": str(pki.server.key)}
    if mutual:
        env["VNA_DICOM_TLS_CA"] = str(pki.ca)
    return env


@contextlib.contextmanager
def tls_scp(backend: Backend, pki: PKI, *, plain: bool = False, mutual: bool = True,
            **env: str) -> Iterator[tuple[RunningSCP, int]]:
    """`vna scp` with its TLS port (and the plain port only if `plain`): (scp, TLS port)."""
    import subprocess as sp

    port, tls_port = free_port(), free_port()
    full = {**backend.env, "VNA_DICOM_PORT": str(port) if plain else "0",
            "VNA_DICOM_HOST": "127.0.0.1", "VNA_DICOM_PROCESSES": "2",
            **tls_env(pki, tls_port, mutual=mutual), **env}
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    log = backend.data_dir.parent / f"scp-{tls_port}.log"
    proc = sp.Popen([*VNA, "scp"], env=vna_env(full), stdout=open(log, "wb"),
                    stderr=sp.STDOUT, cwd=backend.data_dir.parent, start_new_session=True)
    scp = RunningSCP(port, backend, proc, log)
    try:
        wait_port(tls_port, 60)
    except TimeoutError:
        proc.kill()
        raise AssertionError("vna scp did not start:\n" + scp.logtext()) from None
    time.sleep(0.3)
    try:
        yield scp, tls_port
    finally:
        stop_scp(scp)


def client_context(pki: PKI, identity: Identity | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False
    if identity is not None:
        ctx.load_cert_chain(identity.cert, identity.key)
    return ctx


def tls_associate(port: int, contexts: list[Any], ctx: ssl.SSLContext, *,
                  calling: str = "TESTSCU", handlers: list[Any] | None = None) -> Any:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, contexts=contexts, ae_title="VNA",
                        tls_args=(ctx, "localhost"), evt_handlers=handlers or [])


def tls_get(port: int, ctx: ssl.SSLContext, study: str, storage: set[tuple[str, str]]
            ) -> tuple[Dataset | None, dc.Received]:
    """C-GET of a study over TLS (the archive's C-STORE sub-operations come back on it)."""
    received = dc.Received()
    contexts = [_cx(dc.GET["STUDY"])] + [_cx(c, t) for c, t in sorted(storage)]
    ae = AE(ae_title="CT1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, contexts=contexts, ae_title="VNA",
                         tls_args=(ctx, "localhost"),
                         ext_neg=[build_role(c, scp_role=True) for c, _ in sorted(storage)],
                         evt_handlers=[(evt.EVT_C_STORE, received.handler)])
    assert assoc.is_established
    final = None
    try:
        for status, _ in assoc.send_c_get(dc.identifier("STUDY", {"StudyInstanceUID": study}),
                                          dc.GET["STUDY"]):
            if status and status.Status not in (0xFF00, 0xFF01):
                final = status
    finally:
        assoc.release()
    return final, received


def _cx(sop_class: Any, ts: str = "1.2.840.10008.1.2.1") -> Any:
    return dc._cx(str(sop_class), [ts])


def dcmtk_tls(identity: Identity | None, pki: PKI) -> list[str]:
    if identity is None:
        return ["+tla", "+cf", str(pki.ca)]
    return ["+tls", str(identity.key), str(identity.cert), "+cf", str(pki.ca)]


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def index_count(backend: Backend) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(backend.data_dir / "index.sqlite3")) as db:
        return int(db.execute("SELECT count(*) FROM instance").fetchone()[0])


def test_dcmtk_over_mutual_tls_with_the_plain_port_off(
        embedded: Backend, pki: PKI, dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    """storescu, findscu and getscu `+tls` with a client certificate: stored, found and
    retrieved byte for byte; nothing listens on a plain port."""
    files = [write(make_instance(patient_id="TLS1", study_uid=STUDY1, instance_number=i, size=64),
                   tmp_path / "in" / f"{i}.dcm") for i in range(3)]
    me = pki.clients[CLIENT_CN]
    with tls_scp(embedded, pki) as (scp, port):
        with socket.socket() as s:  # VNA_DICOM_PORT=0: no plain listener
            assert s.connect_ex(("127.0.0.1", scp.port)) != 0
        r = run(["storescu", "-aec", "VNA", "-aet", "CT1", *dcmtk_tls(me, pki), "+sd",
                 "127.0.0.1", str(port), str(tmp_path / "in")], dcmtk_env)
        assert r.returncode == 0, r.stderr
        assert index_count(embedded) == 3
        r = run(["findscu", "-S", "-aec", "VNA", "-aet", "CT1", *dcmtk_tls(me, pki),
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=TLS1",
                 "-k", "StudyInstanceUID", "127.0.0.1", str(port)], dcmtk_env)
        assert r.returncode == 0 and "Find Response: 1 (Pending)" in r.stderr, r.stderr
        r = run(["echoscu", "-aec", "VNA", "-aet", "CT1", *dcmtk_tls(me, pki),
                 "127.0.0.1", str(port)], dcmtk_env)
        assert r.returncode == 0, r.stderr
        # DCMTK 3.6.7's getscu and movescu have no TLS options: C-GET with pynetdicom
        study = str(dc.read_uids(files[0]).StudyInstanceUID)
        final, received = tls_get(port, client_context(pki, me), study,
                                  set(dc.file_pairs(files).values()))
        assert final is not None and final.NumberOfCompletedSuboperations == 3
        assert set(received.datasets.values()) == {dataset_bytes(f) for f in files}
        assert "Traceback" not in scp.logtext()


def test_pynetdicom_over_tls_every_path(embedded: Backend, pki: PKI, tmp_path: Path) -> None:
    """pynetdicom with an ssl context: C-ECHO and C-STORE (vna's storage loop), C-STORE
    together with C-FIND (pynetdicom's path, given the request back) and C-FIND."""
    files = [write(make_instance(patient_id="TLS2", study_uid=STUDY2, instance_number=i, size=64),
                   tmp_path / f"{i}.dcm") for i in range(4)]
    ctx = client_context(pki, pki.clients[CLIENT_CN])
    pairs = sorted(set(dc.file_pairs(files).values()))
    with tls_scp(embedded, pki) as (_scp, port):
        assoc = tls_associate(port, [_cx(Verification)] + [_cx(c, t) for c, t in pairs], ctx)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assert [int(assoc.send_c_store(f).Status) for f in files[:2]] == [0, 0]
        assoc.release()
        assoc = tls_associate(port, [_cx(StudyRootQueryRetrieveInformationModelFind)]
                              + [_cx(c, t) for c, t in pairs], ctx)
        assert assoc.is_established
        assert [int(assoc.send_c_store(f).Status) for f in files[2:]] == [0, 0]
        query = dc.identifier("STUDY", {"PatientID": "TLS2", "StudyInstanceUID": "",
                                        "NumberOfStudyRelatedInstances": ""})
        matches = [ds for status, ds in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind)
            if status and status.Status in (0xFF00, 0xFF01)]
        assoc.release()
        assert len(matches) == 1 and int(matches[0].NumberOfStudyRelatedInstances) == 4
        # every record of these accesses names the client's certificate, on both paths
        engine = sa.create_engine(f"sqlite:///{embedded.data_dir / 'index.sqlite3'}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(sa.text(
                    "SELECT method, tls_identity FROM audit_event WHERE protocol = 'dicom' "
                    "AND calling_aet = 'TESTSCU'")).all()
            if sum(1 for method, _ in rows if method == "A-ASSOCIATE") >= 2:
                break
            time.sleep(0.2)
        engine.dispose()
    methods = {method for method, _ in rows}
    assert {"C-STORE", "C-FIND", "A-ASSOCIATE"} <= methods, rows
    assert all(identity and f"CN={CLIENT_CN}" in identity for _, identity in rows), rows


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_mutual_tls_refuses_what_it_must(embedded: Backend, pki: PKI,
                                         dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    """No client certificate, one from another CA, TLS 1.0 or 1.1, plain DICOM on the TLS
    port: no association, nothing stored."""
    f = write(make_instance(patient_id="TLS3", size=64), tmp_path / "a.dcm")
    with tls_scp(embedded, pki) as (scp, port):
        for identity in (None, pki.rogue):
            r = run(["storescu", "-aec", "VNA", "-aet", "CT1", *dcmtk_tls(identity, pki),
                     "127.0.0.1", str(port), str(f)], dcmtk_env)
            assert r.returncode != 0
            assoc = tls_associate(port, [_cx(Verification)], client_context(pki, identity))
            assert not assoc.is_established
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            ctx = client_context(pki, pki.clients[CLIENT_CN])
            ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            ctx.maximum_version = version
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer the old versions
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    pytest.raises(ssl.SSLError):
                ctx.wrap_socket(raw, server_hostname="localhost")
        ctx = client_context(pki, pki.clients[CLIENT_CN])  # a suite outside BCP 195
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("AES128-SHA")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                pytest.raises(ssl.SSLError):
            ctx.wrap_socket(raw, server_hostname="localhost")
        r = run(["storescu", "-aec", "VNA", "-aet", "CT1", "127.0.0.1", str(port), str(f)],
                dcmtk_env)  # plain DICOM on the TLS port
        assert r.returncode != 0
        assert index_count(embedded) == 0
        log = scp.logtext()
        assert "unsupported protocol" in log and "no shared cipher" in log
        assert "Traceback" not in log


def test_tls_without_client_certificates(embedded: Backend, pki: PKI,
                                         dcmtk_env: dict[str, str], tmp_path: Path) -> None:
    """Without VNA_DICOM_TLS_CA, TLS encrypts but asks for no client certificate (DCMTK
    `+tla`), next to the plain port."""
    f = write(make_instance(patient_id="TLS4", size=64), tmp_path / "a.dcm")
    g = write(make_instance(patient_id="TLS4", size=64, instance_number=2), tmp_path / "b.dcm")
    with tls_scp(embedded, pki, plain=True, mutual=False) as (scp, port):
        r = run(["storescu", "-aec", "VNA", "-aet", "CT1", *dcmtk_tls(None, pki),
                 "127.0.0.1", str(port), str(f)], dcmtk_env)
        assert r.returncode == 0, r.stderr
        assert dc.store(scp.port, [g]) == [0]
        assert index_count(embedded) == 2


def _associate_rj(port: int, ctx: ssl.SSLContext, calling: str) -> tuple[int, int, int] | None:
    """(result, source, reason) of an A-ASSOCIATE-RJ to a C-ECHO request, None if
    accepted."""
    assoc = tls_associate(port, [_cx(Verification)], ctx, calling=calling)
    if assoc.is_established:
        assoc.release()
        return None
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def test_calling_aet_bound_to_certificate_subject(embedded: Backend, pki: PKI) -> None:
    """VNA_DICOM_TLS_AET_SUBJECTS: CT1 only with the certificate of CN ct1...; an AE title
    not listed takes any certificate of the CA."""
    ct1 = client_context(pki, pki.clients[CLIENT_CN])
    mr1 = client_context(pki, pki.clients[OTHER_CN])
    with tls_scp(embedded, pki, plain=True,
                 VNA_DICOM_TLS_AET_SUBJECTS=f"CT1={CLIENT_CN}") as (scp, port):
        assert _associate_rj(port, ct1, "CT1") is None
        assert _associate_rj(port, mr1, "CT1") == (1, 1, 3)
        assert _associate_rj(port, mr1, "MR1") is None
        plain = dc.echo(scp.port, calling="CT1")  # a bound AE title never over plain TCP
        assert plain.is_rejected
        assert "bound to another certificate subject" in scp.logtext()


def test_c_move_to_a_tls_peer(embedded: Backend, pki: PKI, tmp_path: Path) -> None:
    """A C-MOVE destination marked `/tls` in VNA_DICOM_PEERS is reached over TLS, with the
    archive's certificate (the peer requires one)."""
    files = [write(make_instance(patient_id="TLS5", study_uid=STUDY5, instance_number=i, size=64),
                   tmp_path / f"{i}.dcm") for i in range(3)]
    peer_port = free_port()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.clients[OTHER_CN].cert, pki.clients[OTHER_CN].key)
    server_ctx.load_verify_locations(cafile=str(pki.ca))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    received = dc.Received()
    seen_identities: list[str | None] = []

    def on_store(event: Any) -> int:
        seen_identities.append(tls_identity(event.assoc))
        return received.handler(event)

    peer_ae = AE(ae_title="TLSPEER")
    from pydicom.uid import AllTransferSyntaxes

    for cx in AllStoragePresentationContexts:
        peer_ae.add_supported_context(cx.abstract_syntax, [str(t) for t in AllTransferSyntaxes])
    server = peer_ae.start_server(("127.0.0.1", peer_port), block=False,
                                  ssl_context=server_ctx,
                                  evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        with tls_scp(embedded, pki, plain=True,
                     VNA_DICOM_PEERS=f"TLSPEER@127.0.0.1:{peer_port}/tls") as (scp, port):
            assert dc.store(scp.port, files) == [0, 0, 0]
            study = str(dc.read_uids(files[0]).StudyInstanceUID)
            ctx = client_context(pki, pki.clients[CLIENT_CN])
            assoc = tls_associate(port, [_cx(dc.MOVE["STUDY"])], ctx)
            assert assoc.is_established
            final: Dataset | None = None
            for status, _ in assoc.send_c_move(
                    dc.identifier("STUDY", {"StudyInstanceUID": study}), "TLSPEER",
                    dc.MOVE["STUDY"]):
                if status and status.Status not in (0xFF00, 0xFF01):
                    final = status
            assoc.release()
            assert final is not None and final.Status == 0
            assert final.NumberOfCompletedSuboperations == 3
    finally:
        server.shutdown()
    assert {dataset_bytes(f) for f in files} == set(received.datasets.values())
    # the archive presented its certificate; the audit trail's accessor names it
    assert seen_identities == ["CN=localhost,O=vna tests"] * 3


def test_commitment_report_to_a_tls_peer(embedded: Backend, pki: PKI, tmp_path: Path) -> None:
    """A Storage Commitment requester marked `/tls` in VNA_DICOM_PEERS gets its
    N-EVENT-REPORT over TLS, the worker presenting the archive's certificate."""
    from pynetdicom.sop_class import StorageCommitmentPushModel

    from tests.test_commitment import running_worker
    from vna.commitment import PUSH_MODEL_INSTANCE

    files = [write(make_instance(patient_id="TLS6", instance_number=i, size=64),
                   tmp_path / f"{i}.dcm") for i in range(2)]
    peer_port = free_port()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.clients[OTHER_CN].cert, pki.clients[OTHER_CN].key)
    server_ctx.load_verify_locations(cafile=str(pki.ca))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    reports: list[tuple[int, Dataset, str | None]] = []

    def on_report(event: Any) -> tuple[int, None]:
        reports.append((event.event_type, event.event_information, tls_identity(event.assoc)))
        return 0x0000, None

    modality = AE(ae_title="TLSMOD")
    modality.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    server = modality.start_server(("127.0.0.1", peer_port), block=False,
                                   ssl_context=server_ctx,
                                   evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
    env = {"VNA_DICOM_PEERS": f"TLSMOD@127.0.0.1:{peer_port}/tls",
           "VNA_COMMITMENT_RETRY_SECONDS": "1"}
    try:
        with tls_scp(embedded, pki, plain=True, **env) as (scp, port), \
                running_worker(embedded, {**tls_env(pki, port), **env}):
            assert dc.store(scp.port, files) == [0, 0]
            request = Dataset()
            request.TransactionUID = "2.25.6061"
            refs = []
            for f in files:
                uids = dc.read_uids(f)
                ref = Dataset()
                ref.ReferencedSOPClassUID = uids.SOPClassUID
                ref.ReferencedSOPInstanceUID = uids.SOPInstanceUID
                refs.append(ref)
            request.ReferencedSOPSequence = refs
            assoc = tls_associate(port, [_cx(StorageCommitmentPushModel)],
                                  client_context(pki, pki.clients[OTHER_CN]), calling="TLSMOD")
            assert assoc.is_established
            status, _ = assoc.send_n_action(request, 1, StorageCommitmentPushModel,
                                            PUSH_MODEL_INSTANCE)
            assoc.release()
            assert status.Status == 0
            deadline = time.monotonic() + 60
            while not reports and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        server.shutdown()
    assert len(reports) == 1
    event_type, info, identity = reports[0]
    assert event_type == 1 and info.TransactionUID == "2.25.6061"
    assert identity == "CN=localhost,O=vna tests"  # the archive's own certificate


def test_peers_marker_parsed() -> None:
    from vna.settings import parse_peers

    peers = parse_peers("A@h1:104, B@h2:2762/tls")
    assert (peers["A"].tls, peers["B"].tls, peers["B"].port) == (False, True, 2762)
    with pytest.raises(ValueError, match="AET@host:port/tls"):
        parse_peers("B@h2/tls")


def test_aet_subjects_parsed() -> None:
    from vna.settings import Settings, parse_aet_subjects

    assert parse_aet_subjects(" CT1=ct1.example , MR1=mr1.example") == {
        "CT1": "ct1.example", "MR1": "mr1.example"}
    with pytest.raises(ValueError, match="AET=commonName"):
        Settings(dicom_tls_aet_subjects="CT1")


def test_tls_port_without_certificate_does_not_start(embedded: Backend) -> None:
    port = free_port()
    env = {**embedded.env, "VNA_DICOM_PORT": "0", "VNA_DICOM_TLS_PORT": str(port),
           "VNA_DICOM_HOST": "127.0.0.1"}
    embedded.data_dir.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([*VNA, "scp"], env=vna_env(env), capture_output=True, text=True,
                       timeout=60, cwd=embedded.data_dir.parent)
    assert r.returncode == 1
    assert "VNA_DICOM_TLS_CERT" in r.stdout + r.stderr


def test_vna_up_with_the_tls_port_only(embedded: Backend, pki: PKI, tmp_path: Path) -> None:
    """`vna up` with VNA_DICOM_PORT=0: it waits for the TLS port, says so, and C-ECHO over
    TLS works."""
    import signal

    tls_port, hport = free_port(), free_port()
    env = vna_env({**embedded.env, "VNA_DICOM_PORT": "0", "VNA_HTTP_PORT": str(hport),
                   "VNA_DICOM_HOST": "127.0.0.1", "VNA_DICOM_PROCESSES": "1",
                   **tls_env(pki, tls_port)})
    embedded.data_dir.mkdir(parents=True)
    log = tmp_path / "up.log"
    proc = subprocess.Popen([*VNA, "up"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert f"VNA@127.0.0.1:{tls_port} (TLS)" in text and "not answering" not in text, text
        assoc = tls_associate(tls_port, [_cx(Verification)],
                              client_context(pki, pki.clients[CLIENT_CN]))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
