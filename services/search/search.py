"""SearchByImage and BatchSearchByImage: one Triton ensemble call per photo, then one Milvus
search for all its objects (nq = objects), collapsed to the best match per product."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from services.api import pb
from services.search import mapping, metrics, objects
from services.search.backends import Backends, Remaining, timed
from services.search.config import Settings
from services.search.embedding import embed
from services.search.errors import BackendUnavailable, InvalidInput
from services.search.milvus_store import Hit
from services.search.validation import check_batch, check_search


def best_per_product(hits: list[Hit], top_k: int, min_similarity: float) -> list[Hit]:
    """Best hit per product, best first (several images of a product count once)."""
    best: list[Hit] = []
    seen: set[str] = set()
    for hit in sorted(hits, key=lambda h: -h.similarity):
        if len(best) == top_k or (min_similarity and hit.similarity < min_similarity):
            break
        if hit.fields["product_id"] in seen:
            continue
        seen.add(hit.fields["product_id"])
        best.append(hit)
    return best


T = TypeVar("T")


def ranked(groups: Sequence[Sequence[T]], similarity: Callable[[T], float], product: Callable[[T], str],
           bonuses: Sequence[float], top_k: int, min_similarity: float, depth: int) -> list[T]:
    """The one list's order: each product once, at most ``top_k``, from groups given best
    product first (at least ``depth`` deep, no similarity floor), and what each group's matches
    gain (``objects.confidence_bonus``). With ``depth``, each match counts by its lead over its
    group's ``depth``-th product: a box of background (a wall, a table) matches many catalog
    products almost alike, so even its best match leads by little, while the photographed
    object's product stands out of its group. Ties go by similarity; ``min_similarity`` drops
    matches by their own similarity. The service and the evaluation's replay
    (tools/eval/list_rules.py) both rank with this."""
    best: dict[str, tuple[tuple[float, float], T]] = {}
    for group, bonus in zip(groups, bonuses, strict=True):
        if not group:
            continue
        floor = similarity(group[min(depth, len(group)) - 1]) if depth else 0.0
        for item in group:
            sim = similarity(item)
            if min_similarity and sim < min_similarity:
                break
            key = (sim - floor + bonus, sim)
            pid = product(item)
            if pid not in best or key > best[pid][0]:
                best[pid] = (key, item)
    ordered = sorted(best.values(), key=lambda entry: entry[0], reverse=True)
    return [item for _, item in ordered[:top_k]]


def product_list(groups: list[list[Hit]], bonuses: list[float], top_k: int, min_similarity: float,
                 depth: int) -> list[pb.Match]:
    """The response's one list from the listed groups, each given as ``best_per_product`` of its hits."""
    hits = ranked(groups, lambda hit: hit.similarity, lambda hit: hit.fields["product_id"], bonuses, top_k,
                  min_similarity, depth)
    return [mapping.match(hit) for hit in hits]


class Search:
    def __init__(self, settings: Settings, backends: Backends) -> None:
        self.settings = settings
        self.backends = backends

    async def search(self, req: pb.SearchByImageRequest, remaining: Remaining) -> pb.SearchByImageResponse:
        """Every searched row's own matches (a group), and one product list merged from the
        rows ``objects.listed`` chooses: a fainter box (mostly background) still gets its
        group, but its chance matches do not push the photographed product down the list."""
        models = self.backends.ready()
        query = check_search(req, self.settings)
        mode = pb.EMBED_MODE_REGION if query.region is not None else pb.EMBED_MODE_DETECT
        # only the boxes ``objects.searched`` can send are cropped and embedded: the best
        # max_objects as the postprocess ranks them, among those from min_detection_score (the
        # postprocess drops the others first: its ranking is not by the score the floor reads)
        found = await embed(self.backends.triton, query.image, mode, query.region, remaining, query.max_objects,
                            query.min_detection_score)
        rows, nothing_detected = objects.searched(found, query.min_detection_score, query.max_objects,
                                                  query.skip_whole_image)
        metrics.OBJECTS_PER_IMAGE.observe(len(rows))
        hits = await timed(
            metrics.MILVUS_SECONDS.labels("search"),
            asyncio.to_thread(self.backends.store.search, rows.embeddings,
                              max(query.top_k, self.settings.list_margin_depth) * self.settings.group_overfetch,
                              query.expression),
            remaining())
        min_similarity = objects.min_similarity(query.min_similarity, query.use_recommended_min_similarity, models)
        response = pb.SearchByImageResponse(whole_image_searched=nothing_detected and query.region is None,
                                            models=mapping.model_info(models))
        # each group's best hit per product, once, as deep as the list's margin looks
        best = [best_per_product(object_hits, max(query.top_k, self.settings.list_margin_depth), 0.0)
                for object_hits in hits]
        sure = objects.confident(rows, self.settings.shown_detection_score)
        shown = objects.shown(rows, self.settings.shown_detection_score, query.include_tentative_objects)
        labels = objects.labels(rows, self.settings.shown_detection_score)
        for i, group_best in enumerate(best):
            if not shown[i]:
                continue
            group = response.objects.add(box=mapping.box(rows.boxes[i]), label=labels[i],
                                         detection_score=float(rows.scores[i]), whole_image=bool(rows.whole[i]),
                                         tentative=not sure[i])
            group.matches.extend(mapping.match(hit) for hit in group_best[:query.top_k]
                                 if not min_similarity or hit.similarity >= min_similarity)
        in_list = np.flatnonzero(objects.listed(rows, self.settings.listed_detection_score))
        bonus = objects.confidence_bonus(rows, self.settings.list_confidence_weight)
        response.products.extend(product_list([best[i] for i in in_list], [float(bonus[i]) for i in in_list],
                                              query.top_k, min_similarity, self.settings.list_margin_depth))
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
