"""Replay ways to merge a response's groups into its product list, offline, on the groups
`make eval` recorded (build/eval/answers.json): which rule puts the photographed product first
most often, per query kind. Rules are chosen on one half of the products (the "choose" split)
and reported on the other ("report"), so a rule tuned to these photos shows it. The service
merges with ``similarity`` (each product's best match over the listed groups); this replay
reproduces its list exactly.

It also says why the list loses scene queries the photographed object's group wins: how often
the list is led by another catalog product with queries of its own, i.e. the second object the
evaluation pastes into 30 % of its scenes (a photo of two catalog products).

    python -m tools.eval.list_rules [--answers build/eval/answers.json] [--variant shipped]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.paths import BUILD
from tools.eval.dataset import EvalSet

Ranking = list[tuple[str, float]]

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



def split_of(product: str) -> str:
    return "choose" if hashlib.sha256(product.encode()).digest()[0] % 2 == 0 else "report"


def groups_of(answer: dict, listed_score: float) -> list[Group]:
    whole = next((g for g in answer["groups"] if g["whole"]), None)
    width, height = (whole["box"][2], whole["box"][3]) if whole else (0.0, 0.0)
    return [Group([(pid, sim) for pid, sim in g["matches"]], g["score"], g["whole"], g["label"], g["box"],
                  (width, height)) for g in answer["groups"] if g["whole"] or g["score"] >= listed_score
            or g["label"] == "region"]


def rank(ranking: Ranking, product: str) -> int | None:
    ids = [pid for pid, _ in ranking]
    return ids.index(product) + 1 if product in ids else None


def figures(answers: list[dict], rule: Callable[[list[Group]], Ranking], listed_score: float) -> dict:
    ranks = [rank(rule(groups_of(a, listed_score)), a["product"]) for a in answers]
    n = len(ranks) or 1
    return {"n": len(ranks), "recall1": sum(r == 1 for r in ranks) / n,
            "recall5": sum(r is not None and r <= 5 for r in ranks) / n,
            "mrr": sum(1 / r for r in ranks if r) / n}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", type=Path, default=BUILD / "eval" / "answers.json")
    parser.add_argument("--variant", default="shipped")
    parser.add_argument("--listed-score", type=float, default=0.005)
    parser.add_argument("--set", type=Path, default=BUILD / "eval" / "set", help="the evaluation set make eval built")
    args = parser.parse_args(argv)
    answers = [a for a in json.loads(args.answers.read_text())[args.variant] if a.get("groups")]
    kinds = sorted({a["kind"] for a in answers})
    print(f"{len(answers)} queries of variant {args.variant}; list from boxes scoring >= {args.listed_score}")
    print("| rule | split | " + " | ".join(f"{k} R@1 / R@5 / MRR" for k in kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for name in RULES:
        for split in ("choose", "report"):
            cells = []
            for kind in kinds:
                subset = [a for a in answers if a["kind"] == kind and split_of(a["product"]) == split]
                f = figures(subset, lambda groups, name=name: merge(groups, 10, name), args.listed_score)
                cells.append(f"{f['recall1']:.3f} / {f['recall5']:.3f} / {f['mrr']:.3f} ({f['n']})")
            print(f"| {name} | {split} | " + " | ".join(cells) + " |")
    groups = [len(a["groups"]) for a in answers]
    print(f"\ngroups per response: median {np.median(groups):.0f}, max {max(groups)}")
    products = set(EvalSet.load(args.set).products)
    lost = [a for a in answers if a["kind"] == "scene" and a["object_rank"] == 1 and a["list_rank"] != 1]
    led_by_product = [a for a in lost if merge(groups_of(a, args.listed_score), 1, "similarity")[0][0] in products]
    print(f"scene queries whose object group ranks the product first but the list does not: {len(lost)}; "
          f"led by another catalog product with queries of its own (the evaluation's second object): "
          f"{len(led_by_product)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
