"""The viewer out of the box: the browser session (`/api/v1/session`, the `vna_session`
cookie), the OHIF build served at `/viewer` from VNA_VIEWER_DIR, and OHIF itself in headless
Chromium signing in, querying and drawing a study from vna's `/dicomweb`.

Against `vna api` under uvicorn, on files + SQLite and S3 + PostgreSQL. The fast tests serve
a small stand-in build (the shapes of OHIF's files that vna rewrites); the Chromium test
fetches the real one (`scripts/fetch-ohif.sh`, as `make viewer` does), cached outside the
repository."""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.api_client import RunningAPI, start_api, stop_api, wait_for
from tests.conftest import REPO, Backend
from tests.factory import make_instance, write

pytestmark = pytest.mark.timeout(600)

SECRET = "not-for-browsers-7d1c"  # a file beside the build that no URL may reach
BUNDLE = "app.bundle.0f6159c501addfe9.js"
INDEX = (
    '<!doctype html><html lang="en"><head><meta name="msapplication-TileImage" '
    'content="/assets/mstile-144x144.png"><script>window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><script rel="preload" as="script" '
    'src="/app-config.js"></script><script>function browserImportFunction(n){return '
    f'import(n)}}window.PUBLIC_URL="/"</script><script defer src="/{BUNDLE}"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"><a href="//cdn.example/x">x</a></head>'
    '<body><div id="root"></div></body></html>')


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for OHIF's dist: the files and site-root paths vna rewrites, the
    package's own app-config.js (never served), a hidden file and a way out."""
    root = tmp_path_factory.mktemp("ohif")
    (root / "secret.txt").write_text(SECRET)
    d = root / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text(INDEX)
    (d / BUNDLE).write_text('(()=>{var __webpack_require__={};__webpack_require__.p = "/";'
                            'console.log("ohif")})();')
    (d / "app.bundle.css").write_text("@font-face{src:url(/a34f9d1faa5f3315.woff2)}"
                                      "b{background:url('/assets/x.png')}")
    (d / "app-config.js").write_text("window.config = {dataSources: [{configuration: "
                                     "{qidoRoot: 'https://d14fa38qiwhyfd.cloudfront.net'}}]};")
    (d / "manifest.json").write_text('{"icons": [{"src": "/assets/icon.png"}], '
                                     '"start_url": "./index.html"}')
    (d / "assets" / "icon.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (d / ".ohif-version").write_text(SECRET)
    (d / "assets" / "escape.txt").symlink_to(root / "secret.txt")
    return d


@pytest.fixture(scope="module")
def api(module_backend: Backend, dist: Path) -> Iterator[RunningAPI]:
    running = start_api(module_backend, VNA_VIEWER_DIR=str(dist))
    try:
        yield running
    finally:
        stop_api(running)


@pytest.fixture(scope="module")
def tokens(api: RunningAPI) -> dict[str, str]:
    """Secrets of a viewer and an uploader token, and the viewer token's id."""
    r = api.client().post("/api/v1/tokens", json={"role": "viewer", "departments": []})
    assert r.status_code == 201, r.text
    return {"viewer": r.json()["token"], "viewer_id": r.json()["id"],
            "uploader": api.token("uploader")}


def session_cookie(response: httpx.Response) -> dict[str, str | bool] | None:
    """The attributes of the vna_session cookie a response sets (lower-case names)."""
    for header in response.headers.get_list("set-cookie"):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if "vna_session" in jar:
            morsel = jar["vna_session"]
            attrs: dict[str, str | bool] = {"value": morsel.value}
            attrs.update({k: v for k, v in morsel.items() if v})
            attrs["httponly"] = "httponly" in header.lower()
            attrs["secure"] = "; secure" in header.lower()
            return attrs
    return None


def audit(api: RunningAPI, **params: str) -> list[dict[str, Any]]:
    r = api.client().get("/api/v1/audit", params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def browser(api: RunningAPI, cookie: str | None = None) -> httpx.Client:
    """A client without a bearer header, as a browser is, with the session cookie."""
    c = api.client(None)
    if cookie is not None:
        c.cookies.set("vna_session", cookie, domain="127.0.0.1", path="/")
    return c


# -- the session -------------------------------------------------------------------------

def test_sign_in_sets_an_httponly_strict_cookie_and_is_audited(
        api: RunningAPI, tokens: dict[str, str]) -> None:
    r = api.client(tokens["viewer"]).post("/api/v1/session")
    assert r.status_code == 200, r.text
    assert r.json() == {"role": "viewer", "departments": [], "maxAge": 12 * 3600}
    assert r.headers["cache-control"] == "no-store"
    cookie = session_cookie(r)
    assert cookie is not None
    assert cookie["value"] == tokens["viewer"]
    assert cookie["httponly"] is True
    assert str(cookie["samesite"]).lower() == "strict"
    assert cookie["path"] == "/"
    assert cookie["max-age"] == str(12 * 3600)
    assert cookie["secure"] is False  # plain http here
    event = audit(api, action="session.create", tokenId=tokens["viewer_id"])[0]
    assert event["outcome"] == "success" and event["route"] == "/api/v1/session"
    assert event["method"] == "POST" and event["role"] == "viewer"
    # over https (here a TLS proxy on this host says so; uvicorn trusts 127.0.0.1): Secure
    r = api.client(tokens["viewer"]).post("/api/v1/session",
                                          headers={"X-Forwarded-Proto": "https"})
    cookie = session_cookie(r)
    assert r.status_code == 200 and cookie is not None and cookie["secure"] is True


def test_the_cookie_is_credentials_under_dicomweb_only(
        api: RunningAPI, tokens: dict[str, str]) -> None:
    """What a cross-site request could make a browser send is worth nothing outside
    /dicomweb: the REST API still wants the bearer header."""
    c = browser(api, tokens["viewer"])
    r = c.get("/dicomweb/studies", headers={"Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    r = c.get("/api/v1/documents", params={"patientId": "P1"})
    assert r.status_code == 401 and r.json()["detail"]
    assert browser(api, "vna_unknown").get("/dicomweb/studies").status_code == 401


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer vna_not-a-token"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_sign_in_without_a_valid_token_is_401_and_sets_no_cookie(
        api: RunningAPI, headers: dict[str, str]) -> None:
    before = len(audit(api, action="session.create", limit="1000"))
    r = api.client(None).post("/api/v1/session", headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/json" and r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    assert session_cookie(r) is None
    events = audit(api, action="session.create", limit="1000")
    assert len(events) == before + 1
    assert events[0]["outcome"] == "denied" and events[0]["tokenId"] is None


def test_the_sign_in_form_goes_on_to_the_viewer(api: RunningAPI,
                                                tokens: dict[str, str]) -> None:
    c = api.client(None)
    target = "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    r = c.post("/api/v1/session", data={"token": tokens["viewer"], "next": target},
               headers={"Origin": api.url})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == target
    cookie = session_cookie(r)
    assert cookie is not None and cookie["value"] == tokens["viewer"]
    # never on to another site, whatever `next` says
    for evil in ("https://evil.example/", "//evil.example/viewer", "/viewerx",
                 "/viewer/..//evil.example", "/api/v1/tokens", "/viewer\\..\\x", ""):
        r = c.post("/api/v1/session", data={"token": tokens["viewer"], "next": evil})
        assert r.status_code == 303 and r.headers["location"] == "/viewer/", evil


def test_a_wrong_token_in_the_form_shows_the_form_again(api: RunningAPI) -> None:
    r = api.client(None).post("/api/v1/session", data={
        "token": "vna_wrong", "next": "/viewer/viewer?StudyInstanceUIDs=<script>"})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("text/html")
    assert "unknown or revoked" in r.text
    assert 'value="/viewer/viewer?StudyInstanceUIDs=&lt;script&gt;"' in r.text
    assert "<script>" not in r.text
    assert session_cookie(r) is None


def test_a_sign_in_posted_from_another_site_is_refused(api: RunningAPI,
                                                      tokens: dict[str, str]) -> None:
    """Login CSRF: another site's page cannot sign its visitor in under its token."""
    for origin in ("https://evil.example", "null", f"http://127.0.0.2:{api.port}"):
        r = api.client(None).post("/api/v1/session", data={"token": tokens["viewer"]},
                                  headers={"Origin": origin})
        assert r.status_code == 403, origin
        assert r.json()["detail"] and session_cookie(r) is None


def test_sign_out_clears_the_cookie(api: RunningAPI, tokens: dict[str, str]) -> None:
    c = browser(api, tokens["viewer"])
    r = c.delete("/api/v1/session")
    assert r.status_code == 204 and r.content == b""
    cookie = session_cookie(r)
    assert cookie is not None and cookie["value"] == "" and cookie["max-age"] == "0"
    assert cookie["path"] == "/" and cookie["httponly"] is True
    assert "vna_session" not in c.cookies
    assert c.get("/dicomweb/studies").status_code == 401
    [event] = audit(api, action="session.end", tokenId=tokens["viewer_id"])
    assert event["outcome"] == "success"
    # without a session it is still a sign-out (nothing to end)
    assert api.client(None).delete("/api/v1/session").status_code == 204


# -- the viewer's files ------------------------------------------------------------------

def test_no_viewer_without_a_build(module_backend: Backend, dist: Path) -> None:
    """Without VNA_VIEWER_DIR, or with one that holds no build (here the folder above the
    stand-in's, which has a file and no index.html): 404 JSON for every viewer path."""
    for viewer_dir, says in ((None, "VNA_VIEWER_DIR is not set"),
                             (dist.parent, "index.html")):
        bare = start_api(module_backend, **({"VNA_VIEWER_DIR": str(viewer_dir)}
                                            if viewer_dir else {}))
        try:
            for path in ("/viewer", "/viewer/", "/viewer/viewer?StudyInstanceUIDs=1.2",
                         "/viewer/app-config.js", "/viewer/secret.txt"):
                r = bare.client(None).get(path)
                assert r.status_code == 404, path
                assert says in r.json()["detail"]
        finally:
            stop_api(bare)


def test_without_a_session_the_viewer_is_the_sign_in_page(
        api: RunningAPI, tokens: dict[str, str]) -> None:
    for cookie, status, says in ((None, 401, "Sign in"),
                                 ("vna_revoked", 401, "session has ended"),
                                 (tokens["uploader"], 403, "role uploader")):
        r = browser(api, cookie).get("/viewer/viewer", params={"StudyInstanceUIDs": "1.2.3"})
        assert r.status_code == status, cookie
        assert r.headers["content-type"].startswith("text/html")
        assert says in r.text
        assert '<form method="post" action="/api/v1/session">' in r.text
        assert 'name="next" value="/viewer/viewer?StudyInstanceUIDs=1.2.3"' in r.text
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
        assert "http://" not in r.text and "https://" not in r.text  # nothing from elsewhere


@pytest.mark.parametrize("path", ["/viewer", "/viewer/", "/viewer/index.html",
                                  "/viewer/viewer?StudyInstanceUIDs=1.2.3",
                                  "/viewer/segmentation/?StudyInstanceUIDs=1.2",
                                  "/viewer/local", "/viewer/assets"])
def test_the_viewers_routes_are_its_index_html(api: RunningAPI, tokens: dict[str, str],
                                               path: str) -> None:
    """SPA routes fall back to index.html, its site-root paths moved under /viewer."""
    r = browser(api, tokens["viewer"]).get(path)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["cross-origin-opener-policy"] == "same-origin"
    assert r.headers["cross-origin-embedder-policy"] == "require-corp"
    assert r.text.count('window.PUBLIC_URL="/viewer/"') == 2
    assert f'src="/viewer/{BUNDLE}"' in r.text and 'src="/viewer/app-config.js"' in r.text
    assert 'href="/viewer/app.bundle.css"' in r.text
    assert 'content="/viewer/assets/mstile-144x144.png"' in r.text
    assert 'href="//cdn.example/x"' in r.text  # not a site-root path: left alone
    assert not re.search(r'(src|href|content)="/(?!viewer/|/)', r.text)


def test_app_config_points_ohif_at_dicomweb(api: RunningAPI) -> None:
    r = api.client(None).get("/viewer/app-config.js")  # no data in it: no session needed
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert "cloudfront" not in r.text  # vna's, not the package's
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the configuration is not evaluated")
    harness = ("global.window = {location: {origin: 'https://vna.example:8443'}};"
               "eval(require('fs').readFileSync(0, 'utf8'));"
               "process.stdout.write(JSON.stringify(window.config));")
    out = subprocess.run(["node", "-e", harness], input=r.text, capture_output=True,
                         text=True, timeout=60, check=True)
    config = json.loads(out.stdout)
    assert config["routerBasename"] == "/viewer"
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    c = source["configuration"]
    root = "https://vna.example:8443/dicomweb"
    assert c["qidoRoot"] == c["wadoRoot"] == c["wadoUriRoot"] == root
    assert c["imageRendering"] == c["thumbnailRendering"] == "wadors"
    assert c["supportsFuzzyMatching"] is True and c["enableStudyLazyLoad"] is True
    assert c["qidoSupportsIncludeField"] is True and c["staticWado"] is False
    assert c["omitQuotationForMultipartRequest"] is True


def test_the_builds_files_are_served_with_their_root_paths_moved(
        api: RunningAPI, dist: Path) -> None:
    c = api.client(None)  # the build's files hold no data: no session needed
    r = c.get(f"/viewer/{BUNDLE}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert '__webpack_require__.p = "/viewer/";' in r.text
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert c.get(f"/viewer/{BUNDLE}", headers={"If-None-Match": r.headers["etag"]}
                 ).status_code == 304
    css = c.get("/viewer/app.bundle.css")
    assert css.text == ("@font-face{src:url(/viewer/a34f9d1faa5f3315.woff2)}"
                        "b{background:url('/viewer/assets/x.png')}")
    assert css.headers["cache-control"] == "no-cache"
    assert '"src": "/viewer/assets/icon.png"' in c.get("/viewer/manifest.json").text
    png = c.get("/viewer/assets/icon.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content == (dist / "assets" / "icon.png").read_bytes()
    assert png.headers["x-content-type-options"] == "nosniff"
    assert c.get("/viewer/assets/icon.png", headers={"If-None-Match": png.headers["etag"]}
                 ).status_code == 304
    part = c.get("/viewer/assets/icon.png", headers={"Range": "bytes=8-11"})
    assert part.status_code == 206 and part.content == bytes(range(4))


@pytest.mark.parametrize("path", ["/viewer/missing.js", "/viewer/assets/missing.png",
                                  "/viewer/1602.css"])
def test_a_missing_file_is_404_not_the_app(api: RunningAPI, tokens: dict[str, str],
                                           path: str) -> None:
    r = browser(api, tokens["viewer"]).get(path)
    assert r.status_code == 404 and r.json()["detail"]


@pytest.mark.parametrize("raw", [
    "/viewer/../secret.txt", "/viewer/%2e%2e/secret.txt", "/viewer/..%2fsecret.txt",
    "/viewer/assets/%2e%2e/%2e%2e/secret.txt", "/viewer/assets/../../secret.txt",
    "/viewer/%2e%2e%2f%2e%2e%2fsecret.txt", "/viewer/..%5csecret.txt",
    "/viewer//etc/passwd", "/viewer/%2fetc%2fpasswd", "/viewer/assets/escape.txt",
    "/viewer/.ohif-version", "/viewer/assets/./icon.png", "/viewer/%00index.html",
    "/viewer/assets/..", "/viewer/..",
])
def test_paths_out_of_the_build_are_refused(api: RunningAPI, tokens: dict[str, str],
                                            raw: str) -> None:
    """Sent as written (http.client does not normalise dot segments): 404 JSON, never the
    file, never the app."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    try:
        conn.request("GET", raw, headers={"Cookie": f"vna_session={tokens['viewer']}"})
        r = conn.getresponse()
        body = r.read().decode(errors="replace")
    finally:
        conn.close()
    assert r.status == 404, (raw, r.status, body[:200])
    assert json.loads(body)["detail"]
    assert SECRET not in body and "root:" not in body


# -- OHIF in Chromium --------------------------------------------------------------------

OHIF_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vna-test" / "ohif"
_NETWORK = ("ENOTFOUND", "EAI_AGAIN", "ETIMEDOUT", "ECONNREFUSED", "ECONNRESET",
            "ENETUNREACH", "EHOSTUNREACH", "network")


@pytest.fixture(scope="module")
def ohif_dist() -> Path:
    """The real OHIF build, fetched as `make viewer` does, kept for later runs."""
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the OHIF build cannot be fetched")
    out = subprocess.run(["bash", str(REPO / "scripts" / "fetch-ohif.sh"), str(OHIF_CACHE)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        if any(code in out.stderr for code in _NETWORK):
            pytest.skip(f"the npm registry is not reachable: {out.stderr[-300:]}")
        raise AssertionError(f"fetching OHIF failed: {out.stderr}")
    return OHIF_CACHE


@pytest.fixture(scope="module")
def ohif_api(module_backend: Backend, ohif_dist: Path) -> Iterator[RunningAPI]:
    running = start_api(module_backend, VNA_VIEWER_DIR=str(ohif_dist))
    try:
        yield running
    finally:
        stop_api(running)


def gradient_study(backend: Backend, directory: Path) -> tuple[str, str]:
    """A CT study of one 256 x 256 image whose values rise from the top left corner to
    the bottom right one over the whole 12-bit range (a window that shows all of it)."""
    from services.runtime import open_archive

    y, x = np.mgrid[0:256, 0:256]
    study, series = f"2.25.{uuid.uuid4().int}", f"2.25.{uuid.uuid4().int}"
    ds = make_instance(patient_id=f"V{uuid.uuid4().hex[:8]}", patient_name="Viewer^Test",
                       study_uid=study, series_uid=series, size=256,
                       WindowCenter=2048, WindowWidth=4096, RescaleIntercept=0,
                       RescaleSlope=1, PixelSpacing=[0.7, 0.7], SliceThickness=1,
                       ImagePositionPatient=[0, 0, 0],
                       ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    ds.PixelData = ((x + y) * 8).astype(np.uint16).tobytes()
    path = write(ds, directory / "gradient.dcm")
    archive = open_archive(backend.settings())
    try:
        [result] = archive.store_files([path], source_aet="TEST")
    finally:
        archive.index.dispose()
    assert result.ok, result
    return study, series


# The largest canvas on the page (OHIF's viewport), as [x, y, width, height] in CSS pixels.
_VIEWPORT = """(() => {
  const r = Array.from(document.querySelectorAll('canvas'))
    .map(c => c.getBoundingClientRect()).filter(r => r.width > 150 && r.height > 150)
    .sort((a, b) => b.width * b.height - a.width * a.height)[0];
  return r ? [r.x, r.y, r.width, r.height] : null; })()"""
# OHIF's first-visit notices (the onboarding tour, the investigational-use banner)
_DISMISS = """(() => { let n = 0; for (const b of document.querySelectorAll('button, a, span'))
  if (/^(Skip all|Confirm and hide)$/.test(b.textContent.trim())) { b.click(); n++; }
  return n; })()"""


def drawn(png: bytes, rect: list[float]) -> tuple[bool, str]:
    """Whether the middle of the viewport shows the gradient: many grey levels, brighter
    towards the bottom right (the image's orientation), not a blank or one-colour box."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("L")
    x, y, w, h = rect
    side = min(w, h) * 0.5  # the image is fitted to the viewport and centred
    cx, cy = x + w / 2, y + h / 2
    box = np.asarray(img.crop((int(cx - side / 2), int(cy - side / 2),
                               int(cx + side / 2), int(cy + side / 2))), dtype=np.int32)
    if box.size == 0:
        return False, "empty viewport"
    q = box.shape[0] // 4
    top_left, bottom_right = box[:q, :q].mean(), box[-q:, -q:].mean()
    levels = len(np.unique(box))
    ok = levels >= 48 and bottom_right - top_left > 40
    return ok, f"{levels} grey levels, top left {top_left:.0f}, bottom right {bottom_right:.0f}"


def test_ohif_signs_in_and_draws_a_study_from_dicomweb(
        module_backend: Backend, ohif_api: RunningAPI, tmp_path: Path) -> None:
    from tests.browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.fail("Chromium is not installed (apt-get install chromium; "
                    "scripts/test-deps.sh does)")
    api = ohif_api
    study, series = gradient_study(module_backend, tmp_path)
    r = api.client().post("/api/v1/tokens", json={"role": "viewer", "departments": []})
    viewer_token, viewer_id = r.json()["token"], r.json()["id"]
    url = f"{api.url}/viewer/viewer?StudyInstanceUIDs={study}"
    shot = tmp_path / "ohif.png"
    with Browser(tmp_path / "chromium") as b:
        try:
            # 1. the viewer without a session is the sign-in page; its form signs in
            b.navigate(url)
            b.wait_for("document.querySelector('input[name=token]') !== null", 30)
            b.evaluate(f"document.querySelector('input[name=token]').value = "
                       f"{json.dumps(viewer_token)}; document.querySelector('form').submit()")
            b.wait_for("location.pathname === '/viewer/viewer' && "
                       "document.querySelector('#root') !== null && "
                       "document.querySelector('#root').childElementCount > 0", 60)
            assert b.evaluate("location.search") == f"?StudyInstanceUIDs={study}"
            assert "vna_session" not in b.evaluate("document.cookie")  # HttpOnly
            assert b.evaluate("window.crossOriginIsolated") is True
            # 2. OHIF asks vna's /dicomweb with the session cookie alone
            queries = wait_for(lambda: audit(api, tokenId=viewer_id,
                                             action="dicomweb.query"), 60)
            assert queries, ("OHIF sent no QIDO-RS request", b.console[-20:])
            assert all(e["status"] == 200 for e in queries), queries
            [signin] = audit(api, tokenId=viewer_id, action="session.create")
            assert signin["outcome"] == "success"
            metadata = api.client().get(
                f"/dicomweb/studies/{study}/series/{series}/metadata",
                headers={"Accept": "application/dicom+json"})
            if metadata.status_code in (404, 405) and \
                    metadata.json().get("detail") in ("Not Found", "Method Not Allowed"):
                pytest.skip("WADO-RS /metadata is not served by this build: OHIF signed in "
                            "and queried, but cannot load the image")
            # 3. it retrieves the series and draws it
            deadline = time.monotonic() + 120
            verdict = "no viewport"
            while time.monotonic() < deadline:
                b.evaluate(_DISMISS)
                rect = b.evaluate(_VIEWPORT)
                if rect:
                    png = b.screenshot()
                    ok, verdict = drawn(png, rect)
                    if ok:
                        shot.write_bytes(png)
                        break
                time.sleep(1)
            else:
                shot.write_bytes(b.screenshot())
                raise AssertionError(f"OHIF drew no image ({verdict}); screenshot {shot}; "
                                     f"console: {b.console[-20:]}")
            retrieves = audit(api, tokenId=viewer_id, action="dicomweb.retrieve")
            assert retrieves and all(e["status"] < 400 for e in retrieves), retrieves
        except Exception:
            if not shot.exists():
                shot.write_bytes(b.screenshot())
            print(f"screenshot: {shot}; console: {b.console[-30:]}")
            print(api.logtext()[-4000:])
            raise

