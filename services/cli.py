"""The `vna` command line (typer + rich): an edge, like the DICOM and HTTP services, so it
lives with them and may import every one of them (the domain package `vna` imports none)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vna.settings import Settings, get_settings

if TYPE_CHECKING:
    from storage.index.tokens import Tokens

app = typer.Typer(help="vna: one archive for all images and documents of a region.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="The index database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
token_app = typer.Typer(help="Bearer tokens of the HTTP API.", no_args_is_help=True)
app.add_typer(token_app, name="token")
retention_app = typer.Typer(help="Retention (gallring): delete what the rules let go.",
                            no_args_is_help=True)
app.add_typer(retention_app, name="retention")
fixity_app = typer.Typer(help="Fixity: are the archived bytes still what was archived?",
                         no_args_is_help=True)
app.add_typer(fixity_app, name="fixity")
console = Console(stderr=True)


def _logging(settings: Settings) -> None:
    from services.supervision import configure_logging

    configure_logging(settings.log_level)


def _prepare_data_dir(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from storage.migrate import ensure_current

    ensure_current(settings.resolved_database_url, lock_dir=settings.data_dir)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Create or migrate the index schema (Alembic) to the latest revision."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from storage.migrate import current, upgrade

    upgrade(settings.resolved_database_url, revision, lock_dir=settings.data_dir)
    console.print(f"index at revision {current(settings.resolved_database_url)}")


def _expiry(text: str | None) -> datetime | None:
    from vna.access import InvalidToken, parse_expiry

    if text is None:
        return None
    try:
        return parse_expiry(text, datetime.now(UTC))
    except InvalidToken as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@contextmanager
def _tokens() -> Iterator[Tokens]:
    """The API tokens of this data dir's index, for one command."""
    from services.runtime import open_runtime
    from storage.index.tokens import Tokens

    settings = get_settings()
    _prepare_data_dir(settings)
    with open_runtime(settings) as rt:
        yield Tokens(rt.index)


_EXPIRES_HELP = ("when the token stops working: a lifetime (90d, 12h, 30m, 2w) or an ISO "
                 "8601 time with its zone; default never")


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option(help="admin, uploader, viewer, reviewer or scheduler")],
    department: Annotated[list[str] | None, typer.Option(
        help="limit to this department (practiceSettingCode); repeatable")] = None,
    source: Annotated[str, typer.Option(
        help="department, or patient for a patient portal's uploader")] = "department",
    label: Annotated[str | None, typer.Option(help="what the token is for")] = None,
    expires: Annotated[str | None, typer.Option(help=_EXPIRES_HELP)] = None,
) -> None:
    """Create an API token and print it (once: only its hash is kept)."""
    from pydantic import TypeAdapter, ValidationError

    from vna.access import Role, check_token_request
    from vna.documents.entry import Code, Source

    try:
        the_role, the_source = Role(role), Source(source)
        departments = [TypeAdapter(Code).validate_python(d) for d in department or []]
        check_token_request(the_role, departments, the_source)
    except (ValueError, ValidationError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    expires_at = _expiry(expires)
    with _tokens() as tokens:
        secret, row = tokens.create(the_role, departments, source=the_source, label=label,
                                    created_by="cli", expires_at=expires_at)
    console.print(f"token {row.id}: role {row.role}, departments "
                  f"{', '.join(row.departments) or 'all'}"
                  f"{f', expires {expires_at.isoformat()}' if expires_at else ''}")
    print(secret)


@token_app.command("rotate")
def token_rotate(
    token_id: Annotated[str, typer.Argument(help="the id of the token to replace")],
    expires: Annotated[str | None, typer.Option(help=(
        _EXPIRES_HELP.replace("default never", "default: the old token's lifetime again, "
                              "from now")))] = None,
) -> None:
    """Replace a token by a new one for the same role, departments and source; the old one
    is revoked at once. Prints the new token (once)."""
    from storage.index.tokens import TokenNotRotatable

    expires_at = _expiry(expires)
    with _tokens() as tokens:
        try:
            secret, row = tokens.rotate(token_id, created_by="cli", expires_at=expires_at)
        except TokenNotRotatable as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(1) from None
    console.print(f"token {token_id} revoked, replaced by {row.id}: role {row.role}, "
                  f"departments {', '.join(row.departments) or 'all'}"
                  f"{f', expires {row.expires_at.isoformat()}' if row.expires_at else ''}")
    print(secret)


@token_app.command("list")
def token_list() -> None:
    """The tokens, with their expiry, last use (to within a minute) and rotation."""
    with _tokens() as tokens:
        rows = tokens.list()
    table = Table(title="API tokens")
    for col in ("id", "role", "departments", "label", "created", "expires", "last used",
                "revoked", "replaced by"):
        table.add_column(col)

    def when(at: datetime | None) -> str:
        return at.strftime("%Y-%m-%d %H:%M") if at else "-"

    for r in rows:
        table.add_row(r.id, r.role, ", ".join(r.departments or []) or "all", r.label or "",
                      when(r.created_at), when(r.expires_at), when(r.last_used_at),
                      when(r.revoked_at), r.replaced_by or "")
    console.print(table)


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="list what would be deleted; delete nothing")] = False,
) -> None:
    """Apply the retention rules (VNA_RETENTION_RULES): delete the index entries and objects
    they select, each with an audit record. Run it with --dry-run first."""
    settings = get_settings()
    _prepare_data_dir(settings)
    from services.runtime import open_runtime
    from storage import retention
    from vna.retention import load_rules

    try:
        rules = load_rules(settings.retention_rules_path)
    except ValueError as exc:
        console.print(f"[red]{settings.retention_rules_path}: {exc}[/red]")
        raise typer.Exit(2) from None
    if not rules:
        console.print(f"no retention rules in {settings.retention_rules_path}: nothing to do")
        return
    with open_runtime(settings) as rt:
        candidates = retention.plan(rt.index, rules)
        table = Table(title="vna retention" + (" (dry run: nothing deleted)" if dry_run
                                               else ""))
        for col in ("rule", "what", "selected", "oldest"):
            table.add_column(col)
        for rule in rules:
            mine = [c for c in candidates if c.rule == rule.name]
            oldest = min((c.when for c in mine), default=None)
            table.add_row(rule.name, rule.target, str(len(mine)),
                          oldest.date().isoformat() if oldest else "-")
        console.print(table)
        if not dry_run and candidates:
            done = retention.apply(rt.index, rt.store, candidates)
            console.print(f"deleted {done} of {len(candidates)} (each recorded in the audit "
                          "trail)")


@fixity_app.command("run")
def fixity_run(
    sample: Annotated[int, typer.Option(help="instances and documents to re-hash, each")] = 100,
) -> None:
    """Re-hash a random sample of objects against the index; exit 1 on any mismatch."""
    settings = get_settings()
    _prepare_data_dir(settings)
    from services.runtime import open_runtime
    from storage.fixity import run_fixity

    with open_runtime(settings) as rt:
        result = run_fixity(rt.index, rt.store, sample=sample)
    console.print(f"{result.checked} objects re-hashed, {len(result.mismatches)} mismatches")
    for m in result.mismatches:
        state = "missing" if m["found"] is None else "content changed"
        console.print(f"[red]{m['kind']} {m['subject']}[/red] ({m['key']}): {state}")
    if result.mismatches:
        raise typer.Exit(1)


@app.command()
def check(
    repair: Annotated[bool, typer.Option(
        "--repair", help="delete objects without index rows, discard unfinished writes")] = False,
    hashes: Annotated[bool, typer.Option(
        "--hashes/--no-hashes", help="re-hash every object (all bytes read) or only see "
                                     "that it is there")] = True,
    grace_minutes: Annotated[float, typer.Option(
        help="objects without a row younger than this are left alone (a store in "
             "flight writes its row a moment after its object)")] = 60,
    upload_grace_hours: Annotated[float, typer.Option(
        help="unfinished uploads younger than this are left alone (a large upload on a "
             "slow link takes hours)")] = 24,
) -> None:
    """Check that index and object store agree: objects without index rows, unfinished
    uploads, index rows whose object is missing or changed. Exit 1 if anything was found
    (with --repair, mended or not)."""
    from datetime import timedelta

    settings = get_settings()
    _prepare_data_dir(settings)
    from services.runtime import open_runtime
    from storage.consistency import check as run_check

    with open_runtime(settings) as rt, console.status("checking index and object store"):
        report = run_check(rt.index, rt.store, repair=repair, hashes=hashes,
                           grace=timedelta(minutes=grace_minutes),
                           partial_grace=timedelta(hours=upload_grace_hours))
    table = Table(title="vna check" + (" (repair)" if repair else ""))
    for col in ("finding", "count", "mended"):
        table.add_column(col, justify="left" if col == "finding" else "right")
    kinds: Counter[str] = Counter(f.kind for f in report.findings)
    mended: Counter[str] = Counter(f.kind for f in report.findings if f.mended)
    for kind in ("orphan_object", "partial_write", "missing_object", "hash_mismatch"):
        table.add_row(kind.replace("_", " "), str(kinds[kind]), str(mended[kind]))
    console.print(table)
    console.print(f"{report.rows} index rows and {report.objects} objects checked"
                  f"{' (hashes re-computed)' if hashes else ''}")
    for f in report.findings[:50]:
        state = "[green]mended[/green]" if f.mended else "[red]not mended[/red]"
        console.print(f"{f.kind} {f.key}{f' ({f.subject})' if f.subject else ''}: {state}")
    if len(report.findings) > 50:
        console.print(f"... and {len(report.findings) - 50} more")
    if any(f.kind in ("missing_object", "hash_mismatch") for f in report.findings):
        console.print("[red]Missing or changed objects cannot be mended here: restore them "
                      "from a backup (the index keeps their SHA-256).[/red]")
    if report.findings:
        raise typer.Exit(1)


@app.command()
def scp() -> None:
    """Run the DICOM service (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET)."""
    settings = get_settings()
    _logging(settings)
    _prepare_data_dir(settings)
    from services.dicom_scp.server import serve

    raise typer.Exit(serve(settings))


@app.command()
def api() -> None:
    """Run the HTTP service (FastAPI under uvicorn)."""
    settings = get_settings()
    _logging(settings)
    _prepare_data_dir(settings)
    from services.supervision import wait_for_free_port
    from services.xds_api.app import create_app
    from services.xds_api.serve import serve

    if not wait_for_free_port(settings.http_host, settings.http_port, "HTTP",
                              settings.port_wait_seconds):
        console.print(f"[red]HTTP port {settings.http_host}:{settings.http_port} is in use "
                      "by another process; not starting[/red]")
        raise typer.Exit(1)
    if settings.http_tls_cert is not None and settings.http_tls_key is None:
        console.print("[red]VNA_HTTP_TLS_CERT needs VNA_HTTP_TLS_KEY[/red]")
        raise typer.Exit(2)
    # A stop waits at most GRACEFUL_STOP_SECONDS for requests in flight (an upload cut off
    # leaves nothing); TLS, proxy headers and connection limits: services/xds_api/serve.py.
    serve(create_app(settings), settings, log_level=settings.log_level.lower(),
          graceful_stop=GRACEFUL_STOP_SECONDS)


@app.command()
def hl7() -> None:
    """Run the HL7 v2 listener (MLLP on VNA_HL7_PORT): orders, patient updates, reports."""
    settings = get_settings()
    _logging(settings)
    _prepare_data_dir(settings)
    from services.hl7.server import serve

    raise typer.Exit(serve(settings))


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="worker processes")] = 1,
    beat: Annotated[bool, typer.Option(
        help="also run the scheduler in this worker (one machine; `vna up` does)")] = False,
) -> None:
    """Run a Celery worker on VNA_BROKER_URL (serverless filesystem transport by default)."""
    settings = get_settings()
    _prepare_data_dir(settings)
    import warnings

    from celery.exceptions import SecurityWarning

    from services.worker.app import make_celery

    # Celery warns of a worker run as root whatever it accepts; the danger it means, pickled
    # messages run as root, cannot arise: this worker accepts JSON only (Celery refuses to
    # start as root if pickle is accepted). The image runs it as a user of its own.
    warnings.filterwarnings("ignore", "You're running the worker with superuser privileges",
                            SecurityWarning)
    celery = make_celery(settings)
    # -q: no banner (the config and task list); `vna up` prints where things are.
    argv = ["-q", "worker", "--loglevel", settings.log_level.upper(), "--concurrency",
            str(concurrency), "--without-gossip", "--without-mingle", "--pool", "prefork"]
    if beat:
        argv += ["--beat", "--schedule", str(settings.data_dir / "celerybeat-schedule")]
    celery.worker_main(argv)


@app.command()
def beat() -> None:
    """Run the Celery beat scheduler (periodic tasks: draining the outbox, daily fixity)."""
    settings = get_settings()
    _prepare_data_dir(settings)
    from services.worker.app import make_celery

    celery = make_celery(settings)
    schedule = settings.data_dir / "celerybeat-schedule"
    celery.start(["-q", "beat", "--loglevel", settings.log_level.upper(), "--schedule",
                  str(schedule)])


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files and folders", exists=True)],
    batch: Annotated[int, typer.Option(help="instances per fsync/commit")] = 200,
) -> None:
    """Bulk-import DICOM files from a legacy archive through the C-STORE ingest path.

    A file is reported imported only once object and index entry are durable. Exits 1
    when any file was refused.
    """
    settings = get_settings()
    _prepare_data_dir(settings)
    from services.runtime import open_runtime
    from storage.archive import iter_dicom_files

    files = list(iter_dicom_files(paths))
    runtime = open_runtime(settings)
    archive = runtime.archive
    counts: Counter[str] = Counter()
    refused: list[tuple[Path, str]] = []
    nbytes = 0
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]import"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("import", total=len(files), rate="")
        for i in range(0, len(files), batch):
            chunk = files[i:i + batch]
            for path, res in zip(chunk, archive.store_files(chunk, source_aet="IMPORT"),
                                 strict=True):
                counts[res.outcome] += 1
                nbytes += res.size if res.ok else 0
                if not res.ok:
                    refused.append((path, res.reason or res.outcome))
            elapsed = time.perf_counter() - t0
            progress.update(task, advance=len(chunk),
                            rate=f"{(i + len(chunk)) / max(elapsed, 1e-9):.0f} files/s")
    elapsed = time.perf_counter() - t0
    runtime.close()
    table = Table(title="vna import")
    table.add_column("result")
    table.add_column("files", justify="right")
    table.add_row("imported", str(counts["stored"]))
    table.add_row("duplicates (already archived)", str(counts["duplicate"]))
    table.add_row("refused", str(len(refused)))
    console.print(table)
    console.print(f"{len(files)} files, {nbytes / 1e6:.1f} MB in {elapsed:.1f} s "
                  f"({len(files) / max(elapsed, 1e-9):.0f} files/s)")
    for path, reason in refused[:50]:
        console.print(f"[red]refused[/red] {path}: {reason}")
    if len(refused) > 50:
        console.print(f"... and {len(refused) - 50} more refused")
    if refused:
        raise typer.Exit(1)


GRACEFUL_STOP_SECONDS = 10


def _wait_port(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


@app.command()
def up() -> None:
    """Run the whole archive on this machine: DICOM service, HTTP service, a worker and
    the HL7 listener (unless VNA_HL7_PORT is 0).

    Embedded defaults: SQLite index and files under VNA_DATA_DIR, a serverless broker.
    Ctrl-C stops everything.
    """
    settings = get_settings()
    _logging(settings)
    _prepare_data_dir(settings)
    from services.supervision import child_of_this_process
    from services.xds_api.security import ensure_admin_token
    from services.xds_api.serve import base_url

    token, created = ensure_admin_token(settings)
    cmd = [sys.executable, "-m", "services.cli"]
    # Own sessions (Ctrl-C at the terminal reaches this process, which stops them in
    # order); each dies with this process however it dies (services.supervision).
    services = [("scp", ["scp"]), ("api", ["api"]), ("worker", ["worker", "--beat"])]
    if settings.hl7_port:
        services.append(("hl7", ["hl7"]))
    children = {
        name: subprocess.Popen([*cmd, *args], start_new_session=True,
                               preexec_fn=child_of_this_process())
        for name, args in services
    }
    dicom_ports = [p for p in (settings.dicom_port, settings.dicom_tls_port) if p]
    ok_dicom = bool(dicom_ports) and all(_wait_port(settings.dicom_host, p, 60)
                                         for p in dicom_ports)
    ok_http = _wait_port(settings.http_host, settings.http_port, 60)
    ok_hl7 = not settings.hl7_port or _wait_port(settings.hl7_host, settings.hl7_port, 60)
    console.print(f"[bold]vna is up[/bold] (data in {settings.data_dir.resolve()})")
    ports = ", ".join([*([str(settings.dicom_port)] if settings.dicom_port else []),
                       *([f"{settings.dicom_tls_port} (TLS)"] if settings.dicom_tls_port else [])])
    console.print(f"  DICOM  {settings.dicom_aet}@{settings.dicom_host}:{ports}"
                  f"{'' if ok_dicom else '  [red](not answering)[/red]'}")
    console.print(f"  HTTP   {base_url(settings, '/health')}"
                  f"{'' if ok_http else '  [red](not answering)[/red]'}")
    if settings.viewer_dir:
        console.print(f"  viewer {base_url(settings, '/viewer')}")
    if settings.hl7_port:
        console.print(f"  HL7    mllp://{settings.hl7_host}:{settings.hl7_port}"
                      f"{'' if ok_hl7 else '  [red](not answering)[/red]'}")
    console.print(f"  worker celery on {settings.resolved_broker_url.split('://')[0]}://")
    if created:
        console.print(f"  admin token (printed once): [bold]{token}[/bold]")
    else:
        console.print(f"  admin token: in {settings.data_dir.resolve() / 'admin-token'}")
    console.print("Ctrl-C stops all.")

    stopping = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    rc = 0
    while not stopping:
        time.sleep(0.3)
        for name, proc in children.items():
            if proc.poll() is not None:
                console.print(f"[red]{name} exited with {proc.returncode}; stopping[/red]")
                stopping, rc = True, 1
                break
    for name, proc in children.items():
        if proc.poll() is None:
            # The Celery worker stops its pool and beat itself; a SIGTERM of their own
            # would make it report the pool process as failed.
            if name == "worker":
                os.kill(proc.pid, signal.SIGTERM)
            else:
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in children.values():
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    console.print("vna stopped")
    raise typer.Exit(rc)


if __name__ == "__main__":
    app()
