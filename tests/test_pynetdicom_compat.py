"""The seam to pynetdicom (services/dicom_scp/pynetdicom_compat.py): which internals vna
patches, that `install` puts every patch in place, and that it refuses, at start and with a
message naming the patch point and the version, a pynetdicom whose internals differ.

`install` changes the process it runs in, so it runs in a subprocess here."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.dicom_scp import pynetdicom_compat as compat

# The patch points, as the module's docstring documents them.
DOCUMENTED_PATCHES = {
    "pynetdicom._config.STORE_RECV_CHUNKED_DATASET",
    "pynetdicom._config.STORE_SEND_CHUNKED_DATASET",
    "pynetdicom._config.LOG_HANDLER_LEVEL",
    "pynetdicom._config.LOG_REQUEST_IDENTIFIERS",
    "pynetdicom._config.LOG_RESPONSE_IDENTIFIERS",
    "pynetdicom.dimse_messages.NamedTemporaryFile",
    "pynetdicom.dimse_messages.create_file_meta",
    "pynetdicom.dimse_messages.write_file_meta_info",
    "pynetdicom.dimse._RSP_TO_MESSAGE[C_STORE]",
    "pynetdicom.dimse._RSP_TO_MESSAGE[C_FIND]",
    "pynetdicom.association.time",
    "pynetdicom.dul.time",
    "pynetdicom.dul.DULServiceProvider.run_reactor",
    "pynetdicom.dul.DULServiceProvider.send_pdu",
    "pynetdicom.association.Association._serve_request",
    "pynetdicom.association.Association.send_c_store",
    "pynetdicom.transport.AssociationSocket._create_socket",
    "pynetdicom.transport.AssociationSocket.ready",
}
DOCUMENTED_PRIVATE_READS = {
    "pynetdicom.dimse_messages.DIMSEMessage._data_set_file",
    "pynetdicom.ae.ApplicationEntity._servers",
    "pynetdicom.transport.RequestHandler._create_association",
}
REQUESTOR_PATCHES = {
    "pynetdicom.association.Association._serve_request",
    "pynetdicom.transport.AssociationSocket._create_socket",
}


def test_the_patch_points_are_the_documented_ones() -> None:
    assert {p.point for p in compat.PATCHES} == DOCUMENTED_PATCHES
    assert set(compat.PRIVATE_READS) == DOCUMENTED_PRIVATE_READS
    assert {p.point for p in compat.PATCHES if p.requestor} == REQUESTOR_PATCHES
    doc = compat.__doc__ or ""
    for point in DOCUMENTED_PATCHES | DOCUMENTED_PRIVATE_READS:
        assert f"`{point}`" in doc, point


def test_this_pynetdicom_is_one_the_patches_fit() -> None:
    """Every check passes on the installed pynetdicom (looked at, nothing patched)."""
    assert [(p.point, p.problem()) for p in compat.PATCHES if p.problem()] == []
    assert [point for point, (_, check) in compat.PRIVATE_READS.items() if check()] == []


def _run(tmp_path: Path, before: str = "") -> tuple[int, str, str]:
    """Run `before`, then `install` in a fresh interpreter (a script file, so that what
    `before` defines has source for the checks to read)."""
    script = tmp_path / "install_check.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, tempfile, time
        from pathlib import Path
        import pynetdicom
        from pynetdicom import association, dimse, dimse_messages, dul, transport
        from services.dicom_scp import pynetdicom_compat as compat
        {textwrap.indent(textwrap.dedent(before), " " * 8).strip()}
        try:
            compat.install(Path(sys.argv[1]))
        except RuntimeError as exc:
            print(json.dumps({{"error": str(exc),
                              "untouched": dimse_messages.NamedTemporaryFile
                              is tempfile.NamedTemporaryFile}}))
            sys.exit(3)
        compat.install(Path(sys.argv[1]))  # a second call changes nothing
        print(json.dumps({{
            "in_place": {{p.point: p.is_in_place() for p in compat.PATCHES}},
            "receive_dir": compat.ReceiveFile.directory,
            "tempdir": tempfile.tempdir,
        }}))
    """))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "rx")],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    return proc.returncode, proc.stdout, proc.stderr


def test_install_puts_every_patch_in_place(tmp_path: Path) -> None:
    code, out, err = _run(tmp_path)
    assert code == 0, err
    result = json.loads(out)
    assert result["in_place"] == {point: True for point in DOCUMENTED_PATCHES}
    assert result["receive_dir"] == str(tmp_path / "rx")
    assert result["tempdir"] is None  # the receive folder is passed, not a global


@pytest.mark.parametrize("before,expected", [
    ("del dul.DULServiceProvider.send_pdu",
     "pynetdicom.dul.DULServiceProvider.send_pdu does not exist"),
    ("del dimse._RSP_TO_MESSAGE[dimse.C_FIND]",
     "pynetdicom.dimse._RSP_TO_MESSAGE[C_FIND] has no entry for C_FIND"),
    ("""
     def create_file_meta(sop_class_uid, transfer_syntax):
         pass
     dimse_messages.create_file_meta = create_file_meta
     """, "pynetdicom.dimse_messages.create_file_meta takes (sop_class_uid, transfer_syntax)"),
    ("dul.time = object()", "pynetdicom.dul.time is <object"),
    ("""
     def _run_reactor(self):
         while not self._kill:
             time.sleep(0.0005)
     association.Association._run_reactor = _run_reactor
     """, "pynetdicom.association.time relies on Association._run_reactor sleeping "
          "time.sleep(0.001); it sleeps ['0.0005']"),
    ("""
     class Message(dimse_messages.DIMSEMessage):
         def __init__(self):
             pass
     dimse_messages.DIMSEMessage.__init__ = Message.__init__
     """, "relies on Message.__init__ containing 'self._data_set_file'"),
], ids=["missing", "dict-entry", "signature", "not-time", "reactor-sleep", "private-read"])
def test_install_refuses_internals_it_does_not_know(tmp_path: Path, before: str,
                                                    expected: str) -> None:
    code, out, err = _run(tmp_path, before)
    assert code == 3, (out, err)
    result = json.loads(out)
    assert expected in result["error"]
    assert "pynetdicom 3.0." in result["error"]  # the version found
    assert "pynetdicom_compat.py" in result["error"]
    assert result["untouched"]  # nothing is patched when anything is wrong


def test_install_refuses_another_pynetdicom_version(tmp_path: Path) -> None:
    code, out, err = _run(tmp_path, 'pynetdicom.__version__ = "3.1.0"')
    assert code == 3, (out, err)
    error = json.loads(out)["error"]
    assert "pynetdicom 3.1.0 is installed" in error and "3.0.x" in error


def test_associations_share_the_servers_contexts() -> None:
    """With `share_contexts`, pynetdicom's per-association deep copy of the server's 177 x 37
    contexts (~17 ms and ~7,000 objects of garbage per association) is the list itself,
    and negotiation still works."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    seen: list[bool] = []
    ae = AE(ae_title="SHARED")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
        (evt.EVT_ACCEPTED,
         lambda event: seen.append(event.assoc.acceptor.supported_contexts is server.contexts))])
    try:
        compat.share_contexts(server)
        client = AE(ae_title="CLIENT")
        client.add_requested_context(Verification)
        assoc = client.associate("127.0.0.1", server.server_address[1], ae_title="SHARED")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    finally:
        server.shutdown()
    assert seen == [True]
