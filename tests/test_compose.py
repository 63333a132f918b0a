"""The deployment files agree with the code: docker-compose.yml, Dockerfile, .dockerignore.

No Docker engine is needed: the compose file is read as YAML (with compose's `${VAR:-default}`
interpolation done here, defaults only), and every command it runs is resolved against the
real typer app, every VNA_* variable against the real Settings.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from services.cli import app
from vna.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PYPROJECT = REPO / "pyproject.toml"

REQUIRED_SERVICES = ("postgres", "redis", "minio", "scp", "api", "worker", "beat")
NEEDS_MIGRATION = ("scp", "api", "worker", "beat")

_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>\w+)")


def interpolate(value: Any) -> Any:
    """Compose variable interpolation with an empty environment: defaults are used,
    required variables (`${X:?err}`) get a placeholder, `$$` is a literal `$`."""
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        op, arg = m.group("op"), m.group("arg")
        if op in ("-", ":-"):
            return arg or ""
        if op in ("?", ":?"):
            return f"required-{m.group('name').lower()}"
        return ""

    parts = value.split("$$")
    return "$".join(_VAR.sub(sub, p) for p in parts)


def load_compose() -> dict[str, Any]:
    assert COMPOSE.is_file(), "docker-compose.yml is missing"
    with open(COMPOSE) as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    return load_compose()["services"]


def built_services() -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfile."""
    out = {}
    for name, svc in services().items():
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            context, dockerfile = build, "Dockerfile"
        else:
            context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        if (REPO / context / dockerfile).resolve() == DOCKERFILE.resolve():
            out[name] = svc
    return out


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in interpolate(env).items()}


def command(svc: dict[str, Any]) -> list[str]:
    cmd = interpolate(svc.get("command"))
    if cmd is None:
        return []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


# The click command tree of the typer app. Recent typer versions vendor click
# (typer._click), so groups and errors are recognised by duck typing, not click classes.
CLI = typer.main.get_command(app)


def subcommands(cmd: Any) -> dict[str, Any] | None:
    """The subcommands of a group, None for a leaf command."""
    commands = getattr(cmd, "commands", None)
    return commands if isinstance(commands, dict) else None


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (sub)command of the CLI, groups included: ('db',), ('db', 'upgrade'), ..."""
    out = []
    for name, sub in sorted((subcommands(group) or {}).items()):
        out.append((*prefix, name))
        out += command_paths(sub, (*prefix, name))
    return out


def resolve(argv: list[str]) -> tuple[list[str], Any]:
    """The command `argv` (after `vna`) runs; its arguments and options are parsed for real,
    so an unknown subcommand, option or a badly typed value fails here."""
    cur: Any = CLI
    path: list[str] = []
    rest = list(argv)
    while (children := subcommands(cur)) is not None:
        if not rest:
            raise AssertionError(f"`vna {' '.join(path)}` needs a subcommand")
        name = rest.pop(0)
        sub = children.get(name)
        if sub is None:
            known = ", ".join(sorted(children))
            raise AssertionError(
                f"`vna {' '.join([*path, name])}` is not a command of the vna CLI "
                f"(known here: {known})")
        path.append(name)
        cur = sub
    try:
        cur.make_context(f"vna {' '.join(path)}", rest)
    except Exception as exc:  # click's UsageError / BadParameter (vendored or not)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise AssertionError(f"`vna {' '.join(argv)}`: {message}") from exc
    return path, cur


# -- docker-compose.yml -----------------------------------------------------------------

def test_required_services_exist() -> None:
    missing = [s for s in REQUIRED_SERVICES if s not in services()]
    assert not missing, f"docker-compose.yml lacks services {missing}"


def test_vna_services_are_built_from_the_dockerfile() -> None:
    built = built_services()
    for name in ("scp", "api", "worker", "beat", "migrate"):
        assert name in built, f"service {name} is not built from ./Dockerfile"
    images = {svc.get("image") for svc in built.values()}
    assert len(images) == 1, f"one image for all vna services, not {images}"


@pytest.mark.parametrize("service", sorted(built_services()))
def test_service_command_is_a_real_vna_subcommand(service: str) -> None:
    cmd = command(built_services()[service])
    assert cmd, f"service {service} has no command"
    assert cmd[0] == "vna", f"service {service} runs {cmd[0]!r}, not the vna console script"
    resolve(cmd[1:])


def test_expected_commands() -> None:
    expected = {"scp": ["scp"], "api": ["api"], "worker": ["worker"], "beat": ["beat"],
                "migrate": ["db", "upgrade"]}
    built = built_services()
    for name, path in expected.items():
        cmd = command(built[name])
        assert cmd[1:1 + len(path)] == path, f"service {name} runs {cmd}"


@pytest.mark.parametrize("service", sorted(built_services()))
def test_vna_variables_are_settings_fields(service: str) -> None:
    fields = {"VNA_" + f.upper() for f in Settings.model_fields}
    env = environment(built_services()[service])
    unknown = sorted(k for k in env if k.startswith("VNA_") and k not in fields)
    assert not unknown, f"service {service} sets {unknown}, which vna.settings.Settings lacks"


def test_no_vna_variables_outside_vna_services() -> None:
    fields = {"VNA_" + f.upper() for f in Settings.model_fields}
    for name, svc in services().items():
        unknown = sorted(k for k in environment(svc) if k.startswith("VNA_") and k not in fields)
        assert not unknown, f"service {name} sets {unknown}, which Settings lacks"


@pytest.mark.parametrize("service", sorted(built_services()))
def test_service_environment_is_valid_settings(service: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("VNA_"):
            monkeypatch.delenv(key)
    env = environment(built_services()[service])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.storage == "s3"
    assert settings.s3_endpoint == "minio:9000"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert settings.resolved_broker_url.startswith("redis://redis:6379/")
    assert settings.admin_token, "VNA_ADMIN_TOKEN must come from the environment"
    assert str(settings.data_dir) == "/data"


def test_services_wait_for_the_migration() -> None:
    svcs = services()
    migrate = svcs["migrate"]
    assert migrate.get("restart", "no") == "no", "migrate is a one-shot service"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in NEEDS_MIGRATION:
        dep = svcs[name].get("depends_on") or {}
        assert isinstance(dep, dict) and "migrate" in dep, f"{name} does not wait for migrate"
        assert dep["migrate"]["condition"] == "service_completed_successfully"


def test_backing_services() -> None:
    svcs = services()
    assert str(svcs["postgres"]["image"]).startswith("postgres:16")
    assert "healthcheck" in svcs["postgres"]
    assert str(svcs["redis"]["image"]).startswith("redis:7")
    assert str(svcs["minio"]["image"]).startswith("minio/minio")
    assert command(svcs["minio"])[:2] == ["server", "/data"]
    assert "--console-address" in command(svcs["minio"])
    volumes = load_compose().get("volumes") or {}
    for svc, target in (("postgres", "/var/lib/postgresql/data"), ("minio", "/data")):
        mounts = [str(v) for v in svcs[svc].get("volumes", [])]
        named = [m.split(":")[0] for m in mounts if m.split(":")[1:2] == [target]]
        assert named and named[0] in volumes, f"{svc} keeps {target} in no named volume"


def test_published_ports() -> None:
    svcs = services()

    def published(name: str) -> set[str]:
        out = set()
        for p in svcs[name].get("ports", []):
            if isinstance(p, dict):
                out.add(str(p.get("target")))
            else:
                out.add(str(interpolate(p)).split(":")[-1].split("/")[0])
        return out

    assert "11112" in published("scp")
    assert "8000" in published("api")
    assert environment(svcs["api"]).get("VNA_HTTP_HOST") == "0.0.0.0"


# -- Dockerfile and .dockerignore ---------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), "Dockerfile is missing"
    text = DOCKERFILE.read_text()
    text = re.sub(r"\\\n", " ", text)  # line continuations
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def test_dockerfile_installs_the_package_with_the_vna_script() -> None:
    instrs = dockerfile_instructions()
    assert instrs[0] == ("FROM", "python:3.11-slim") or (
        instrs[0][0] == "FROM" and instrs[0][1].startswith("python:3.11-slim")), instrs[0]
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", runs), "the image must `pip install .`"
    pyproject = tomllib.loads(PYPROJECT.read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts.get("vna") == "services.cli:app", scripts
    import importlib

    module, _, attr = scripts["vna"].partition(":")
    assert getattr(importlib.import_module(module), attr) is app
    # every package pyproject.toml installs is copied into the build
    copied = " ".join(a for i, a in instrs if i in ("COPY", "ADD"))
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = pattern.rstrip("*").split(".")[0]
        assert re.search(rf"(^|\s)\.?/?{re.escape(top)}/?(\s|$)", copied), \
            f"Dockerfile does not copy {top}/"
    assert re.search(r"(^|\s)pyproject\.toml(\s|$)", copied)
    cmd = [a for i, a in instrs if i == "CMD"]
    assert cmd and re.match(r'\[\s*"vna"', cmd[-1]), "the default command should be vna"


def test_dockerfile_runtime_shape() -> None:
    instrs = dockerfile_instructions()
    env = " ".join(a for i, a in instrs if i == "ENV")
    assert re.search(r"(^|\s)VNA_DATA_DIR=/data(\s|$)", env)
    exposed = " ".join(a for i, a in instrs if i == "EXPOSE").split()
    assert "11112" in exposed and "8000" in exposed
    users = [a for i, a in instrs if i == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_keeps_what_the_image_needs() -> None:
    assert DOCKERIGNORE.is_file()
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for needed in ("pyproject.toml", "vna", "services", "storage"):
        hits = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(needed, p)]
        assert not hits, f".dockerignore excludes {needed} ({hits})"
    assert ".env" in patterns, ".env (secrets) must stay out of the build context"
    assert ".venv" in patterns


# -- the CLI itself -----------------------------------------------------------------------

@pytest.mark.parametrize("path", command_paths(CLI), ids=" ".join)
def test_subcommand_help(path: tuple[str, ...]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VNA_")}
    proc = subprocess.run([sys.executable, "-m", "services.cli", *path, "--help"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr or proc.stdout
    assert "Usage" in proc.stdout
