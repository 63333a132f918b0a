"""requirements.lock agrees with pyproject.toml, and every install goes through it: a
dependency added without `make lock` would be installed at whatever version is newest."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"


def locked() -> dict[str, list[tuple[str, Marker | None]]]:
    """name -> [(version, marker)]: one entry per fork of the universal resolution."""
    out: dict[str, list[tuple[str, Marker | None]]] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line[0] in "# ":
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        out.setdefault(canonicalize_name(req.name), []).append((spec.version, req.marker))
    return out


def test_every_dependency_is_locked_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = locked()
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run `make lock`"
        for version, _ in pins[name]:
            assert req.specifier.contains(version, prereleases=True), (
                f"requirements.lock has {req.name}=={version}, pyproject.toml wants "
                f"{req.specifier}: run `make lock`")


def test_installs_go_through_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^LOCK := requirements\.lock$", makefile, re.M)
    assert re.search(r"^\$\(VENV\)/\.installed: .*\$\(LOCK\)", makefile, re.M)
    assert "pip install -q -c $(LOCK) -e '.[dev]'" in makefile
    assert re.search(r"^lock:", makefile, re.M)
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^COPY .*requirements\.lock", dockerfile, re.M)
    assert "pip install -c requirements.lock ." in dockerfile
