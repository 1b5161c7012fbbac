"""What a Dockerfile copies into its image (both test layers read it)."""

from __future__ import annotations

import re


def copied_sources(dockerfile: str) -> list[str]:
    """The build-context paths of every ``COPY`` (not ``COPY --from``), continuation lines joined."""
    text = dockerfile.replace("\\\n", " ")
    return [src for line in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M) for src in line.split()]
