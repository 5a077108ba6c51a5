"""The layers of the station (docs/architecture.md), enforced on every module's imports.

Read with `ast`, type-only imports (under `TYPE_CHECKING`) and imports inside functions
included: a dependency is a dependency. The rules:

- `station.drivers` and `station.catalog` import only themselves (and `station` for its
  version): a driver knows no station, the catalog knows no policy.
- `station.web` imports only itself, `station.api` and `station.errors`: every answer
  goes through the front door, every refusal is mapped by its error class.
- Only `station.cli` (the composition root) imports `station.web`.
- Nothing below the runtime calls back into it: `station.runtime` is imported only by
  `station.cli` and `station.api` (the front door wraps the running station).
- The subsystems below (devices, ingest, store, retention, health, media, forward,
  platform, support, sim) never import the layers above them (api, runtime, status,
  web, cli).
- `drivers` and `web` are no top-level packages any more: everything is `station.*`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

UPPER = ("station.api", "station.runtime", "station.status", "station.web", "station.cli")
SUBSYSTEMS = (
    "station.devices",
    "station.ingest",
    "station.store",
    "station.retention",
    "station.health",
    "station.media",
    "station.forward",
    "station.platform",
    "station.support",
    "station.sim",
)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str) -> Iterator[str]:
    """Every module `path` imports (absolute names; `from x import y` gives x and x.y)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path, top: str = "station") -> list[str]:
    """Each import that breaks a rule, as "importer -> imported (rule)"."""
    found = []
    for path in sorted((root / top).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        me = module_name(path, root)
        for dep in set(imports(path, me)):
            if not within(dep, "station") or dep == "station.__version__":
                continue
            broken = None
            for own in ("station.drivers", "station.catalog"):
                if within(me, own) and not within(dep, own) and dep != "station":
                    broken = f"{own} imports only itself"
            if within(me, "station.web") and not any(
                within(dep, ok) for ok in ("station.web", "station.api", "station.errors")
            ):
                broken = "web imports only the API and the errors"
            if within(dep, "station.web") and not any(
                within(me, ok) for ok in ("station.web", "station.cli")
            ):
                broken = "only the CLI imports web"
            if within(dep, "station.runtime") and not any(
                within(me, ok) for ok in ("station.runtime", "station.cli", "station.api")
            ):
                broken = "nothing below the runtime imports it"
            if any(within(me, s) for s in SUBSYSTEMS) and any(within(dep, u) for u in UPPER):
                broken = "a subsystem imports a layer above it"
            if broken:
                found.append(f"{me} -> {dep} ({broken})")
    return sorted(set(found))


def test_every_import_keeps_to_the_layers() -> None:
    assert violations(REPO) == []


def test_the_rules_see_what_they_forbid(tmp_path: Path) -> None:
    """The same rules over a planted tree: each kind of breach is found."""
    planted = {
        "station/drivers/x.py": "from station.store.disks import Store\n",
        "station/catalog/x.py": "from station.retention import protection\n",
        "station/web/x.py": "from station.catalog import Catalog\n",
        "station/health/x.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from station.runtime import Station\n"
        ),
        "station/ingest/x.py": "def f():\n    from station.web import app\n",
        "station/store/x.py": "from ..status import StatusView\n",
    }
    for rel, text in planted.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path)
    assert {line.split(" -> ")[0] for line in found} == {
        "station.drivers.x",
        "station.catalog.x",
        "station.web.x",
        "station.health.x",
        "station.ingest.x",
        "station.store.x",
    }, found


def test_there_is_one_top_level_package() -> None:
    for old in ("drivers", "web"):
        assert not (REPO / old / "__init__.py").exists(), f"{old}/ is station/{old}/ now"
    text = (REPO / "pyproject.toml").read_text("utf-8")
    assert 'include = ["station*"]' in text
