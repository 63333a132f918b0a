"""How `vna api` runs under uvicorn: HTTPS when given a certificate, the proxy headers it
believes, and the connection limits against slow clients (docs/security.md).

uvicorn bounds a request head's size (h11's `max_incomplete_event_size`) and the idle time
between requests (`timeout_keep_alive`), but not the time a head may take: a client that
sends one header byte a second keeps its connection for ever. `GuardedH11Protocol` closes a
connection whose request head is not complete VNA_HTTP_HEADER_TIMEOUT_SECONDS after it opened
or after the previous response.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from vna.settings import Settings


class GuardedH11Protocol(H11Protocol):
    header_timeout = 10.0  # set from the settings by `uvicorn_options`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timeout)

    def _head_timeout(self) -> None:
        # IDLE on their side: no complete request head since the timer was armed.
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection whose request head took over %.0f s",
                             self.header_timeout)
            self.transport.close()


def tls_context_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS options: none without a certificate; otherwise the certificate and
    key, TLS 1.2 at least (uvicorn's default context allows what OpenSSL allows)."""
    if settings.http_tls_cert is None:
        return {}
    if settings.http_tls_key is None:
        raise ValueError("VNA_HTTP_TLS_CERT needs VNA_HTTP_TLS_KEY")
    return {"ssl_certfile": str(settings.http_tls_cert),
            "ssl_keyfile": str(settings.http_tls_key),
            "ssl_version": ssl.PROTOCOL_TLS_SERVER}


class _Config(Config):
    def load(self) -> None:
        super().load()
        if self.ssl is not None:  # TLS 1.2+, whatever the OpenSSL defaults
            self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2


def uvicorn_config(app: Any, settings: Settings, *, log_level: str,
                   graceful_stop: int) -> Config:
    GuardedH11Protocol.header_timeout = settings.http_header_timeout_seconds
    return _Config(
        app, host=settings.http_host, port=settings.http_port, log_level=log_level,
        # The audit middleware writes the access log with route templates: uvicorn's own
        # access log would put patient IDs from URLs into the logs.
        access_log=False, timeout_graceful_shutdown=graceful_stop,
        http=GuardedH11Protocol, ws="none", lifespan="on",
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        timeout_keep_alive=settings.http_keepalive_seconds,
        proxy_headers=True, forwarded_allow_ips=settings.http_forwarded_allow_ips,
        **tls_context_options(settings))


def serve(app: Any, settings: Settings, *, log_level: str, graceful_stop: int) -> None:
    import uvicorn

    uvicorn.Server(uvicorn_config(app, settings, log_level=log_level,
                                  graceful_stop=graceful_stop)).run()


def base_url(settings: Settings, path: str = "") -> str:
    scheme = "https" if settings.http_tls_cert else "http"
    return f"{scheme}://{settings.http_host}:{settings.http_port}{path}"
