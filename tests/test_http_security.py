"""HTTP security over real HTTP: `vna api` under uvicorn on both backends. Token expiry,
rotation and last use; failed bearer attempts limited per client address (429) and counted
in /metrics; request limits (header count and size, JSON bodies, concurrent uploads); a
slow-loris client dropped; HTTPS with a self-made CA."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api_client import ADMIN_TOKEN, RunningAPI, start_api, stop_api, upload, wait_for
from tests.conftest import VNA, Backend, vna_env, wait_port

AUTH_FAILURES = 5
LIMITS = {"VNA_HTTP_AUTH_FAILURES": str(AUTH_FAILURES), "VNA_HTTP_AUTH_WINDOW_SECONDS": "30",
          "VNA_HTTP_MAX_UPLOADS": "1", "VNA_HTTP_MAX_JSON_BYTES": "4096",
          "VNA_HTTP_MAX_HEADERS": "40", "VNA_HTTP_MAX_HEADER_BYTES": "8192",
          "VNA_HTTP_HEADER_TIMEOUT_SECONDS": "2", "VNA_HTTP_KEEPALIVE_SECONDS": "2",
          "VNA_HTTP_BODY_TIMEOUT_SECONDS": "4"}

PROBE = "/api/v1/documents?patientId=191212121212"  # a viewer may; an uploader may not


@pytest.fixture(scope="module")
def api(module_backend: Backend) -> Iterator[RunningAPI]:
    running = start_api(module_backend, **LIMITS)
    try:
        yield running
    finally:
        stop_api(running)


def from_address(api: RunningAPI, address: str, token: str | None) -> httpx.Client:
    """A client whose connections come from another loopback address (another 'host')."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api.url, headers=headers, timeout=30,
                        transport=httpx.HTTPTransport(local_address=address))


def token_row(api: RunningAPI, token_id: str) -> dict[str, Any]:
    rows = api.client().get("/api/v1/tokens").json()
    return next(r for r in rows if r["id"] == token_id)


def token_count(api: RunningAPI) -> int:
    return len(api.client().get("/api/v1/tokens").json())


# -- tokens: expiry, rotation, last use -------------------------------------------------------

def test_token_expiry(api: RunningAPI) -> None:
    before = token_count(api)
    for bad in ("2020-01-01T00:00:00Z", "2099-01-01T00:00:00"):  # past; no time zone
        r = api.client().post("/api/v1/tokens", json={"role": "viewer", "expiresAt": bad})
        assert r.status_code == 422 and "expiresAt" in r.json()["detail"], r.text
    assert token_count(api) == before  # refused: nothing made
    at = datetime.now(UTC) + timedelta(seconds=3)
    r = api.client().post("/api/v1/tokens", json={"role": "viewer",
                                                  "expiresAt": at.isoformat()})
    assert r.status_code == 201, r.text
    created = r.json()
    assert datetime.fromisoformat(created["expiresAt"]) == at.replace(microsecond=at.microsecond)
    viewer = api.client(created["token"])
    assert viewer.get(PROBE).status_code == 200
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.2)
    r = viewer.get(PROBE)
    assert r.status_code == 401
    assert "expired" in r.json()["detail"] and created["id"] in r.json()["detail"]
    assert "expired" in r.headers["www-authenticate"]


def test_token_rotation(api: RunningAPI) -> None:
    r = api.client().post("/api/v1/tokens", json={
        "role": "uploader", "departments": ["lung", "skin"], "source": "patient",
        "label": "portal", "expiresAt": (datetime.now(UTC) + timedelta(days=30)).isoformat()})
    old = r.json()
    before = token_count(api)
    r = api.client().post(f"/api/v1/tokens/{old['id']}/rotate")
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["id"] != old["id"] and new["token"] != old["token"]
    assert (new["role"], new["departments"], new["source"], new["label"]) == \
        ("uploader", ["lung", "skin"], "patient", "portal")
    # Same lifetime (30 days), from now.
    assert abs(datetime.fromisoformat(new["expiresAt"]) - datetime.now(UTC)
               - timedelta(days=30)) < timedelta(minutes=1)
    assert token_count(api) == before + 1
    row = token_row(api, old["id"])
    assert row["revokedAt"] and row["replacedBy"] == new["id"]
    assert api.client(old["token"]).get(PROBE).status_code == 401
    # An uploader may not find documents: 403 means it authenticated.
    assert api.client(new["token"]).get(PROBE).status_code == 403
    # The revoked one cannot be rotated again; the bootstrap one is set in the environment.
    count = token_count(api)
    r = api.client().post(f"/api/v1/tokens/{old['id']}/rotate")
    assert r.status_code == 404 and "no active token" in r.json()["detail"]
    r = api.client().post("/api/v1/tokens/admin/rotate")
    assert r.status_code == 409 and "VNA_ADMIN_TOKEN" in r.json()["detail"]
    assert token_count(api) == count
    # A viewer may not rotate.
    viewer = api.token("viewer")
    assert api.client(viewer).post(f"/api/v1/tokens/{new['id']}/rotate").status_code == 403
    assert token_row(api, new["id"])["revokedAt"] is None


def test_last_used_is_shown_and_written_at_most_once_a_minute(api: RunningAPI) -> None:
    r = api.client().post("/api/v1/tokens", json={"role": "viewer"})
    tid, token = r.json()["id"], r.json()["token"]
    assert token_row(api, tid)["lastUsedAt"] is None
    started = datetime.now(UTC)
    client = api.client(token)
    assert client.get(PROBE).status_code == 200
    first = token_row(api, tid)["lastUsedAt"]
    assert first is not None and datetime.fromisoformat(first) >= started - timedelta(seconds=1)
    for _ in range(5):
        client.get(PROBE)
    assert token_row(api, tid)["lastUsedAt"] == first  # not a write per request


def test_token_cli_expiry_rotation_and_list(api: RunningAPI) -> None:
    def vna(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*VNA, "token", *args],
                              env=vna_env({**api.backend.env, "COLUMNS": "200"}),
                              capture_output=True, text=True, timeout=60,
                              cwd=api.backend.data_dir.parent)

    before = token_count(api)
    bad = vna("create", "--role", "viewer", "--expires", "yesterday")
    assert bad.returncode == 2 and "--expires" in bad.stderr
    assert vna("create", "--role", "viewer", "--expires", "2001-01-01T00:00:00Z").returncode == 2
    assert token_count(api) == before
    p = vna("create", "--role", "viewer", "--expires", "90d")
    assert p.returncode == 0, p.stderr
    token = p.stdout.strip()
    assert api.client(token).get(PROBE).status_code == 200
    tid = p.stderr.split()[1].rstrip(":")
    assert abs(datetime.fromisoformat(token_row(api, tid)["expiresAt"]) - datetime.now(UTC)
               - timedelta(days=90)) < timedelta(minutes=1)
    r = vna("rotate", tid)
    assert r.returncode == 0, r.stderr
    assert api.client(token).get(PROBE).status_code == 401
    assert api.client(r.stdout.strip()).get(PROBE).status_code == 200
    assert vna("rotate", tid).returncode == 1  # revoked already
    listing = vna("list")
    assert listing.returncode == 0 and tid in listing.stdout + listing.stderr


# -- failed bearer attempts ---------------------------------------------------------------------

def metric(api: RunningAPI, name: str, **labels: str) -> float:
    text = api.client().get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}}" if want else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def audited_from(api: RunningAPI, address: str) -> list[int]:
    """The statuses of the audit records of requests from `address`."""
    events = api.client().get("/api/v1/audit", params={"limit": 1000}).json()["events"]
    return [e["status"] for e in events if e["client"] == address]


def test_failed_bearer_attempts_are_limited_per_address(api: RunningAPI) -> None:
    failures = metric(api, "vna_http_auth_failures_total", reason="unknown")
    limited = metric(api, "vna_http_limited_total", limit="auth")
    attacker = from_address(api, "127.0.0.7", "vna_guess")
    for _ in range(AUTH_FAILURES):
        r = attacker.get(PROBE)
        assert r.status_code == 401 and r.json()["detail"] == "the token is unknown or revoked"
    assert audited_from(api, "127.0.0.7") == [401] * AUTH_FAILURES
    for _ in range(3):
        r = attacker.get(PROBE)
        assert r.status_code == 429, r.text
        assert "too many failed authentications" in r.json()["detail"]
        assert 0 < int(r.headers["retry-after"]) <= 30
    # Even with a good token, while the address is limited: nothing is looked up.
    good = api.token("viewer")
    r = from_address(api, "127.0.0.7", good).get(PROBE)
    assert r.status_code == 429
    assert audited_from(api, "127.0.0.7") == [401] * AUTH_FAILURES  # a 429 is not
    # Another address is not affected; nor is a request without a token (401, not counted).
    assert from_address(api, "127.0.0.8", good).get(PROBE).status_code == 200
    assert metric(api, "vna_http_auth_failures_total", reason="unknown") == \
        failures + AUTH_FAILURES
    assert metric(api, "vna_http_limited_total", limit="auth") == limited + 4


def test_sign_in_forms_count_as_failed_attempts(api: RunningAPI) -> None:
    """The viewer's sign-in form carries its token in a form field, not a header: its
    failures count, and the address is refused there too."""
    c = from_address(api, "127.0.0.11", None)
    for _ in range(AUTH_FAILURES):
        r = c.post("/api/v1/session", data={"token": "vna_guess", "next": "/viewer"})
        assert r.status_code == 401 and "unknown or revoked" in r.text
    r = c.post("/api/v1/session", data={"token": "vna_guess", "next": "/viewer"})
    assert r.status_code == 429 and "too many failed" in r.json()["detail"]
    assert "set-cookie" not in r.headers


def test_an_expired_token_is_401_everywhere(api: RunningAPI) -> None:
    at = datetime.now(UTC) + timedelta(seconds=2)
    token = api.client().post("/api/v1/tokens", json={
        "role": "viewer", "expiresAt": at.isoformat()}).json()["token"]
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()) + 0.2)
    c = from_address(api, "127.0.0.12", token)
    r = c.post("/api/v1/session")  # bearer sign-in
    assert r.status_code == 401, r.text
    r = from_address(api, "127.0.0.12", None).post("/api/v1/session", data={"token": token})
    assert r.status_code == 401 and "expired" in r.text
    browser = from_address(api, "127.0.0.12", None)
    browser.cookies.set("vna_session", token)
    assert browser.get("/dicomweb/studies").status_code == 401
    assert browser.delete("/api/v1/session").status_code == 204


def test_client_address_behind_a_trusted_proxy(api: RunningAPI) -> None:
    """X-Forwarded-For counts from VNA_HTTP_FORWARDED_ALLOW_IPS (127.0.0.1) only: the
    audit trail and the failure limit see the proxy's client, not the proxy."""
    r = api.client("vna_wrong").get(PROBE, headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 401
    assert audited_from(api, "203.0.113.9") == [401]
    # From an address that is no trusted proxy the header is ignored.
    r = from_address(api, "127.0.0.9", "vna_wrong").get(
        PROBE, headers={"X-Forwarded-For": "203.0.113.10"})
    assert r.status_code == 401
    assert audited_from(api, "203.0.113.10") == []
    assert audited_from(api, "127.0.0.9") == [401]


# -- request limits ---------------------------------------------------------------------------

def test_too_many_or_too_large_headers(api: RunningAPI) -> None:
    before = token_count(api)
    many = {f"x-filler-{i}": "1" for i in range(45)}
    r = api.client().post("/api/v1/tokens", json={"role": "viewer"}, headers=many)
    assert r.status_code == 431 and "header fields" in r.json()["detail"]
    # A head over VNA_HTTP_MAX_HEADER_BYTES is refused; the connection is closed.
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall(b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nX-Filler: "
                  + b"a" * 10_000 + b"\r\n\r\n")
        s.settimeout(10)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    # 431 when the head came in one piece (counted by the app), else h11's 400.
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:100]
    assert token_count(api) == before
    assert api.client().get("/health").status_code == 200


def test_json_body_over_the_limit(api: RunningAPI) -> None:
    before = token_count(api)
    body = {"role": "viewer", "label": "x", "departments": ["lung"] * 2000}
    r = api.client().post("/api/v1/tokens", json=body)
    assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as read
        yield b'{"role": "viewer", "departments": ['
        for _ in range(1000):
            yield b'"lung",'
        yield b'"lung"]}'

    r = api.client().post("/api/v1/tokens", content=chunks(),
                          headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert token_count(api) == before
    assert metric(api, "vna_http_limited_total", limit="json_body") >= 2


def test_concurrent_uploads_beyond_the_limit_get_503(api: RunningAPI) -> None:
    release = threading.Event()
    first: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n{"
        release.wait(20)
        yield b"}\r\n--b--\r\n"

    def slow_upload() -> None:
        first.append(api.client().post(
            "/api/v1/documents", content=slow_body(),
            headers={"content-type": "multipart/form-data; boundary=b"}))

    t = threading.Thread(target=slow_upload)
    t.start()
    try:
        time.sleep(1.0)
        r = upload(api.client(), b"%PDF-1.4", {"patientId": "1912121212"})
        assert r.status_code == 503, r.text
        assert "uploads are in progress" in r.json()["detail"]
        assert r.headers["retry-after"] == "2"
        r = api.client().post("/dicomweb/studies", content=b"x",
                              headers={"content-type": "multipart/related; "
                                       "type=\"application/dicom\"; boundary=b"})
        assert r.status_code == 503
        assert api.client().get("/api/v1/tokens").status_code == 200  # reads go on
    finally:
        release.set()
        t.join(30)
    assert first and first[0].status_code in (400, 422)
    # The slot is free again: the next upload is judged on its merits.
    r = upload(api.client(), b"not a pdf", "{")
    assert r.status_code != 503


def test_a_stalled_upload_body_is_ended_with_408(api: RunningAPI) -> None:
    """A body that stops sending holds the only upload slot (VNA_HTTP_MAX_UPLOADS=1 here)
    for VNA_HTTP_BODY_TIMEOUT_SECONDS (4), then gets 408; nothing is stored."""
    from tests.api_client import archive_state

    before = archive_state(api.backend)
    meta = json.dumps({"patientId": "191212121212", "classCode": "report",
                       "practiceSettingCode": "lung"}).encode()
    head = (b"--b\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n" + meta
            + b"\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
              b"filename=\"r.pdf\"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4\n"
            + b"x" * 20_000)
    with socket.create_connection(("127.0.0.1", api.port)) as s:
        s.sendall(b"POST /api/v1/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  + ADMIN_TOKEN.encode() + b"\r\nContent-Type: multipart/form-data; "
                  b"boundary=b\r\nContent-Length: 10000000\r\n\r\n" + head)
        started = time.monotonic()
        s.settimeout(15)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"no bytes of the request body for 4 s" in answer
    assert 3.5 < waited < 10, waited
    assert wait_for(lambda: archive_state(api.backend) == before, 10)
    r = upload(api.client(), b"not a pdf", "{")  # the slot is free again
    assert r.status_code != 503


def test_slow_loris_is_dropped_and_others_are_served(api: RunningAPI) -> None:
    """One header byte every half second: the connection is closed once the head has taken
    VNA_HTTP_HEADER_TIMEOUT_SECONDS (2 here), while other clients are served meanwhile."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    s = socket.create_connection(("127.0.0.1", api.port))
    started = time.monotonic()
    closed_after = None
    try:
        for i in range(len(head)):
            try:
                s.sendall(head[i:i + 1])
            except OSError:
                closed_after = time.monotonic() - started
                break
            if i % 2 == 0:
                assert api.client().get("/health").status_code == 200
            s.settimeout(0.5)
            try:
                if s.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
    finally:
        s.close()
    assert closed_after is not None and 1.5 < closed_after < 5, closed_after
    # An idle keep-alive connection is closed too (VNA_HTTP_KEEPALIVE_SECONDS).
    s = socket.create_connection(("127.0.0.1", api.port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):  # the whole JSON answer
        answer += s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    assert s.recv(4096) == b""
    assert time.monotonic() - started < 5
    s.close()


# -- HTTPS ----------------------------------------------------------------------------------

def make_ca_and_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A CA of this test and a server certificate for 127.0.0.1 signed by it (openssl)."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
        "ca.pem", "-days", "2", "-subj", "/CN=vna test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
        "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


def test_https_with_a_self_made_certificate(embedded: Backend, tmp_path: Path) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    api = start_api(embedded, VNA_HTTP_TLS_CERT=str(cert), VNA_HTTP_TLS_KEY=str(key))
    try:
        url = f"https://127.0.0.1:{api.port}"
        trusted = ssl.create_default_context(cafile=str(ca))
        with httpx.Client(base_url=url, verify=trusted,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as c:
            assert c.get("/health").status_code == 200
            r = c.post("/api/v1/tokens", json={"role": "viewer"})
            assert r.status_code == 201
        with pytest.raises(httpx.ConnectError):  # not trusted without our CA
            httpx.get(url + "/health")
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{api.port}/health")
        old = ssl.create_default_context(cafile=str(ca))
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((httpx.ConnectError, ssl.SSLError)):  # TLS 1.2 at least
            httpx.get(url + "/health", verify=old)
        with socket.create_connection(("127.0.0.1", api.port)) as raw, \
                trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        stop_api(api)


def test_vna_up_prints_https(embedded: Backend, tmp_path: Path) -> None:
    from tests.conftest import free_port

    _, cert, key = make_ca_and_cert(tmp_path)
    port = free_port()
    env = {**embedded.env, "VNA_HTTP_PORT": str(port), "VNA_DICOM_PORT": str(free_port()),
           "VNA_HTTP_TLS_CERT": str(cert), "VNA_HTTP_TLS_KEY": str(key),
           "VNA_ADMIN_TOKEN": ADMIN_TOKEN}
    embedded.data_dir.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "up.log"
    proc = subprocess.Popen([*VNA, "up"], env=vna_env(env), stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        wait_port(port, 60)
        assert wait_for(lambda: "Ctrl-C" in log.read_text(), 60), log.read_text()
        text = log.read_text()
        assert f"https://127.0.0.1:{port}/health" in text and "(not answering)" not in text
    finally:
        from tests.conftest import stop_process

        stop_process(proc, 2)  # SIGINT, as Ctrl-C


def test_settings_documented() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    security = (Path(__file__).parent.parent / "docs" / "security.md").read_text()
    for name in LIMITS | {"VNA_HTTP_TLS_CERT": "", "VNA_HTTP_TLS_KEY": "",
                          "VNA_HTTP_FORWARDED_ALLOW_IPS": "",
                          "VNA_TOKEN_LAST_USED_SECONDS": ""}:
        assert name in readme, name
        assert name in security, name



# -- the plain rules ---------------------------------------------------------------------------

def test_failure_window_rules() -> None:
    from vna.ratelimit import FailureWindow

    w = FailureWindow(limit=3, window=10, max_keys=4)
    for t in (0.0, 1.0, 2.0):
        assert w.retry_after("a", t) == 0
        w.failed("a", t)
    assert w.retry_after("a", 2.5) == pytest.approx(7.5)  # until the first leaves the window
    assert w.retry_after("b", 2.5) == 0
    assert w.retry_after("a", 10.0) == 0  # the first aged out: 2 in the window
    w.failed("a", 10.0)
    assert w.retry_after("a", 10.5) == pytest.approx(0.5)
    for i in range(10):  # many addresses: the table stays bounded
        w.failed(f"x{i}", 20.0 + i)
    assert len(w._failures) <= 4


def test_parse_expiry() -> None:
    from vna.access import InvalidToken, parse_expiry

    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert parse_expiry("90d", now) == now + timedelta(days=90)
    assert parse_expiry("12h", now) == now + timedelta(hours=12)
    assert parse_expiry("2w", now) == now + timedelta(weeks=2)
    assert parse_expiry("2027-01-01T00:00:00+01:00", now).year == 2027
    for bad in ("0m", "soon", "2027-01-01T00:00:00", "2020-01-01T00:00:00Z", "-5d"):
        with pytest.raises(InvalidToken):
            parse_expiry(bad, now)
