"""The docs restate numbers that live in configs; each restatement is checked against its
config here, so a changed default cannot leave a page (or the proto's comments) saying the old
one. History (docs/history/) and generated run reports (which state their run's settings) are
exempt."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.search.config import documented_settings
from services.triton_models.model_args import config_file_parameters
from tests.conftest import ROOT

CURRENT = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "deploy" / "loadtest" / "README.md",
           ROOT / "model_repository" / "README.md", ROOT / "proto" / "visualsearch" / "v1" / "visual_search.proto",
           *[p for p in (ROOT / "docs").glob("*.md")
             if not p.name.startswith(("benchmarks", "evaluation"))]]  # generated reports: their run's settings
POSTPROCESS = config_file_parameters(ROOT / "model_repository" / "postprocess" / "config.pbtxt")
DEFAULTS = {env: default for env, default, _ in documented_settings()}
DEPLOYED = yaml.safe_load((ROOT / "deploy" / "base" / "search" / "configmap.yaml").read_text())["data"]
MIB = 1024 * 1024


def number(text: str) -> float:
    text = text.strip()
    return float(text[:-4]) * MIB if text.endswith(" MiB") else float(text)


def claims(pattern: str) -> list[tuple[Path, str, tuple[str, ...]]]:
    found = []
    for path in CURRENT:
        for match in re.finditer(pattern, path.read_text()):
            found.append((path, match.group(0), match.groups()))
    return found


def where(path: Path, text: str) -> str:
    return f"{path.relative_to(ROOT)}: {text!r}"


def test_the_pages_are_checked():
    assert len(CURRENT) >= 10 and all(p.is_file() for p in CURRENT)
    assert claims(r"from score ([0-9.]+)") and claims(r"mean of (\d+) views")


@pytest.mark.parametrize("pattern, parameter", [
    (r"from score ([0-9.]+)", "score_threshold"),
    (r"(?:at most|up to) (\d+) (?:per photo|objects|boxes)", "max_objects"),
    (r"mean of (\d+) views", "whole_image_views"),
    (r"\| `(?:score_threshold|max_objects|whole_image_views)` \| `model_repository/postprocess/config.pbtxt` \| "
     r"([0-9.]+) \|", None),
])
def test_detection_settings_quoted_in_the_docs_are_the_postprocess_config(pattern, parameter):
    for path, text, (value,) in claims(pattern):
        name = parameter or re.search(r"`(\w+)`", text).group(1)
        assert float(value) == float(POSTPROCESS[name]), \
            f"{where(path, text)} but postprocess {name} is {POSTPROCESS[name]}"


def test_service_defaults_quoted_in_the_docs_and_the_proto_are_the_code():
    checked = 0
    for path, text, (env, value) in claims(r"`?(VS_[A-Z0-9_]+)`?,? \((?:default )?([0-9][0-9.]*(?: MiB)?)\)"):
        deployed = path.parent.name == "deploy" and "default" not in text
        expected = DEPLOYED[env] if deployed else DEFAULTS[env]  # the operator guide quotes what deploy/ sets
        assert number(value) == float(expected), f"{where(path, text)} but it is {expected}"
        checked += 1
    assert checked >= 5


def test_the_detection_table_quotes_the_service_defaults():
    page = (ROOT / "docs" / "configuration.md").read_text()
    for env in ("VS_CONFIDENT_DETECTION_SCORE", "VS_LISTED_DETECTION_SCORE"):
        assert re.search(rf"\| `{env}` \| search service \| {re.escape(DEFAULTS[env])} \|", page), env
