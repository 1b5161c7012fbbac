"""How the groups of one search become its one product list: each rule scores every product of
every listed group, and a product keeps its best score. ``make eval``'s list replay
(tools/eval/list_rules.py) measures each rule on the groups the service returned; the service
merges with VS_LIST_RULE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The reciprocal-rank constant of rank fusion (Cormack et al.'s 60).
RRF_K = 60
SUBJECT_SCORE = 0.25  # a box at least this confident can be the photographed subject


@dataclass
class Group:
    """One listed group: its products best first (one match each), and where it lies."""

    matches: list[tuple[str, float]]  # (product id, similarity), best first
    score: float  # detection score (0: the whole photo or a region)
    whole: bool
    label: str
    box: list[float]  # x_min, y_min, x_max, y_max in original pixels
    size: tuple[float, float]  # the photo's width and height

    @property
    def area(self) -> float:
        width, height = self.size
        if not width or not height:
            return 0.0
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]) / (width * height)

    @property
    def centrality(self) -> float:
        """1 at the photo's centre, 0 at a corner."""
        width, height = self.size
        if not width or not height:
            return 0.0
        cx, cy = (self.box[0] + self.box[2]) / 2 / width, (self.box[1] + self.box[3]) / 2 / height
        return float(max(0.0, 1 - np.hypot(cx - 0.5, cy - 0.5) / np.hypot(0.5, 0.5)))


Scored = list[tuple[int, int, float]]  # (group, match, score)


def _similarity(groups: list[Group]) -> Scored:
    return [(g, m, sim) for g, group in enumerate(groups) for m, (_, sim) in enumerate(group.matches)]


def _margin(groups: list[Group]) -> Scored:
    """A match against its own group's weakest listed match: a box whose matches are all alike
    (background, a part) scores low however similar its best match is."""
    out = []
    for g, group in enumerate(groups):
        floor = group.matches[-1][1] if group.matches else 0.0
        out += [(g, m, sim - floor) for m, (_, sim) in enumerate(group.matches)]
    return out


def _zscore(groups: list[Group]) -> Scored:
    out = []
    for g, group in enumerate(groups):
        sims = np.array([sim for _, sim in group.matches]) if group.matches else np.zeros(1)
        spread = float(sims.std()) or 1.0
        out += [(g, m, (sim - float(sims.mean())) / spread) for m, (_, sim) in enumerate(group.matches)]
    return out


def _gap(groups: list[Group]) -> Scored:
    """A match's similarity plus its lead over the next product of its group: how far it stands
    out where it was found."""
    out = []
    for g, group in enumerate(groups):
        sims = [sim for _, sim in group.matches]
        out += [(g, m, 2 * sim - (sims[m + 1] if m + 1 < len(sims) else sim)) for m, sim in enumerate(sims)]
    return out


def _rrf(groups: list[Group]) -> Scored:
    """Reciprocal-rank fusion: a product's ranks in every group, added up (``merge`` sums them)."""
    return [(g, m, 1.0 / (RRF_K + m + 1)) for g, group in enumerate(groups) for m in range(len(group.matches))]


def _subject(groups: list[Group]) -> int | None:
    """The group of what was photographed: the most confident-and-large box near the centre, if
    a box is confident; otherwise none (the whole photo's group then competes as any other)."""
    boxes = [(g.area * (0.5 + g.centrality), i) for i, g in enumerate(groups) if not g.whole and
             g.score >= SUBJECT_SCORE]
    return max(boxes)[1] if boxes else None


def _subject_first(groups: list[Group]) -> Scored:
    subject = _subject(groups)
    return [(g, m, sim + (1.0 if g == subject else 0.0)) for g, m, sim in _similarity(groups)]


RULES: dict[str, Callable[[list[Group]], Scored]] = {
    "similarity": _similarity, "margin": _margin, "zscore": _zscore, "gap": _gap, "rrf": _rrf,
    "subject-first": _subject_first}
SUMMED = {"rrf"}  # rules whose scores add up over groups; the others keep a product's best


def merge(groups: list[Group], top_k: int, rule: str) -> list[tuple[str, float]]:
    """The list: each product once with its best score under ``rule``, best first, at most top_k."""
    best: dict[str, float] = {}
    for g, m, score in RULES[rule](groups):
        pid = groups[g].matches[m][0]
        if rule in SUMMED:
            best[pid] = best.get(pid, 0.0) + score
        elif score > best.get(pid, -np.inf):
            best[pid] = score
    return sorted(best.items(), key=lambda item: -item[1])[:top_k]
