"""Real photos from Debian packages: `apt-get download` + `dpkg-deb -x` into the cache, once.

Used for the INT8 calibration photos, the whitening reference crops and the evaluation set;
the files are fetched at build or evaluation time and never committed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class PackageUnavailable(RuntimeError):
    """A package cannot be fetched here (no apt-get, no package lists, no network)."""


def fetch(package: str, cache: Path) -> Path:
    """The unpacked root of ``package`` (``<cache>/debian/<package>/root``)."""
    folder = cache / "debian" / package
    if not (folder / ".complete").exists():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            _download(package, folder)
            deb = next(folder.glob(f"{package}_*.deb"))
            subprocess.run(["dpkg-deb", "-x", str(deb), str(folder / "root")], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError, StopIteration) as exc:
            failed = isinstance(exc, subprocess.CalledProcessError)
            detail = exc.stderr.decode(errors="replace")[-300:] if failed else exc
            raise PackageUnavailable(f"cannot fetch {package} with apt-get download: {detail}") from None
        deb.unlink()
        (folder / ".complete").touch()
    return folder / "root"


def _download(package: str, folder: Path) -> None:
    """`apt-get download`; on a machine whose package lists were never fetched, fetch them
    first (as root) and try again."""
    command = ["apt-get", "download", package]
    if subprocess.run(command, cwd=folder, capture_output=True).returncode == 0:
        return
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, capture_output=True)
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
