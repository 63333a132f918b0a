"""A throwaway PKI for DICOM TLS tests and benchmarks, made with the `openssl` CLI: a CA,
a server certificate for 127.0.0.1/localhost, client certificates, and a second CA that
the archive does not trust."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Identity:
    cert: Path
    key: Path


@dataclass
class PKI:
    ca: Path
    server: Identity
    clients: dict[str, Identity]  # by common name
    rogue: Identity  # a client certificate from the untrusted CA


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "3",
             "-subj", f"/O=vna tests/CN={name}", cwd=d)
    return cert, key


def _issue(d: Path, ca: tuple[Path, Path], cn: str, name: str, san: str) -> Identity:
    key, csr, cert, ext = (d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem",
                           d / f"{name}.ext")
    ext.write_text(f"subjectAltName={san}\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/O=vna tests/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-out", str(cert), "-days", "3", "-extfile", str(ext), cwd=d)
    return Identity(cert, key)


def make_pki(d: Path, clients: tuple[str, ...] = ("modality.test",)) -> PKI:
    d.mkdir(parents=True, exist_ok=True)
    ca = _ca(d, "ca")
    rogue_ca = _ca(d, "rogue-ca")
    server = _issue(d, ca, "localhost", "server", "DNS:localhost,IP:127.0.0.1")
    issued = {cn: _issue(d, ca, cn, f"client-{i}", f"DNS:{cn}") for i, cn in enumerate(clients)}
    rogue = _issue(d, rogue_ca, next(iter(clients)), "rogue", "DNS:rogue.test")
    return PKI(ca[0], server, issued, rogue)
