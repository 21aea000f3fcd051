"""The Lua scripts in kontext_batch/coord/lua/: each is loaded by a module, each one loaded exists, none
is kept inline, and the wheel ships them (read from the sources and pyproject.toml; nothing is built)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from kontext_batch.coord.redisio import lua

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kontext_batch"
LUA_DIR = PACKAGE / "coord" / "lua"


def _loads() -> dict[str, list[str]]:
    """Script name -> the modules that load it, from every ``lua(...)`` call in the package."""
    out: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name != "lua":
                continue
            where = str(path.relative_to(ROOT))
            assert len(node.args) == 1, where
            arg = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
            assert isinstance(arg, str), f"{where}: lua() takes a literal name, so this test can see it"
            out.setdefault(arg, []).append(where)
    return out


def test_every_script_file_is_loaded_and_every_loaded_script_exists() -> None:
    files = {p.name for p in LUA_DIR.glob("*.lua")}
    loaded = _loads()
    assert files, "no Lua scripts found"
    assert sorted(files - set(loaded)) == [], "script files no module loads"
    assert sorted(set(loaded) - files) == [], "scripts loaded but missing from coord/lua/"


def test_every_script_has_a_body_beyond_its_header() -> None:
    for path in sorted(LUA_DIR.glob("*.lua")):
        text = path.read_text(encoding="utf-8")
        assert text.startswith("-- "), f"{path.name}: no header saying what KEYS and ARGV hold"
        body = lua(path.name)
        assert body.strip(), path.name
        assert not body.startswith("--"), path.name


def test_no_module_keeps_a_script_inline() -> None:
    inline = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "redis.call(" in node.value
    ]
    assert inline == [], "Lua belongs in kontext_batch/coord/lua/, loaded with lua()"


def test_the_wheel_ships_the_scripts() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "coord/lua/*.lua" in config["tool"]["setuptools"]["package-data"]["kontext_batch"]
