"""Where the checkout keeps its generated files (build/gen holds the generated gRPC code)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build"
