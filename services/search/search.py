"""SearchByImage and BatchSearchByImage: one Triton ensemble call per photo, then one Milvus
search for all its objects (nq = objects), collapsed to the best match per product."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from services.api import pb
from services.search import mapping, metrics
from services.search.backends import Backends, timed
from services.search.config import Settings
from services.search.errors import BackendUnavailable, InvalidInput
from services.search.milvus_store import Hit
from services.search.triton_client import DETECT_ENSEMBLE, REGION_ENSEMBLE
from services.search.validation import SearchQuery, check_batch, check_search

REGION_LABEL = "region"  # label of a caller-given region
IMAGE_LABEL = mapping.WHOLE_IMAGE_LABEL

Remaining = Callable[[], float | None]
# box, label, detection score, whole photo, merged into the product list
SearchedObject = tuple[np.ndarray, str, float, bool, bool]


def collapse(hits: list[Hit], top_k: int, min_similarity: float) -> list[pb.Match]:
    """Best hit per product, best first (several images of a product count once)."""
    matches: list[pb.Match] = []
    seen: set[str] = set()
    for hit in sorted(hits, key=lambda h: -h.similarity):
        if len(matches) == top_k or (min_similarity and hit.similarity < min_similarity):
            break
        if hit.fields["product_id"] in seen:
            continue
        seen.add(hit.fields["product_id"])
        matches.append(mapping.match(hit))
    return matches


class Search:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends

    async def _objects(self, query: SearchQuery, remaining: Remaining
                       ) -> tuple[np.ndarray, list[SearchedObject], bool]:
        """Embeddings of what to search (the kept objects, then the whole photo unless the
        caller skips it) with their groups, and whether no object was kept. A detected object
        joins the product list only from VS_LISTED_DETECTION_SCORE; a region and the whole
        photo always do."""
        if query.region is not None:
            embeddings, boxes = await timed(metrics.TRITON_SECONDS.labels(REGION_ENSEMBLE),
                                            self.backends.triton.embed_region(query.image, query.region, remaining()),
                                            remaining())
            return embeddings, [(boxes[0], REGION_LABEL, 0.0, False, True)], False
        found = await timed(metrics.TRITON_SECONDS.labels(DETECT_ENSEMBLE),
                            self.backends.triton.detect_and_embed(query.image, remaining()), remaining())
        keep = [i for i in range(len(found.labels)) if found.scores[i] >= query.min_detection_score]
        keep = sorted(keep, key=lambda i: -found.scores[i])[: query.max_objects or None]
        listed = self.settings.listed_detection_score
        objects = [(found.boxes[i], found.labels[i], float(found.scores[i]), False, bool(found.scores[i] >= listed))
                   for i in keep]
        vectors = [found.embeddings[i] for i in keep]
        if not keep or not query.skip_whole_image:
            objects.append((found.whole_box, IMAGE_LABEL, 0.0, True, True))
            vectors.append(found.whole_embedding)
        return np.stack(vectors), objects, not keep

    async def search(self, req: pb.SearchByImageRequest, remaining: Remaining) -> pb.SearchByImageResponse:
        """Every object's own matches, and one product list merged from the whole photo and the
        objects from VS_LISTED_DETECTION_SCORE: a fainter box (mostly background) still gets its
        group, but its chance matches do not push the photographed product down the list."""
        models = self.backends.ready()
        query = check_search(req, self.settings)
        embeddings, objects, whole_image = await self._objects(query, remaining)
        metrics.OBJECTS_PER_IMAGE.observe(len(objects))
        hits = await timed(
            metrics.MILVUS_SECONDS.labels("search"),
            asyncio.to_thread(self.backends.store.search, embeddings, query.top_k * self.settings.group_overfetch,
                              query.expression),
            remaining())
        response = pb.SearchByImageResponse(whole_image_searched=whole_image, models=mapping.model_info(models))
        for (box, label, score, whole, _), object_hits in zip(objects, hits, strict=True):
            group = response.objects.add(box=mapping.box(box), label=label, detection_score=score, whole_image=whole)
            group.matches.extend(collapse(object_hits, query.top_k, query.min_similarity))
        listed = [group for (*_, in_list), group in zip(objects, hits, strict=True) if in_list]
        response.products.extend(collapse([h for group in (listed or hits) for h in group], query.top_k,
                                          query.min_similarity))
        return response

    async def batch_search(self, req: pb.BatchSearchByImageRequest, remaining: Remaining
                           ) -> pb.BatchSearchByImageResponse:
        check_batch(req, self.settings)

        async def one(item: pb.SearchByImageRequest) -> pb.BatchSearchResult:
            try:
                return pb.BatchSearchResult(response=await self.search(item, remaining))
            except (InvalidInput, BackendUnavailable) as exc:
                return pb.BatchSearchResult(error=mapping.status(exc))

        results = await asyncio.gather(*(one(item) for item in req.requests))
        unavailable = [r for r in results if r.HasField("error") and r.error.code == BackendUnavailable.code.value[0]]
        if unavailable and len(unavailable) == len(results):
            raise BackendUnavailable(unavailable[0].error.message)
        return pb.BatchSearchByImageResponse(results=results)
