"""Replay ways to merge a response's groups into its product list, offline, on the groups
`make eval` recorded (build/eval/answers.json): which rule puts the photographed product first
most often, per query kind. Rules are chosen on one half of the products (the "choose" split)
and reported on the other ("report"), so a rule tuned to these photos shows it.

    python -m tools.eval.list_rules [--answers build/eval/answers.json] [--variant shipped]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from services.paths import BUILD
from services.search.product_list import RULES, Group, merge

Ranking = list[tuple[str, float]]


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
    return 0


if __name__ == "__main__":
    sys.exit(main())
