"""The layering rules of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("abplatform", "strategies", "simulator", "reports")
PLUG_INS = ("strategies", "simulator", "reports")
COMPOSITION_ROOTS = ("abplatform/cli/", "abplatform/api/")
MAX_LINES = 600
LONG_REASON = "longer than 600 lines because"


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_never_imports_plug_ins_simulator_or_reports() -> None:
    offenders = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith("abplatform/") or rel.startswith(COMPOSITION_ROOTS):
            continue
        wrong = _imported(path) & set(PLUG_INS)
        if wrong:
            offenders.append(f"{rel} imports {', '.join(sorted(wrong))}")
    assert not offenders


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_has_a_docstring_and_a_reason_if_long(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    docstring = ast.get_docstring(ast.parse(source)) or ""
    if path.name != "__init__.py" or source.strip():
        assert docstring, "every module starts with a one-line docstring saying what it is for"
    lines = source.count("\n")
    if lines > MAX_LINES:
        assert LONG_REASON in docstring.lower(), (
            f"{lines} lines: split it, or say in its docstring why it is "
            f"'{LONG_REASON} ...' one job"
        )
