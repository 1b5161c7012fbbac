"""The public API stays lint-clean and compatible with its last release (buf, installed by
`make proto-check` from the @bufbuild/buf npm package)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import BUILD, ROOT, require

BUF = BUILD / "npm" / "node_modules" / ".bin" / "buf"
RELEASED = ROOT / "proto" / "releases" / "visualsearch-v1-0.1.0.binpb"


@pytest.fixture(scope="module")
def buf() -> str:
    return require(BUF, "buf", "run `make proto-check` (needs npm)")


def test_the_api_is_lint_clean_and_compatible_with_its_last_release(buf):
    for args in (["lint", "proto"], ["breaking", "proto", "--against", str(RELEASED)]):
        result = subprocess.run([buf, *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_breaking_check_catches_a_renumbered_field(buf, tmp_path):
    shutil.copytree(ROOT / "proto", tmp_path / "proto", ignore=shutil.ignore_patterns("releases"))
    source = tmp_path / "proto" / "visualsearch" / "v1" / "visual_search.proto"
    text = source.read_text()
    assert "int32 top_k = 2;" in text
    source.write_text(text.replace("int32 top_k = 2;", "int32 top_k = 12;"))
    result = subprocess.run([buf, "breaking", str(tmp_path / "proto"), "--against", str(RELEASED)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "top_k" in result.stdout, result.stdout + result.stderr
