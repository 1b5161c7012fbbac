"""What ships stays apart from what does not: services/ never imports tools/ or tests/, and the
search image holds every module the search service, the importer and the upgrade command import."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

SERVICES = ROOT / "services"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_shipped_code_never_imports_tools_or_tests():
    for path in [*SERVICES.rglob("*.py"), *(ROOT / "model_repository").rglob("*.py")]:
        offending = {m for m in imported_modules(path) if m.split(".")[0] in ("tools", "tests")}
        assert not offending, f"{path.relative_to(ROOT)} imports {sorted(offending)}"


def test_the_search_image_copies_every_module_the_service_imports():
    dockerfile = (ROOT / "deploy" / "docker" / "search.Dockerfile").read_text().replace("\\\n", " ")
    copied = [src for line in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M) for src in line.split()]
    todo, seen = [SERVICES / "search" / "server.py", SERVICES / "importer.py", SERVICES / "catalog_upgrade.py"], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            target = module_file(name) if name.startswith("services") else None
            if target is not None:
                todo.append(target)
    for path in seen:
        rel = path.relative_to(ROOT).as_posix()
        assert any(rel == src or rel.startswith(src.rstrip("/") + "/") for src in copied), \
            f"{rel} is imported by the search service but not copied into its image"
    assert not any(src.startswith("tools") or src == "services" for src in copied)
