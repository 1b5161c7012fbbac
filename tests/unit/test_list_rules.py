"""tools.eval.list_rules: the learned combiner's features, fit and replay on recorded answers."""

from __future__ import annotations

import numpy as np
import pytest

from tools.eval import list_rules


def _answer(rng: np.random.Generator, product: str = "P") -> dict:
    """A photo whose product tops a confident box's group by a small lead, while the whole
    photo's group is led far ahead by a distractor (the shipped lead rule picks the distractor)."""
    near = float(rng.uniform(0.55, 0.65))
    far = float(rng.uniform(0.75, 0.85))
    box = {"box": [100, 100, 300, 300], "score": 0.9, "label": "cup", "whole": False,
           "matches": [[product, near], ["x", near - 0.01], ["y", near - 0.02], ["z", near - 0.03]]}
    whole = {"box": [0, 0, 640, 480], "score": 0.0, "label": "image", "whole": True,
             "matches": [["D", far], ["a", far - 0.3], ["b", far - 0.35], ["c", far - 0.4]]}
    return {"product": product, "kind": "scene", "box": [100, 100, 300, 300], "groups": [box, whole]}


def test_pair_features_describe_each_listed_match():
    answer = _answer(np.random.default_rng(0))
    rows, groups = list_rules.searched_rows(answer, 4)
    pids, features = list_rules.pair_features(rows, groups, np.arange(len(groups)))
    assert pids == ["P", "x", "y", "z", "D", "a", "b", "c"]
    named = dict(zip(list_rules.FEATURES, features[0], strict=True))
    assert named["lead over the group's 3rd"] == pytest.approx(0.02)
    assert named["first in its group"] == 1 and named["whole photo"] == 0
    assert named["box area share"] == pytest.approx(200 * 200 / (640 * 480))
    assert named["log10 detection score / 0.001"] == pytest.approx(np.log10(900))
    whole = dict(zip(list_rules.FEATURES, features[4], strict=True))
    assert whole["whole photo"] == 1 and whole["box centre's distance"] == pytest.approx(0)
    assert whole["lead x whole photo"] == pytest.approx(whole["lead over the group's 3rd"])


def test_a_fitted_combiner_learns_what_the_lead_rule_misses():
    rng = np.random.default_rng(1)
    fitted = list_rules.fit_combiner([_answer(rng) for _ in range(40)], 4, 0.005)
    held_out = [_answer(rng) for _ in range(20)]
    combined = [list_rules.replay(a, list_rules.Rule(0, 0.0, combiner=fitted), 4, 0.005)[0][0] for a in held_out]
    shipped = [list_rules.replay(a, list_rules.RULES["shipped"], 4, 0.005)[0][0] for a in held_out]
    assert shipped == ["D"] * 20  # the whole photo's far lead wins the shipped list
    assert combined == ["P"] * 20
