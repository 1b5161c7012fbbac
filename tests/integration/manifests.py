"""The Kubernetes manifests as kustomize renders them (kubectl ships kustomize)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def render(overlay: str | Path) -> list[dict]:
    """Objects of ``deploy/overlays/<overlay>`` (or of any kustomization folder)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render deploy/overlays"
    folder = overlay if isinstance(overlay, Path) else DEPLOY / "overlays" / overlay
    out = subprocess.run([kubectl, "kustomize", str(folder)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
