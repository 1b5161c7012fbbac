"""The one way search and catalog turn an image into rows: detect and embed every object (and
the whole image), embed a given region, or embed the whole image alone."""

from __future__ import annotations

from services.api import pb
from services.search import metrics
from services.search.backends import Remaining, Triton, timed
from services.search.errors import InvalidInput
from services.search.objects import Objects
from services.search.triton_client import DETECT_ENSEMBLE, REGION_ENSEMBLE
from services.search.validation import Region


async def embed(triton: Triton, image: bytes, mode: int, region: Region | None, remaining: Remaining,
                max_objects: int | None = None, min_score: float = 0.0) -> Objects:
    """The rows of ``image`` in ``mode`` (an ``EmbedMode``), within the caller's deadline;
    detect mode embeds only the best ``max_objects`` objects (None: every kept box) of those
    scored ``min_score`` or more."""
    if mode == pb.EMBED_MODE_DETECT:
        return await timed(metrics.TRITON_SECONDS.labels(DETECT_ENSEMBLE),
                           triton.detect_and_embed(image, remaining(), max_objects, min_score), remaining())
    if mode == pb.EMBED_MODE_REGION and region is None:
        raise InvalidInput("mode REGION needs a region")
    if mode not in (pb.EMBED_MODE_REGION, pb.EMBED_MODE_WHOLE_IMAGE):
        raise InvalidInput(f"unknown mode {mode}")
    return await timed(metrics.TRITON_SECONDS.labels(REGION_ENSEMBLE),
                       triton.embed_region(image, region if mode == pb.EMBED_MODE_REGION else None, remaining()),
                       remaining())
