"""A running `vna api` (uvicorn, as users run it) and what the tests need around it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import VNA, Backend, free_port, stop_process, vna_env, wait_port

ADMIN_TOKEN = "vna_test-admin-token"
MAX_UPLOAD = 20 << 20  # small (the 413 tests send it), above one S3 part (8 MiB)


@dataclass
class RunningAPI:
    port: int
    backend: Backend
    proc: subprocess.Popen[bytes]
    log: Path
    _clients: list[httpx.Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logtext(self) -> str:
        return self.log.read_text(errors="replace")

    def client(self, token: str | None = ADMIN_TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        self._clients.append(c)
        return c

    def token(self, role: str, departments: list[str] | None = None,
              source: str = "department") -> str:
        r = self.client().post("/api/v1/tokens", json={
            "role": role, "departments": departments or [], "source": source})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    def close(self) -> None:
        for c in self._clients:
            c.close()


def start_api(backend: Backend, **env: str) -> RunningAPI:
    port = free_port()
    full = {**backend.env, "VNA_HTTP_PORT": str(port), "VNA_HTTP_HOST": "127.0.0.1",
            "VNA_ADMIN_TOKEN": ADMIN_TOKEN, "VNA_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
            "VNA_LOG_LEVEL": "INFO", **env}
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    log = backend.data_dir.parent / f"api-{port}.log"
    proc = subprocess.Popen([*VNA, "api"], env=vna_env(full), stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=backend.data_dir.parent,
                            start_new_session=True)
    api = RunningAPI(port, backend, proc, log)
    try:
        wait_port(port, 60)
    except TimeoutError:
        proc.kill()
        raise AssertionError("vna api did not start:\n" + api.logtext()) from None
    return api


def stop_api(api: RunningAPI, sig: int = signal.SIGTERM) -> None:
    api.close()
    stop_process(api.proc, sig)


def upload(client: httpx.Client, content: bytes, metadata: dict[str, Any] | str, *,
           filename: str = "document.bin", content_type: str = "application/octet-stream",
           path: str = "/api/v1/documents") -> httpx.Response:
    meta = metadata if isinstance(metadata, str) else json.dumps(metadata)
    return client.post(path, data={"metadata": meta},
                       files={"file": (filename, content, content_type)})


def archive_state(backend: Backend) -> tuple[int, list[str]]:
    """(document rows, stored document objects and leftovers): 'nothing was stored' means
    both are unchanged."""
    import sqlalchemy as sa

    from storage.index.db import Index

    settings: Any = backend.settings()
    index = Index(settings.resolved_database_url)
    try:
        with index.read_session() as s:
            rows = s.execute(sa.text("SELECT count(*) FROM document")).scalar_one()
    finally:
        index.dispose()
    if settings.storage == "s3":
        from services.runtime import open_store

        store = open_store(settings)
        objects = sorted(o.key for o in store.list_objects("documents/"))
        uploads = [u.key for u in store.partial_writes() if u.key.startswith("documents/")]
        return rows, objects + [f"(unfinished upload) {u}" for u in uploads]
    root = settings.objects_dir
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                   if p.is_file() and (p.parts[len(root.parts)] in ("documents", ".tmp")))
    return rows, files


def wait_for(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)
