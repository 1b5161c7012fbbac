"""What ships stays apart from what does not: services/ never imports tools/ or tests/, and the
search image holds every module the search service, the importer and the upgrade command import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.dockerfiles import copied_sources

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
    copied = copied_sources((ROOT / "deploy" / "docker" / "search.Dockerfile").read_text())
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


def _package_modules(package: str) -> dict[str, Path]:
    root = ROOT / package
    found = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        found[".".join(parts)] = path
    return found


def test_no_import_cycle_in_services_or_tools():
    modules = {**_package_modules("services"), **_package_modules("tools")}
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for imported in imported_modules(path):
            # "from tools.loadtest import ghz" names the module tools.loadtest.ghz
            target = imported if imported in modules else imported.rpartition(".")[0]
            if target in modules and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_module_of_the_search_service_is_over_300_lines():
    for path in (SERVICES / "search").glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines <= 300, f"{path.relative_to(ROOT)} has {lines} lines: split it along a seam"


def test_the_unit_layer_never_imports_the_launcher_or_the_stack():
    probe = ("import sys, pytest\n"
             "pytest.main(['-q', '--co', '-p', 'no:cacheprovider', 'tests/unit'])\n"
             "print('LOADED', sorted(m for m in sys.modules if m.startswith(('tools.stack', 'tools.eval.run'))))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "LOADED []" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
