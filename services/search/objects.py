"""The rows a photo yields (its detected objects, and the whole photo or a caller-given region,
flagged), and every rule that chooses among them: which rows a search sends to Milvus, which
of those feed the product list, which a catalog image stores, and which similarity floor a
search applies. The detection settings these rules use, and where each is set (the one table
of them is docs/configuration.md, "Detection"):

* Triton's postprocess ``score_threshold`` and ``max_objects``: which boxes exist at all;
* ``VS_CONFIDENT_DETECTION_SCORE``: which boxes of a catalog image are stored (``stored``);
* ``VS_LISTED_DETECTION_SCORE``: which boxes of a query photo feed the list (``listed``);
* ``VS_SHOWN_DETECTION_SCORE``: which searched boxes are confident, returned as groups with
  their class name; the others are tentative (``confident``, ``labels``);
* ``VS_LIST_CONFIDENCE_WEIGHT``: how much a box's detection score lifts its matches in the list
  (``confidence_bonus``);
* the request's ``min_detection_score`` and ``max_objects`` (0: ``VS_MAX_SEARCHED_OBJECTS``):
  which boxes are searched (``searched``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.domain import REGION_LABEL, TENTATIVE_LABEL, WHOLE_IMAGE_LABEL, ModelVersions


@dataclass
class Objects:
    """N rows: detected objects first (best score first is not guaranteed), then the whole
    photo; or one row for a region or a whole image embedded alone."""

    boxes: np.ndarray  # Nx4, original pixels
    scores: np.ndarray  # N; 0 for the whole photo and a region
    labels: list[str]
    embeddings: np.ndarray  # NxD, unit length
    whole: np.ndarray  # N bools: the row is the whole photo

    @property
    def detected(self) -> np.ndarray:
        """Rows the detector found (not the whole photo, not a caller's region)."""
        return ~self.whole & np.array([label != REGION_LABEL for label in self.labels], bool)

    def take(self, rows: list[int] | np.ndarray) -> Objects:
        rows = list(np.asarray(rows, int).reshape(-1))
        return Objects(self.boxes.reshape(-1, 4)[rows], self.scores[rows], [self.labels[i] for i in rows],
                       self.embeddings[rows], self.whole[rows])

    def __len__(self) -> int:
        return len(self.labels)


def single(box: np.ndarray, embedding: np.ndarray, label: str) -> Objects:
    """One row: a region (``REGION_LABEL``) or a whole image (``WHOLE_IMAGE_LABEL``)."""
    return Objects(np.asarray(box, np.float32).reshape(1, 4), np.zeros(1, np.float32), [label],
                   np.asarray(embedding, np.float32).reshape(1, -1), np.array([label == WHOLE_IMAGE_LABEL]))


def photo(boxes: np.ndarray, scores: np.ndarray, labels: list[str], embeddings: np.ndarray,
          whole_box: np.ndarray, whole_embedding: np.ndarray) -> Objects:
    """A photo's rows from its detections and its whole image (the detect ensemble's layout)."""
    dimension = np.asarray(whole_embedding).shape[-1]
    rows = len(labels) + 1
    return Objects(np.concatenate([np.asarray(boxes, np.float32).reshape(-1, 4),
                                   np.asarray(whole_box, np.float32)[None]]),
                   np.concatenate([np.asarray(scores, np.float32).reshape(-1), [0.0]]).astype(np.float32),
                   [*labels, WHOLE_IMAGE_LABEL],
                   np.concatenate([np.asarray(embeddings, np.float32).reshape(-1, dimension),
                                   np.asarray(whole_embedding, np.float32)[None]]),
                   np.arange(rows) == rows - 1)


def searched(found: Objects, min_detection_score: float, max_objects: int, skip_whole_image: bool
             ) -> tuple[Objects, bool]:
    """The rows a search sends to Milvus: the detected objects from ``min_detection_score``, at
    most ``max_objects`` of them, best first in the postprocess's order (its ranking, which need
    not be by the score shown: model_repository/postprocess's rank_by_class_sum); then the whole
    photo, unless the caller skips it and an object is kept. Also whether no detected object was
    kept."""
    detected = [int(i) for i in np.flatnonzero(found.detected) if found.scores[i] >= min_detection_score][:max_objects]
    rest = [int(i) for i in np.flatnonzero(~found.detected)]
    if detected and skip_whole_image:
        rest = [i for i in rest if not found.whole[i]]
    return found.take(detected + rest), not detected


def listed(rows: Objects, listed_detection_score: float) -> np.ndarray:
    """Which searched rows feed the product list: the whole photo, a region, and detected
    objects from ``listed_detection_score`` (fainter boxes are mostly background: their chance
    matches would push the photographed product down the list). When none is (the caller
    skipped the whole photo and every box is faint), every row is."""
    chosen = ~rows.detected | (rows.scores >= listed_detection_score)
    return chosen if chosen.any() else np.ones(len(rows), bool)


def confident(rows: Objects, shown_detection_score: float) -> np.ndarray:
    """Which searched rows a response shows by default: the whole photo, a region, and detected
    objects from ``shown_detection_score``. The others are tentative: a box the detector is
    unsure of is mostly background or a part, and its class guess names something else."""
    return ~rows.detected | (rows.scores >= shown_detection_score)


def shown(rows: Objects, shown_detection_score: float, include_tentative: bool) -> np.ndarray:
    """Which searched rows come back as groups: the confident ones, and the tentative ones when
    the caller asks, or when nothing else would (every box faint and the whole photo skipped)."""
    chosen = confident(rows, shown_detection_score) | include_tentative
    return chosen if chosen.any() else np.ones(len(rows), bool)


def labels(rows: Objects, shown_detection_score: float) -> list[str]:
    """Each row's label as a response gives it: a tentative object's class guess is withheld."""
    sure = confident(rows, shown_detection_score)
    return [label if sure[i] else TENTATIVE_LABEL for i, label in enumerate(rows.labels)]


# The detection score at which the list's confidence bonus starts (below Triton's lowest
# useful threshold; a bonus of 0 there, 3 x weight at a score of 1).
BONUS_FLOOR_SCORE = 0.001


def confidence_bonus(rows: Objects, weight: float) -> np.ndarray:
    """What each row's matches gain in the product list: ``weight`` x log10(score / 0.001) for
    a detected object (0 below 0.001), none for the whole photo or a region. Chosen on one
    half of the evaluation's products and reported on the other (docs/search-quality.md)."""
    scores = np.maximum(rows.scores.astype(np.float64), BONUS_FLOOR_SCORE)
    return np.where(rows.detected, weight * np.log10(scores / BONUS_FLOOR_SCORE), 0.0)


def stored(found: Objects, confident_detection_score: float, store_whole_image: bool) -> Objects:
    """The rows a catalog image stores: its detected objects from ``confident_detection_score``
    and its whole image (always when nothing is confident; otherwise if ``store_whole_image``:
    a product is then found even when the shopper's photo is detected differently)."""
    objects = [int(i) for i in np.flatnonzero(found.detected) if found.scores[i] >= confident_detection_score]
    rest = [int(i) for i in np.flatnonzero(~found.detected)]
    if objects and not store_whole_image:
        rest = [i for i in rest if not found.whole[i]]
    return found.take(objects + rest)


def min_similarity(requested: float, use_recommended: bool, models: ModelVersions) -> float:
    """The similarity floor of a search: the caller's, or the served embedder's recommendation
    when the caller asks for it (and gives none)."""
    if use_recommended and not requested:
        return models.recommended_min_similarity
    return requested
