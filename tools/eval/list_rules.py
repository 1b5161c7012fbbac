"""Replay ways to merge a response's groups into its product list, offline, on the groups
`make eval` recorded (build/eval/answers.json, every searched row's group): which rule puts the
photographed product first most often, per query kind, and at how many searched boxes (query
vectors) per photo. Rules are chosen on one half of the products (the "choose" split) and
reported on the other ("report"), so a rule tuned to these photos shows it.

One row is learned: a logistic regression over every (group, match) pair of the listed groups
(similarity, lead over the group's 3rd product, lead over its next one, rank, the box's detection
score, area and distance from the photo's centre, whole photo or not), fitted on the choose half
to tell the photographed product from the rest; a product's place in the list is its best pair's.

The replay runs the service's own rules (services/search/objects.py ``searched``, ``listed``,
``confidence_bonus``; services/search/search.py ``ranked``), so the ``shipped`` row reproduces the
served list exactly when the answers were recorded with the shipped settings. The other rows
change one setting of it (``VS_LIST_MARGIN_DEPTH``, ``VS_LIST_CONFIDENCE_WEIGHT``) or merge by
reciprocal-rank fusion; ``--max-objects`` replays fewer searched boxes (each group's matches do
not depend on the other query vectors of its search).

    python -m tools.eval.list_rules [--answers build/eval/answers.json] [--variant shipped] [--max-objects 4]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression

from services.paths import BUILD
from services.search import objects
from services.search.config import Settings
from services.search.search import ranked
from tools.eval import dataset
from tools.eval.matching import matching_box

Match = tuple[str, float]  # (product id, similarity), a group's products best first
RRF_K = 60  # the reciprocal-rank constant of rank fusion (Cormack et al.'s 60)


FEATURES = ("similarity", "lead over the group's 3rd", "lead over the next", "first in its group", "log rank",
            "log10 detection score / 0.001", "whole photo", "box area share", "box centre's distance",
            "lead x whole photo")
COMBINER_DEPTH = 3  # the lead feature's group depth (the shipped VS_LIST_MARGIN_DEPTH)


@dataclass
class Combiner:
    """A fitted logistic regression over ``pair_features``, standardised as fitted."""

    model: LogisticRegression
    mean: np.ndarray
    scale: np.ndarray

    def scores(self, features: np.ndarray) -> np.ndarray:
        return self.model.decision_function((features - self.mean) / self.scale)


@dataclass(frozen=True)
class Rule:
    depth: int  # VS_LIST_MARGIN_DEPTH
    weight: float  # VS_LIST_CONFIDENCE_WEIGHT
    fusion: bool = False  # reciprocal-rank fusion instead (ranks summed over groups)
    combiner: Combiner | None = field(default=None, compare=False)  # a fitted combiner instead


SHIPPED = Settings()
RULES = {
    "shipped": Rule(SHIPPED.list_margin_depth, SHIPPED.list_confidence_weight),
    "similarity": Rule(0, 0.0),
    "margin-10 (before)": Rule(10, 0.0),
    "margin-3": Rule(3, 0.0),
    "margin-2 + confidence": Rule(2, SHIPPED.list_confidence_weight),
    "margin-5 + confidence": Rule(5, SHIPPED.list_confidence_weight),
    "margin-3 + confidence x2": Rule(3, 2 * SHIPPED.list_confidence_weight),
    "rank fusion": Rule(0, 0.0, fusion=True),
}


def rows_of(answer: dict) -> tuple[objects.Objects, list[list[Match]]]:
    """An answer's searched rows (as the service's rules take them) and each row's matches."""
    groups = answer["groups"]
    rows = objects.Objects(np.array([g["box"] for g in groups], np.float32).reshape(-1, 4),
                           np.array([g["score"] for g in groups], np.float32), [g["label"] for g in groups],
                           np.zeros((len(groups), 1), np.float32), np.array([g["whole"] for g in groups], bool))
    return rows, [[(pid, sim) for pid, sim in g["matches"]] for g in groups]


def searched_rows(answer: dict, max_objects: int) -> tuple[objects.Objects, list[list[Match]]]:
    """The answer's rows a search with ``max_objects`` boxes sends, and their matches."""
    every, matches = rows_of(answer)
    index = np.arange(len(every))
    kept, _ = objects.searched(objects.Objects(every.boxes, every.scores, [str(i) for i in index], every.embeddings,
                                               every.whole), 0.0, max_objects, False)
    order = [int(label) for label in kept.labels]
    return every.take(order), [matches[i] for i in order]


def pair_features(rows: objects.Objects, groups: list[list[Match]], listed: np.ndarray
                  ) -> tuple[list[str], np.ndarray]:
    """Every (listed group, match) pair: its product id and its ``FEATURES``."""
    whole = np.flatnonzero(rows.whole)
    width, height = (rows.boxes[whole[0], 2:4] if len(whole) else rows.boxes[:, 2:4].max(axis=0)).tolist()
    area = max(width * height, 1.0)
    pids, features = [], []
    for i in listed:
        if not groups[i]:
            continue
        sims = np.array([sim for _, sim in groups[i]])
        floor = sims[min(COMBINER_DEPTH, len(sims)) - 1]
        x0, y0, x1, y1 = rows.boxes[i].tolist()
        centre = np.hypot((x0 + x1) / 2 / max(width, 1) - 0.5, (y0 + y1) / 2 / max(height, 1) - 0.5)
        is_whole = float(rows.whole[i])
        confidence = 0.0 if is_whole else float(np.log10(max(float(rows.scores[i]), 1e-3) / 1e-3))
        for rank, (pid, sim) in enumerate(groups[i]):
            following = sims[min(rank + 1, len(sims) - 1)]
            features.append([sim, sim - floor, sim - following, float(rank == 0), np.log1p(rank), confidence,
                             is_whole, (x1 - x0) * (y1 - y0) / area, centre, (sim - floor) * is_whole])
            pids.append(pid)
    return pids, np.asarray(features, np.float64).reshape(-1, len(FEATURES))


def fit_combiner(answers: list[dict], max_objects: int, listed_score: float) -> Combiner:
    """A combiner fitted on ``answers``: each listed pair labelled by whether its product is the
    photographed one."""
    xs, ys = [], []
    for answer in answers:
        rows, groups = searched_rows(answer, max_objects)
        pids, features = pair_features(rows, groups, np.flatnonzero(objects.listed(rows, listed_score)))
        xs.append(features)
        ys.extend(pid == answer["product"] for pid in pids)
    x = np.concatenate(xs)
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    model = LogisticRegression(max_iter=2000).fit((x - mean) / scale, np.asarray(ys, bool))
    return Combiner(model, mean, scale)


def replay(answer: dict, rule: Rule, max_objects: int, listed_score: float, top_k: int = 10
           ) -> tuple[list[str], int, int | None, list[list[Match]]]:
    """The list ``rule`` makes from the answer's boxes cut to ``max_objects``: product ids best
    first, the query vectors it searched, and which of the searched rows is the photographed
    object's (IoU, else the whole photo's), with every searched row's matches."""
    rows, groups = searched_rows(answer, max_objects)
    listed = np.flatnonzero(objects.listed(rows, listed_score))
    if rule.combiner is not None:
        pids, features = pair_features(rows, groups, listed)
        best: dict[str, float] = {}
        for pid, value in zip(pids, rule.combiner.scores(features) if pids else [], strict=True):
            best[pid] = max(best.get(pid, -np.inf), float(value))
        products = sorted(best, key=lambda pid: -best[pid])[:top_k]
    elif rule.fusion:
        summed: dict[str, float] = {}
        for i in listed:
            for rank, (pid, _) in enumerate(groups[i]):
                summed[pid] = summed.get(pid, 0.0) + 1.0 / (RRF_K + rank + 1)
        products = sorted(summed, key=lambda pid: -summed[pid])[:top_k]
    else:
        bonus = objects.confidence_bonus(rows, rule.weight)
        products = [pid for pid, _ in ranked([groups[i] for i in listed], lambda m: m[1], lambda m: m[0],
                                             [float(bonus[i]) for i in listed], top_k, 0.0, rule.depth)]
    detected = [i for i in range(len(rows)) if not rows.whole[i]]
    box = answer.get("box")
    hit = matching_box([tuple(rows.boxes[i]) for i in detected], tuple(box) if box else None)
    own = detected[hit] if hit is not None else next((i for i in range(len(rows)) if rows.whole[i]), None)
    return products, len(rows), own, groups


def split_of(product: str) -> str:
    return "choose" if hashlib.sha256(product.encode()).digest()[0] % 2 == 0 else "report"


def part_of(answer: dict) -> str:
    """A scene photo's kind by what the catalog holds of its background (tools/eval/dataset.py)."""
    return f"{answer['kind']} ({dataset.BACKGROUND_PARTS[bool(answer.get('background_copied'))]})"


def figures(answers: list[dict], rule: Rule, max_objects: int, listed_score: float) -> dict:
    list_ranks, object_first, vectors = [], [], []
    for a in answers:
        products, searched, own, groups = replay(a, rule, max_objects, listed_score)
        list_ranks.append(products.index(a["product"]) + 1 if a["product"] in products else None)
        if a.get("box") is None:  # the object fills the photo: its "group" is the list
            object_first.append(list_ranks[-1] == 1)
        else:
            object_first.append(own is not None and bool(groups[own]) and groups[own][0][0] == a["product"])
        vectors.append(searched)
    n = len(answers) or 1
    return {"n": len(answers), "recall1": sum(r == 1 for r in list_ranks) / n,
            "recall5": sum(r is not None and r <= 5 for r in list_ranks) / n,
            "mrr": sum(1 / r for r in list_ranks if r) / n, "object1": sum(object_first) / n,
            "vectors": float(np.mean(vectors)) if vectors else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--answers", default=str(BUILD / "eval" / "answers.json"))
    parser.add_argument("--variant", default="shipped")
    parser.add_argument("--listed-score", type=float, default=SHIPPED.listed_detection_score)
    parser.add_argument("--max-objects", default=str(SHIPPED.max_searched_objects),
                        help="searched boxes per photo, comma-separated for several")
    args = parser.parse_args(argv)
    with open(args.answers) as f:
        answers = [a for a in json.load(f)[args.variant] if a.get("groups")]
    choose = [a for a in answers if a["kind"] != "second_shot" and split_of(a["product"]) == "choose"]
    kinds = sorted({a["kind"] for a in answers} | {part_of(a) for a in answers if a.get("background")})
    print(f"{len(answers)} queries of variant {args.variant}; list from boxes scoring >= {args.listed_score}; "
          "cells: list R@1 / R@5 / MRR, object-group R@1, query vectors per photo (queries)")
    print("| boxes | rule | split | " + " | ".join(kinds) + " |")
    print("|---|---|---|" + "---|" * len(kinds))
    for max_objects in [int(v) for v in args.max_objects.split(",")]:
        rules = {**RULES, "logistic combiner (fitted on choose)": Rule(
            0, 0.0, combiner=fit_combiner(choose, max_objects, args.listed_score))}
        for name, rule in rules.items():
            for split in ("choose", "report"):
                cells = []
                for kind in kinds:
                    subset = [a for a in answers if kind in (a["kind"], part_of(a)) and
                              (kind == "second_shot" or split_of(a["product"]) == split)]
                    f = figures(subset, rule, max_objects, args.listed_score)
                    cells.append(f"{f['recall1']:.3f} / {f['recall5']:.3f} / {f['mrr']:.3f}, {f['object1']:.3f}, "
                                 f"{f['vectors']:.1f} ({f['n']})")
                print(f"| {max_objects} | {name} | {split} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
