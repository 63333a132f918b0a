"""Imports go one way: the edges (`services`) use `storage` and the domain (`vna`); `storage`
uses the domain; the domain uses neither. And a migration, once written, depends on nothing
that may change later.

Read from the source (every import statement, those inside functions too), not from what a
run happens to import.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a file (module `name`, by default
    the one its path in the repository says)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from storage import index` names a module too
                yield node.lineno, f"{module}.{alias.name}"


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


RULES = [
    # (package, what it must not import, why)
    ("vna", ("services", "storage"), "the domain knows no edge and no storage"),
    ("storage", ("services", "vna.settings"),
     "storage takes plain values; the settings are read by services.runtime"),
]


@pytest.mark.parametrize(("package", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_imports_go_one_way(package: str, forbidden: tuple[str, ...], why: str) -> None:
    found = [f"{path.relative_to(REPO)}:{line} imports {module}"
             for path in sources(package) for line, module in imports(path)
             if any(within(module, f) for f in forbidden)]
    assert found == [], f"{why}:\n" + "\n".join(found)


def test_migrations_depend_on_nothing_that_changes() -> None:
    """A migration runs years after it was written: it may use Alembic, SQLAlchemy and the
    standard library, never the live models or domain code (a later change there would
    change what an old migration does)."""
    allowed = ("alembic", "sqlalchemy", "__future__")
    found = []
    for path in sorted((REPO / "storage" / "migrations" / "versions").glob("*.py")):
        for line, module in imports(path):
            top = module.split(".")[0]
            if top not in allowed and top not in sys.stdlib_module_names:
                found.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert found == []


def test_the_checker_sees_late_and_relative_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from services import runtime\n    import storage.index.db\n"
                     "from .. import settings\nfrom .entry import Code\n")
    found = {m for _, m in imports(probe, "vna.documents.probe")}
    assert {"services", "services.runtime", "storage.index.db", "vna.settings",
            "vna.documents.entry"} <= found
