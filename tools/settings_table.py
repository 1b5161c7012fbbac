"""Rewrite the settings table of docs/configuration.md from ``services/search/config.py`` (the
unit tests fail when the two differ): ``python -m tools.settings_table``."""

from __future__ import annotations

import sys

from services.paths import ROOT
from services.search.config import documented_settings

PAGE = ROOT / "docs" / "configuration.md"
HEADING = "## The search service\n"


def table() -> str:
    rows = [f"| `{env}` | {default or '(empty)'} | {meaning} |" for env, default, meaning in documented_settings()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows]) + "\n"


def main() -> int:
    text = PAGE.read_text()
    start = text.index(HEADING) + len(HEADING)
    PAGE.write_text(text[:start] + "\n" + table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
