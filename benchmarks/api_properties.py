"""Property-based tests of the HTTP API: schemathesis against `/openapi.json` of a running
`vna api`, every operation with every role's token (admin, uploader, viewer, reviewer,
scheduler, and none).

For every generated request (positive and negative data, schemathesis's generators):
- no 5xx;
- every error (4xx) is JSON `{"detail": ...}` (a STOW-RS answer is DICOM JSON, by the
  standard), with the status the role calls for: a request without a token is 401 (or a
  400/413/422 about its body, which is read before the token is looked at); a role the
  route's `Action` does not allow never gets a 2xx (`vna/access.ALLOWED_ROLES`, each route's
  action read from its `authorize()` dependency, so a new route is covered by itself);
- a refused request (4xx) changes nothing: every index table but the audit trail (and a
  token's `last_used_at`) and the object store are the same before and after it.

The archive is seeded first (a token per role, a document, a worklist item), so that some
generated requests reach real rows. One `vna api` on files + SQLite on a fresh data dir.

    .venv/bin/python benchmarks/api_properties.py                  # ~10 min, 25 examples
    .venv/bin/python benchmarks/api_properties.py --max-examples 3 --seconds 60   # the suite's

Exit 1 on any failure, each printed with a curl line to reproduce it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from benchmarks.servers import VnaApiTarget, cleanup_on_exit, make_tempdir  # noqa: E402

ROLES = ("admin", "uploader", "viewer", "reviewer", "scheduler", "none")
# Generated for every operation but these: the server's own, no patient data, no token.
OPEN = {("GET", "/health")}
# The audit trail grows with every request, refused ones included; a token's last use is
# noted at most once a minute: neither is a change "made by" a refused request.
IGNORED_TABLES = {"audit_event", "alembic_version"}
IGNORED_COLUMNS = {("api_token", "last_used_at")}
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]"
       b"/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


def route_actions() -> dict[tuple[str, str], str | None]:
    """(METHOD, path template) -> the `Action` its `authorize()` declares (None: no token
    needed or checked otherwise, as the session routes)."""
    from services.xds_api import (
        admin,
        dashboard,
        dicomweb,
        documents,
        hl7,
        operations,
        stats,
        viewer,
        worklist,
    )
    from vna.access import Action

    def action_of(dep: Any) -> Action | None:
        for cell in getattr(dep.call, "__closure__", None) or ():
            if isinstance(cell.cell_contents, Action):
                return cell.cell_contents
        for sub in dep.dependencies:
            found = action_of(sub)
            if found:
                return found
        return None

    out: dict[tuple[str, str], str | None] = {}
    for router in (documents.router, admin.router, stats.router, operations.router,
                   dashboard.router, *dicomweb.ROUTERS, viewer.router, hl7.router,
                   worklist.router):
        for route in router.routes:
            dependant = getattr(route, "dependant", None)
            if dependant is None:
                continue
            action = action_of(dependant)
            path = re.sub(r"\{(\w+):path\}", r"{\1}", route.path)  # as OpenAPI writes it
            for method in getattr(route, "methods", ()):
                out[(method, path)] = action.value if action else None
    return out


def allowed(action: str | None, role: str) -> bool:
    from vna.access import ALLOWED_ROLES, Action, Role

    if role == "none":
        return action is None
    if action is None:
        return True
    return Role(role) in ALLOWED_ROLES[Action(action)]


class Snapshot:
    """A digest of the index (every table but the ignored, row by row) and the object
    store's file names and sizes: equal digests, nothing changed."""

    def __init__(self, data_dir: Path) -> None:
        self.db = data_dir / "index.sqlite3"
        self.objects = data_dir / "objects"

    def take(self) -> dict[str, str]:
        out: dict[str, str] = {}
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)) as c:
            tables = [r[0] for r in c.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE "
                "'sqlite_%'")]
            for table in tables:
                if table in IGNORED_TABLES:
                    continue
                cur = c.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (names from the db)
                cols = [d[0] for d in cur.description]
                keep = [i for i, col in enumerate(cols) if (table, col) not in IGNORED_COLUMNS]
                rows = sorted(repr(tuple(row[i] for i in keep)) for row in cur)
                out[table] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        files = sorted(f"{p.relative_to(self.objects)}:{p.stat().st_size}"
                       for p in self.objects.rglob("*") if p.is_file()) \
            if self.objects.exists() else []
        out["(objects)"] = hashlib.sha256("\n".join(files).encode()).hexdigest()
        return out


@dataclass
class Failure:
    role: str
    operation: str
    problem: str
    status: int
    body: str
    curl: str


@dataclass
class Tally:
    requests: int = 0
    refused: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    seen: set[tuple[str, str, str]] = field(default_factory=set)


def check(role: str, op_key: tuple[str, str], action: str | None, response: Any,
          changed: list[str] | None) -> str | None:
    """What is wrong with this answer, or None."""
    status = response.status_code
    method, path = op_key
    if status >= 500:
        return f"a server error ({status})"
    if status == 400 and _not_http(response):
        return None  # bytes that are not an HTTP request: uvicorn's parser refuses them
    if status >= 400:
        ctype = (response.headers.get("content-type") or [""])[0]
        stow = method == "POST" and path.startswith("/dicomweb/studies") and \
            ctype.startswith("application/dicom+json")
        if not stow:
            if not ctype.startswith("application/json"):
                return f"an error that is not JSON ({ctype or 'no content-type'})"
            try:
                body = response.json()
            except ValueError:
                return "an error whose body is not JSON"
            if not isinstance(body, dict) or "detail" not in body:
                return "an error without a detail"
        if changed:
            return f"a refused request changed {', '.join(changed)}"
    if role == "none" and op_key not in OPEN and action is not None:
        if status == 404 and _router_404(response):
            return None  # a path no route matches (a newline in a {path}): nothing reached
        if status not in (401, 400, 413, 422):
            return f"no token, yet {status} (401 expected)"
    if 200 <= status < 300 and not allowed(action, role):
        return f"role {role} may not {action}, yet {status}"
    return None


def _not_http(response: Any) -> bool:
    """uvicorn's own answer to a request its HTTP parser (h11) cannot read (a header
    schemathesis made up, such as `content-length: :`): it never reaches the app, so it is
    not the API's error to shape."""
    return bool(response.content == b"Invalid HTTP request received.")


def _router_404(response: Any) -> bool:
    try:
        return bool(response.json() == {"detail": "Not Found"})
    except ValueError:
        return False


def seed(url: str, admin: str) -> dict[str, str]:
    """A token per role and a little data for generated requests to find."""
    c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=60)
    tokens = {"none": ""}
    for role in ROLES[:-1]:
        r = c.post("/api/v1/tokens", json={"role": role, "label": f"fuzz {role}"})
        r.raise_for_status()
        tokens[role] = r.json()["token"]
    meta = {"patientId": "191212121212", "classCode": "report", "practiceSettingCode": "lung",
            "title": "seed"}
    c.post("/api/v1/documents", data={"metadata": json.dumps(meta)},
           files={"file": ("seed.pdf", PDF, "application/pdf")}).raise_for_status()
    c.post("/api/v1/worklist", json={
        "patientId": "191212121212", "patientName": "Seed^Patient", "modality": "CT",
        "scheduledStationAETitle": "CT01", "scheduledStart": "2030-01-01T08:00:00Z",
        "accessionNumber": "SEED1", "department": "lung"})  # best effort: shape may differ
    return tokens


def _register_serializers() -> None:
    """STOW-RS bodies (multipart/related) go out as generated bytes: the server must refuse
    what is not a valid multipart body with a clear error."""
    import schemathesis

    @schemathesis.serializer("multipart/related", "application/dicom")
    def _raw(_ctx: Any, value: Any) -> dict[str, Any]:
        if isinstance(value, bytes):
            return {"data": value}
        return {"data": (value if isinstance(value, str) else json.dumps(value)).encode()}


def run(url: str, data_dir: Path, tokens: dict[str, str], *, max_examples: int,
        seconds: float, roles: tuple[str, ...], log: Callable[[str], None]) -> Tally:
    import schemathesis

    _register_serializers()
    actions = route_actions()
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    snap = Snapshot(data_dir)
    tally = Tally()
    deadline = time.monotonic() + seconds
    per_pair = seconds / max(1, len(operations) * len(roles))
    for role in roles:
        headers = {"Authorization": f"Bearer {tokens[role]}"} if tokens[role] else {}
        for op in operations:
            if time.monotonic() > deadline:
                log(f"time is up ({seconds:.0f} s): stopped at {role} {op.label}")
                return tally
            key = (op.method.upper(), op.path)
            if key not in actions:
                tally.failures.append(Failure(role, op.label, "a route that the property "
                                              "test cannot map to an Action", 0, "", ""))
                continue
            exercise(op, role, headers, key, actions[key],
                     time.monotonic() + max(per_pair * 3, 1.0), url=url, snap=snap,
                     tally=tally, max_examples=max_examples)
    return tally


def exercise(op: Any, role: str, headers: dict[str, str], key: tuple[str, str],
             action: str | None, pair_deadline: float, *, url: str, snap: Snapshot,
             tally: Tally, max_examples: int) -> None:
    """`max_examples` generated requests (positive and negative) of one operation with one
    role's token, each checked; failures go into `tally`, never raised."""
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode

    before: list[dict[str, str]] = [snap.take()]

    @settings(max_examples=max_examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(GenerationMode.POSITIVE)
           | op.as_strategy(GenerationMode.NEGATIVE))
    def one(case: Any) -> None:
        if time.monotonic() > pair_deadline:
            return
        # The role's token only: none that the generator made up.
        case.headers = {k: v for k, v in (case.headers or {}).items()
                        if k.lower() not in ("authorization", "cookie")}
        case.cookies = {}
        try:
            response = case.call(base_url=url, headers=headers, timeout=30)
        except Exception as exc:
            tally.failures.append(Failure(role, op.label, f"no answer: {exc!r}"[:300],
                                          0, "", case.as_curl_command(headers)))
            return
        tally.requests += 1
        tally.by_status[response.status_code] = \
            tally.by_status.get(response.status_code, 0) + 1
        changed = None
        if response.status_code >= 400:
            tally.refused += 1
            after = snap.take()
            changed = [t for t in after if after[t] != before[0].get(t)]
            before[0] = after
        else:
            before[0] = snap.take()
        problem = check(role, key, action, response, changed)
        if problem:
            sig = (role, op.label, problem.split("(")[0])
            if sig not in tally.seen:
                tally.seen.add(sig)
                tally.failures.append(Failure(role, op.label, problem,
                                              response.status_code,
                                              response.text[:300],
                                              case.as_curl_command(headers)))

    try:
        one()
    except Exception as exc:  # a generator that cannot make a case: report, go on
        if "Unsatisfiable" not in type(exc).__name__:
            tally.failures.append(Failure(role, op.label,
                                          f"generation failed: {exc!r}"[:300], 0, "",
                                          ""))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--max-examples", type=int, default=25,
                    help="generated requests per operation and role")
    ap.add_argument("--seconds", type=float, default=1200, help="time budget in all")
    ap.add_argument("--roles", default=",".join(ROLES))
    ap.add_argument("--workdir", type=Path, default=REPO / ".bench-work")
    ap.add_argument("--json", type=Path, help="write the tally here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    roles = tuple(r for r in args.roles.split(",") if r)
    args.workdir.mkdir(parents=True, exist_ok=True)
    with cleanup_on_exit():
        tmp = make_tempdir(args.workdir, "api-properties-")
        target = VnaApiTarget(tmp, data_dir=tmp / "vna-data", extra_env={
            # Every request comes from 127.0.0.1: no failed-attempt limit in the way.
            "VNA_HTTP_AUTH_FAILURES": "1000000", "VNA_LOG_LEVEL": "WARNING",
            "VNA_HL7_PORT": "0"})
        with target:
            tokens = seed(target.url, target.token)
            started = time.monotonic()
            tally = run(target.url, target.data_dir or tmp, tokens,
                        max_examples=args.max_examples, seconds=args.seconds, roles=roles,
                        log=lambda m: print(m, file=sys.stderr))
            elapsed = time.monotonic() - started
    print(f"api properties: {tally.requests} requests in {elapsed:.0f} s over "
          f"{len(roles)} roles; {tally.refused} refused; statuses "
          f"{dict(sorted(tally.by_status.items()))}")
    for f in tally.failures:
        print(f"FAIL {f.role:9} {f.operation}: {f.problem}\n    {f.curl}\n    -> {f.status} "
              f"{f.body}")
    print(f"{len(tally.failures)} failures")
    if args.json:
        args.json.write_text(json.dumps({
            "requests": tally.requests, "refused": tally.refused, "seconds": elapsed,
            "by_status": tally.by_status,
            "failures": [f.__dict__ for f in tally.failures]}, indent=2))
    return 1 if tally.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

