"""ARCHITECTURE.md invariant 1: imagebridge.ehr and imagebridge.imaging never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "imagebridge"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("package", "forbidden"), [("ehr", "imaging"), ("imaging", "ehr")])
def test_services_do_not_import_each_other(package: str, forbidden: str) -> None:
    offenders = {
        f"{path.relative_to(SRC)} imports {name}"
        for path in (SRC / package).rglob("*.py")
        for name in imported_modules(path)
        if name == f"imagebridge.{forbidden}" or name.startswith(f"imagebridge.{forbidden}.")
    }
    assert not offenders, offenders


def test_common_knows_neither_service() -> None:
    offenders = {
        f"{path.relative_to(SRC)} imports {name}"
        for path in (SRC / "common").rglob("*.py")
        for name in imported_modules(path)
        if name.startswith(("imagebridge.ehr", "imagebridge.imaging", "imagebridge.apps"))
    }
    assert not offenders, offenders


def test_no_relative_imports_hide_a_crossing() -> None:
    relative = {
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    }
    assert not relative, f"use absolute imports: {relative}"
