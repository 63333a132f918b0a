"""The viewer out of the box: the OHIF build at `VNA_VIEWER_DIR` served at `/viewer`, and
the browser session that lets it read `/dicomweb` without a bearer header.

A browser user signs in once (`POST /api/v1/session`, from the small sign-in page `/viewer`
shows without a session, or with a bearer header from a script): the token is checked and
set as the `vna_session` cookie, HttpOnly (no script reads it), SameSite=Strict (no other
site's page makes the browser send it), Path=/, Secure over https, for 12 hours. The cookie
is accepted as credentials under `/dicomweb` only (`security.SESSION_COOKIE_PATHS`), with
exactly the token's role and departments; `/viewer` reads it only to choose between the
viewer and the sign-in page. `DELETE /api/v1/session` signs out. Revoking the token ends
its sessions at once: the cookie is the token, looked up on every request.

The build's files need no session (they hold no data). They are served from the folder as
published, with the few site-root paths in them moved under `/viewer` (`vna.ohif.relocate`,
cached per file version) and vna's own `app-config.js` in place of the package's.
"""

from __future__ import annotations

import html
import logging
import math
import os
import threading
from pathlib import Path
from string import Template
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response

from services.xds_api.content import etag_matches
from services.xds_api.deps import SettingsDep, TokensDep
from services.xds_api.security import (
    SESSION_COOKIE,
    AuditContext,
    address_refused,
    authenticate,
)
from storage.index.tokens import Tokens
from vna import ohif
from vna.access import Action, Role

log = logging.getLogger("vna.http")

SESSION_MAX_AGE = 12 * 3600  # seconds a browser stays signed in
_MAX_RELOCATED = 64 << 20  # larger files are served as they are
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_SIGNIN = Template((Path(__file__).parent / "static" / "signin.html").read_text())
_SIGNIN_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin"}
# The viewer's own files: cross-origin isolation (OHIF's volume viewports need
# SharedArrayBuffer; everything it loads is same-origin), no MIME sniffing.
_VIEWER_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
                   "Cross-Origin-Embedder-Policy": "require-corp",
                   "X-Content-Type-Options": "nosniff"}
_APP_CONFIG = ohif.app_config_js().encode()

router = APIRouter(tags=["session"])
_bearer = HTTPBearer(auto_error=False, description="an API token (`vna token create`)")


class Session(BaseModel):
    """A signed-in browser: the role and departments of its token, and for how long."""

    role: Role
    departments: list[str]
    maxAge: int  # seconds


# -- the session ----------------------------------------------------------------------------

@router.post("/api/v1/session", response_model=Session, responses={
    303: {"description": "signed in from the sign-in page's form: on to the viewer"},
    401: {"description": "no token, or an unknown or revoked one; no cookie is set"},
    403: {"description": "a sign-in form posted from another site"}})
async def create_session(
        request: Request, tokens: TokensDep, settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Any:
    """Sign a browser in: the token (`Authorization: Bearer`, or the form field `token` of
    the sign-in page) is checked and set as the HttpOnly, SameSite=Strict cookie
    `vna_session`, which `/dicomweb` accepts in place of the bearer header. Any role may
    sign in; the session may do what its token may. A form answers with a redirect to its
    `next` (a path under /viewer)."""
    ctx = AuditContext(Action.SESSION_CREATE, "/api/v1/session")
    request.state.audit = ctx
    content_type = request.headers.get("content-type", "").lower()
    form_post = content_type.startswith(_FORM_TYPES)
    if not _same_site_origin(request, settings.allowed_cors_origins):
        # a page of another site cannot sign its visitor in under a token of its choosing
        raise HTTPException(403, "a sign-in from a page of another origin is refused")
    if form_post:
        form = await request.form()
        secret = str(form.get("token") or "").strip()
        next_url = _next_url(str(form.get("next") or ""))
    else:
        secret = credentials.credentials if credentials is not None and \
            credentials.scheme.lower() == "bearer" else ""
        next_url = ""
    wait = address_refused(request)
    if wait > 0:  # a sign-in form's token is not seen by LimitsMiddleware
        request.state.audit = None
        raise HTTPException(429, "too many failed authentications from this address; try "
                                 f"again in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    principal, refusal = await run_in_threadpool(authenticate, request, tokens, secret) \
        if secret else (None, "")
    if principal is None:
        if form_post:
            return signin_page(next_url, f"That token cannot sign in: {refusal}.", 401)
        raise HTTPException(401, "a valid bearer token is required to sign in",
                            headers={"WWW-Authenticate": "Bearer"})
    ctx.principal = principal
    response: Response
    if form_post:
        response = RedirectResponse(next_url, status_code=303,
                                    headers={"Cache-Control": "no-store"})
    else:
        response = JSONResponse(Session(role=principal.role,
                                        departments=sorted(principal.departments),
                                        maxAge=SESSION_MAX_AGE).model_dump(mode="json"),
                                headers={"Cache-Control": "no-store"})
    response.set_cookie(SESSION_COOKIE, secret, max_age=SESSION_MAX_AGE, path="/",
                        secure=request.url.scheme == "https", httponly=True,
                        samesite="strict")
    return response


@router.delete("/api/v1/session", status_code=204, responses={
    204: {"description": "signed out: the cookie is cleared"}})
def end_session(request: Request, tokens: TokensDep) -> Response:
    """Sign a browser out: the `vna_session` cookie is cleared (recorded under the token
    it held, if any). The token itself stays valid; revoke it to end every session."""
    ctx = AuditContext(Action.SESSION_END, "/api/v1/session")
    request.state.audit = ctx
    secret = request.cookies.get(SESSION_COOKIE)
    ctx.principal = authenticate(request, tokens, secret)[0] if secret else None
    response = Response(status_code=204, headers={"Cache-Control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path="/", secure=request.url.scheme == "https",
                           httponly=True, samesite="strict")
    return response


def _same_site_origin(request: Request, allowed: list[str]) -> bool:
    """A request without Origin (curl, a script) or from this server's own origin, or from
    one of VNA_CORS_ORIGINS. Compared by host and port, as the Host header names them."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin.rstrip("/") in allowed:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host")


def _next_url(value: str) -> str:
    """Where a signed-in form goes: a plain path under /viewer (with its query), never
    another site or another part of this one."""
    path = value.partition("?")[0]
    rest = path.removeprefix(ohif.PREFIX)
    if (len(value) <= 4096 and value.isprintable() and "\\" not in value
            and path.startswith(ohif.PREFIX) and rest[:1] in ("", "/")
            and (rest in ("", "/") or ohif.plain_path(rest[1:].removesuffix("/")))):
        return value
    return ohif.PREFIX + "/"


def signin_page(next_url: str, message: str = "", status: int = 401) -> Response:
    body = _SIGNIN.substitute(message=html.escape(message), next=html.escape(next_url),
                              hours=SESSION_MAX_AGE // 3600)
    return Response(body, status_code=status, media_type="text/html; charset=utf-8",
                    headers=_SIGNIN_HEADERS)


# -- the viewer -----------------------------------------------------------------------------

class ViewerBuild:
    """The OHIF build at VNA_VIEWER_DIR as served under /viewer. Files that name the site
    root are read once per version (mtime, size) and kept rewritten; the rest are streamed
    from disk."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._relocated: dict[Path, tuple[int, int, bytes | None]] = {}

    def relocated(self, path: Path, st: os.stat_result) -> bytes | None:
        if not path.name.endswith(ohif.RELOCATED_SUFFIXES) or st.st_size > _MAX_RELOCATED:
            return None
        with self._lock:
            cached = self._relocated.get(path)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        body = ohif.relocate(path.name, path.read_bytes())
        with self._lock:
            self._relocated[path] = (st.st_mtime_ns, st.st_size, body)
        return body

    def response(self, request: Request, path: Path, *, cache: str | None = None) -> Response:
        st = path.stat()
        body = self.relocated(path, st)
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}{"-v" if body is not None else ""}"'
        if cache is None:
            cache = "public, max-age=31536000, immutable" \
                if ohif.is_content_hashed(path.name) else "no-cache"
        headers = {**_VIEWER_HEADERS, "ETag": etag, "Cache-Control": cache}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        media_type = ohif.media_type(path.name)
        if body is None:
            return FileResponse(path, media_type=media_type, headers=headers, stat_result=st)
        return Response(body, media_type=media_type, headers=headers)


_builds: dict[Path, ViewerBuild] = {}
_reported: set[Path] = set()  # viewer folders without a build, logged once


def _build(settings_dir: Path | None) -> ViewerBuild:
    """The configured build, or 404 (JSON, like every other error of the service)."""
    if settings_dir is None:
        raise HTTPException(404, "no viewer is served here: VNA_VIEWER_DIR is not set")
    if not (settings_dir / "index.html").is_file():
        if settings_dir not in _reported:
            _reported.add(settings_dir)
            log.error("VNA_VIEWER_DIR %s has no index.html: point it at the dist folder of "
                      "@ohif/app (`make viewer` fetches one)", settings_dir)
        raise HTTPException(404, "no viewer is served here: VNA_VIEWER_DIR holds no built "
                                 "viewer (index.html)")
    build = _builds.get(settings_dir)
    if build is None:
        build = _builds.setdefault(settings_dir, ViewerBuild(settings_dir))
    return build


@router.get(ohif.PREFIX, include_in_schema=False)
@router.get(ohif.PREFIX + "/{path:path}", include_in_schema=False)
def viewer(request: Request, settings: SettingsDep, tokens: TokensDep,
           path: str = "") -> Response:
    """The build's files as they are; `app-config.js` from vna; every other path is one of
    the viewer's own routes (`/viewer/viewer?StudyInstanceUIDs=...`), answered with its
    index.html for a signed-in browser and with the sign-in page otherwise."""
    build = _build(settings.viewer_dir)
    if path in ("", "/", "index.html"):
        return _app(request, build, tokens)
    if path == "app-config.js":
        return Response(_APP_CONFIG, media_type="text/javascript; charset=utf-8",
                        headers={**_VIEWER_HEADERS, "Cache-Control": "no-cache"})
    relative = path.removesuffix("/")
    if not ohif.plain_path(relative):  # `..`, `//`, hidden files: never the app either
        raise HTTPException(404, "no such file")
    found = ohif.dist_file(build.root, relative)
    if found is not None:
        return build.response(request, found)
    if ohif.names_a_file(relative):
        raise HTTPException(404, f"the viewer has no file {relative}")
    return _app(request, build, tokens)


def _app(request: Request, build: ViewerBuild, tokens: Tokens) -> Response:
    next_url = _next_url(str(request.url.path) + (f"?{request.url.query}"
                                                  if request.url.query else ""))
    secret = request.cookies.get(SESSION_COOKIE)
    principal = authenticate(request, tokens, secret)[0] if secret else None
    if principal is None:
        return signin_page(next_url, "Your session has ended: sign in again." if secret
                           else "")
    if not principal.may(Action.DICOMWEB_RETRIEVE):
        return signin_page(next_url, f"A token of role {principal.role.value} may not open "
                                     "images: sign in with a viewer's.", 403)
    return build.response(request, build.root / "index.html", cache="no-store")
