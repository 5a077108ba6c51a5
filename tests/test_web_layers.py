"""The web layer's one front door: web/ imports nothing of the station but its API and
its errors (station.api, station.errors), at the top of a module or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "web"
ALLOWED = {"station.api", "station.errors"}


def station_imports(path: Path) -> list[str]:
    """`module:line name` for every station module `path` imports (any form, any depth)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "station":  # from station import x: x is the module
                names = [f"station.{a.name}" for a in node.names]
            else:
                names = [node.module]
        for name in names:
            if (name == "station" or name.startswith("station.")) and name not in ALLOWED:
                found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_web_imports_only_the_api_and_the_errors() -> None:
    modules = sorted(WEB.rglob("*.py"))
    assert len(modules) >= 8, modules  # the walk found the package
    offenders = [hit for p in modules for hit in station_imports(p)]
    assert not offenders, f"web/ goes round station.api: {offenders}"


def test_the_check_sees_every_form_of_import(tmp_path: Path) -> None:
    """The checker itself: each way of importing a station module is caught."""
    src = tmp_path / "m.py"
    src.write_text(
        "import station.catalog\n"
        "from station import accounts\n"
        "from station.daemon import Station\n"
        "def f():\n    from station.search import FileQuery\n"
        "from station.api import StationAPI\n"
        "from station import errors\n"
    )
    assert [h.split(" ")[1] for h in station_imports(src)] == [
        "station.catalog",
        "station.accounts",
        "station.daemon",
        "station.search",
    ]
