"""The one settings object: every VNA_* variable of the SPEC, from the environment or `.env`."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vna.atna import SyslogTarget
from vna.dicom.identity import ConflictPolicy


class DicomPeer:
    """A remote AE we may connect to (a C-MOVE destination); `tls`: over DICOM TLS."""

    __slots__ = ("ae_title", "host", "port", "tls")

    def __init__(self, ae_title: str, host: str, port: int, tls: bool = False) -> None:
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.tls = tls

    def __repr__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}{'/tls' if self.tls else ''}"


def parse_peers(value: str) -> dict[str, DicomPeer]:
    """Parse `AET@host:port,AET2@host2:port2/tls` into a map keyed by AE title; `/tls`
    marks a peer reached over DICOM TLS."""
    peers: dict[str, DicomPeer] = {}
    for item in (p.strip() for p in value.split(",")):
        if not item:
            continue
        tls = item.lower().endswith("/tls")
        if tls:
            item = item[:-4].rstrip()
        aet, sep, address = item.partition("@")
        host, colon, port = address.rpartition(":")
        if not sep or not colon or not aet or not host or not port.isdigit():
            raise ValueError(f"VNA_DICOM_PEERS entry {item!r} is not of the form "
                             "AET@host:port or AET@host:port/tls")
        peers[aet.strip()] = DicomPeer(aet.strip(), host.strip(), int(port), tls)
    return peers


def parse_aet_subjects(value: str) -> dict[str, str]:
    """Parse `AET=commonName,AET2=commonName2`: the certificate subject (CN) each calling
    AE title must present over TLS."""
    bound: dict[str, str] = {}
    for item in (p.strip() for p in value.split(",")):
        if not item:
            continue
        aet, sep, cn = item.partition("=")
        if not sep or not aet.strip() or not cn.strip():
            raise ValueError(f"VNA_DICOM_TLS_AET_SUBJECTS entry {item!r} is not of the form "
                             "AET=commonName")
        bound[aet.strip()] = cn.strip()
    return bound


# What a region's departments and patients upload: reports, recordings, video, photos.
DEFAULT_DOCUMENT_MIME_TYPES = (
    "application/pdf",
    "audio/wav", "audio/mpeg", "audio/mp4",
    "video/mp4", "video/quicktime", "video/webm",
    "image/jpeg", "image/png", "image/heic", "image/tiff",
)
# 2.25.<UUID as integer> (ISO/IEC 9834-8), uuid5 of a fixed name: a stable default.
DEFAULT_REPOSITORY_UNIQUE_ID = "2.25.295450431852382569509119793770638522218"


class Settings(BaseSettings):
    """Configuration of every vna process (see the README's configuration table)."""

    model_config = SettingsConfigDict(env_prefix="VNA_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./vna-data")
    database_url: str | None = None
    storage: Literal["file", "s3"] = "file"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "vna"
    s3_secure: bool = False
    broker_url: str | None = None
    retention_rules: Path | None = Field(
        default=None, description="retention rules (JSON); default VNA_DATA_DIR/retention.json")
    timezone: str = Field(default="Europe/Stockholm",
                          description="the region's time zone: statistics days and hours")
    outbox_poll_seconds: float = Field(default=5.0, gt=0,
                                       description="how often workers look at the outbox")

    dicom_aet: str = "VNA"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    dicom_peers: str = ""
    dicom_allowed_aets: str = ""
    dicom_processes: int = Field(default=0, ge=0, description="SCP processes; 0 = 2 x CPUs")
    dicom_metrics_port: int = Field(default=0, ge=0, le=65535, description=(
        "where `vna scp` serves its Prometheus /metrics (on VNA_DICOM_HOST); 0 = not served"))
    dicom_max_pdu: int = Field(default=1 << 20, ge=0, description="max PDU we receive, bytes")
    # -- DICOM transport security and limits (issue 15) --
    dicom_tls_port: int = Field(default=0, ge=0, le=65535, description=(
        "DICOM over TLS (2762 by convention), next to or instead of VNA_DICOM_PORT; 0 = off"))
    dicom_tls_cert: Path | None = Field(default=None, description=(
        "our TLS certificate (PEM, with its chain), for the TLS port and TLS peers"))
    dicom_tls_key: Path | None = Field(default=None, description="its private key (PEM)")
    dicom_tls_ca: Path | None = Field(default=None, description=(
        "CA certificates (PEM): when set, TLS clients must present a certificate it "
        "issued (mutual TLS), and TLS peers' certificates are checked against it"))
    dicom_tls_aet_subjects: str = Field(default="", description=(
        "calling AE titles bound to certificate subjects, `AET=commonName,...`: a listed "
        "AE title is accepted over TLS only with a client certificate of that CN"))
    dicom_max_associations: int = Field(default=64, ge=1, description=(
        "concurrent associations each SCP process accepts (VNA_DICOM_PROCESSES of them); "
        "beyond, A-ASSOCIATE-RJ transient, local limit exceeded"))
    dicom_max_associations_per_aet: int = Field(default=16, ge=1, description=(
        "concurrent associations one calling AE title may hold in each SCP process"))
    dicom_artim_timeout: float = Field(default=10.0, gt=0, description=(
        "seconds a new connection has to finish its TLS handshake and send its "
        "A-ASSOCIATE-RQ (ARTIM) before it is closed"))
    dicom_idle_timeout: float = Field(default=120.0, gt=0, description=(
        "seconds an association may stay silent (no PDU) before it is aborted"))
    dicom_dimse_timeout: float = Field(default=120.0, gt=0, description=(
        "seconds we wait for a DIMSE message from a peer (a C-STORE sub-operation's "
        "response, a C-CANCEL) before giving up"))
    patient_conflict: ConflictPolicy = Field(default=ConflictPolicy.REJECT, description=(
        "an instance of a known study or SOP Instance under another patient: reject, or "
        "accept (filed under the patient it names, never another)"))

    hl7_host: str = Field(default="0.0.0.0", description="where the HL7 v2 listener listens")
    hl7_port: int = Field(default=2575, ge=0, le=65535, description=(
        "HL7 v2 over MLLP (orders, patient updates, reports); 0 turns it off"))
    report_missing_days: int = Field(default=7, ge=1, description=(
        "an exam without a final report this many days after it ended is a quality finding"))
    commitment_retry_seconds: float = Field(default=5.0, gt=0, description=(
        "first wait before a Storage Commitment N-EVENT-REPORT is sent again to a requester "
        "that could not be reached; doubled each time, at most an hour"))

    http_host: str = "127.0.0.1"
    http_port: int = 8000
    cors_origins: str = Field(default="", description=(
        "origins allowed to call the HTTP service from a browser, comma-separated "
        "(e.g. an OHIF served elsewhere); empty: none"))
    viewer_dir: Path | None = Field(default=None, description=(
        "a built OHIF viewer (the dist folder of @ohif/app) to serve at /viewer"))

    # -- HTTP security and limits (issue 15): docs/security.md, docs/deployment.md --------
    http_tls_cert: Path | None = Field(default=None, description=(
        "PEM certificate chain: `vna api` serves HTTPS itself (TLS 1.2+); empty: plain HTTP "
        "(e.g. behind a reverse proxy that terminates TLS)"))
    http_tls_key: Path | None = Field(default=None, description=(
        "PEM private key of VNA_HTTP_TLS_CERT"))
    http_forwarded_allow_ips: str = Field(default="127.0.0.1", description=(
        "addresses of reverse proxies whose X-Forwarded-For/-Proto are believed "
        "(uvicorn's forwarded_allow_ips; `*` for any): the client address of rate limits "
        "and the audit trail"))
    http_auth_failures: int = Field(default=20, ge=1, description=(
        "failed bearer attempts from one client address within VNA_HTTP_AUTH_WINDOW_SECONDS "
        "after which its requests get 429 until the window has passed"))
    http_auth_window_seconds: int = Field(default=60, ge=1, description=(
        "the window of VNA_HTTP_AUTH_FAILURES"))
    http_max_uploads: int = Field(default=16, ge=1, description=(
        "concurrent uploads (documents and STOW-RS) per `vna api` process; more get 503 "
        "with Retry-After"))
    http_max_json_bytes: int = Field(default=1 << 20, ge=1024, description=(
        "largest JSON request body, bytes (413 above)"))
    http_max_header_bytes: int = Field(default=64 << 10, ge=4096, description=(
        "largest request head (request line and headers), bytes: a longer one is refused "
        "(431; 400 from uvicorn's h11 parser when it arrives in pieces)"))
    http_max_headers: int = Field(default=100, ge=10, description=(
        "most request header fields (431 above)"))
    http_keepalive_seconds: int = Field(default=5, ge=1, description=(
        "an idle keep-alive connection is closed after this"))
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, description=(
        "a request head not complete this long after its connection opened, or after the "
        "previous response, is dropped (slow-loris)"))
    http_body_timeout_seconds: float = Field(default=60.0, gt=0, description=(
        "an upload (document, STOW-RS) whose body sends nothing for this long is ended "
        "with 408: a slow body cannot hold an upload slot"))
    token_last_used_seconds: int = Field(default=60, ge=1, description=(
        "a token's lastUsedAt is written at most this often (not a write per request)"))

    fsync: bool = True
    admin_token: str | None = None
    # -- the audit trail's export to an IHE ATNA audit record repository (vna/atna.py) --
    audit_syslog: str = Field(default="", description=(
        "where audit messages (DICOM PS3.15 A.5) go: tcp+tls://host:6514 (RFC 5425), "
        "udp://host:514 (RFC 5426) or tcp://host:port; empty: not exported"))
    audit_syslog_ca: str | None = Field(default=None, description=(
        "CA file that verifies the collector's certificate (tcp+tls; default: the system's)"))
    audit_syslog_cert: str | None = Field(default=None, description=(
        "our client certificate for the collector (tcp+tls, IHE ATNA node authentication)"))
    audit_syslog_key: str | None = Field(default=None, description=(
        "the private key of VNA_AUDIT_SYSLOG_CERT"))
    audit_export_seconds: float = Field(default=5.0, gt=0, description=(
        "how often the worker sends the audit records not exported yet (and retries a "
        "collector that was down)"))
    audit_site_id: str | None = Field(default=None, description=(
        "AuditEnterpriseSiteID in the audit messages (the archive's site)"))
    max_upload_bytes: int = Field(default=20 << 30, gt=0,
                                  description="largest document accepted, bytes (413 above)")
    document_mime_types: str = Field(
        default=",".join(DEFAULT_DOCUMENT_MIME_TYPES),
        description="MIME types accepted as documents, comma-separated")
    repository_unique_id: str = Field(
        default=DEFAULT_REPOSITORY_UNIQUE_ID,
        description="XDS repositoryUniqueId of this archive (an OID)")
    log_level: str = "INFO"
    port_wait_seconds: float = Field(default=15.0, ge=0, description=(
        "how long a starting service waits for its port to be free (a killed parent's "
        "children on their way out) before it gives up"))

    @field_validator("audit_syslog")
    @classmethod
    def _check_audit_syslog(cls, v: str) -> str:
        if v.strip():
            SyslogTarget.parse(v.strip())  # raises ValueError with the reason
        return v.strip()

    @field_validator("dicom_aet")
    @classmethod
    def _aet_valid(cls, v: str) -> str:
        v = v.strip()
        if not 0 < len(v) <= 16:
            raise ValueError("VNA_DICOM_AET must be 1 to 16 characters")
        return v

    @field_validator("dicom_peers")
    @classmethod
    def _peers_valid(cls, v: str) -> str:
        parse_peers(v)
        return v

    @field_validator("dicom_tls_aet_subjects")
    @classmethod
    def _aet_subjects_valid(cls, v: str) -> str:
        parse_aet_subjects(v)
        return v

    @property
    def aet_subjects(self) -> dict[str, str]:
        return parse_aet_subjects(self.dicom_tls_aet_subjects)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def retention_rules_path(self) -> Path:
        return self.retention_rules or self.data_dir / "retention.json"

    @property
    def allowed_document_mime_types(self) -> frozenset[str]:
        return frozenset(m.strip().lower() for m in self.document_mime_types.split(",")
                         if m.strip())

    @property
    def allowed_cors_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def peers(self) -> dict[str, DicomPeer]:
        return parse_peers(self.dicom_peers)

    @property
    def allowed_aets(self) -> frozenset[str]:
        return frozenset(a.strip() for a in self.dicom_allowed_aets.split(",") if a.strip())

    @property
    def scp_processes(self) -> int:
        return self.dicom_processes or 2 * (os.cpu_count() or 1)

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    @property
    def incoming_dir(self) -> Path:
        """Where received datasets land before they are archived (same disk as objects)."""
        return self.data_dir / "incoming"

    @property
    def scp_metrics_dir(self) -> Path:
        """Where the SCP processes keep their Prometheus figures (multiprocess files)."""
        return self.data_dir / "metrics" / "scp"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
