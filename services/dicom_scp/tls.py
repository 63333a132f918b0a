"""DICOM over TLS: the contexts vna serves and connects with, and who is on the other end.

The profile is DICOM PS3.15 B.9, the Non-downgrading BCP 195 TLS Secure Transport
Connection Profile (DCMTK's default, `+py`): TLS 1.2 or later, and on TLS 1.2 only the
ECDHE/DHE AES-GCM cipher suites of BCP 195 (RFC 9325) with forward secrecy; TLS 1.3
brings only AEAD suites anyway. With VNA_DICOM_TLS_CA a client must present a
certificate that CA issued (mutual TLS), and its subject is the association's TLS
identity (`tls_identity`), which the audit trail records.
"""

from __future__ import annotations

import ssl
from typing import Any

from vna.settings import DicomPeer, Settings

# BCP 195 / PS3.15 B.9 cipher suites for TLS 1.2, in OpenSSL's names.
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))

_RDN_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
              "domainComponent": "DC", "emailAddress": "emailAddress"}


class TLSNotConfigured(ValueError):
    """VNA_DICOM_TLS_PORT or a `/tls` peer without a certificate and key."""


def _profile(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _certificate(settings: Settings, ctx: ssl.SSLContext) -> None:
    if settings.dicom_tls_cert is None or settings.dicom_tls_key is None:
        raise TLSNotConfigured("DICOM TLS needs VNA_DICOM_TLS_CERT and VNA_DICOM_TLS_KEY")
    ctx.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)


def server_context(settings: Settings) -> ssl.SSLContext:
    """The context of the TLS port; with a CA, client certificates are required."""
    ctx = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _certificate(settings, ctx)
    if settings.dicom_tls_ca is not None:
        ctx.load_verify_locations(cafile=settings.dicom_tls_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(settings: Settings) -> ssl.SSLContext:
    """The context for associations vna opens to `/tls` peers: our certificate (for their
    mutual TLS) and theirs checked against VNA_DICOM_TLS_CA, else the system's CAs. Peers
    are known by AE title and address, so host names are not checked."""
    ctx = _profile(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if settings.dicom_tls_cert is not None and settings.dicom_tls_key is not None:
        ctx.load_cert_chain(settings.dicom_tls_cert, settings.dicom_tls_key)
    if settings.dicom_tls_ca is not None:
        ctx.load_verify_locations(cafile=settings.dicom_tls_ca)
    else:
        ctx.load_default_certs()
    return ctx


def peer_tls_args(settings: Settings, peer: DicomPeer,
                  ctx: ssl.SSLContext | None = None) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's `tls_args` for associating with `peer`: None for a plain peer."""
    if not peer.tls:
        return None
    return (ctx or client_context(settings), peer.host)


def subject(cert: dict[str, Any] | None) -> str | None:
    """A peer certificate's subject (`ssl.SSLSocket.getpeercert()`), as an RFC 4514
    string (most specific first), or None without a verified certificate."""
    if not cert or not cert.get("subject"):
        return None
    rdns = [f"{_RDN_NAMES.get(k, k)}={v}" for rdn in cert["subject"] for k, v in rdn]
    return ",".join(reversed(rdns))


def common_name(cert: dict[str, Any] | None) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def socket_identity(sock: Any) -> str | None:
    """The verified client certificate's subject on `sock`, or None (plain, or no CA)."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        return subject(getpeercert())
    except (ValueError, OSError):
        return None
