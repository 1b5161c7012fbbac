"""The evaluation's variants compare what they say they compare (here, not in the unit layer: tools.eval.run
imports the stack launcher)."""

from __future__ import annotations

import re

from tools.eval.run import VARIANTS


def test_the_projections_priced_by_the_capacity_plan_run_the_shipped_service_settings():
    """The capacity plan charges each projection the list recall it loses against `shipped`
    (tools/bench/capacity.quality_costs): a variant pinned to an older list rule would charge
    the projection for that rule too."""
    priced = [v for name, v in VARIANTS.items()
              if re.fullmatch(r"shipped-\d+-learned", name) and v.dimension != 1280]
    assert len(priced) >= 3
    for variant in priced:
        assert variant.service_env == VARIANTS["shipped"].service_env, variant.name
        assert variant.postprocess == VARIANTS["shipped"].postprocess and variant.int8, variant.name


def test_the_quantised_index_variant_differs_from_shipped_only_in_the_index_type():
    quantised, shipped = VARIANTS["shipped-hnsw-sq"], VARIANTS["shipped"]
    assert quantised.service_env == {**shipped.service_env, "VS_INDEX_TYPE": "HNSW_SQ"}
    assert (quantised.dimension, quantised.projection, quantised.int8, quantised.postprocess) == (
        shipped.dimension, shipped.projection, shipped.int8, shipped.postprocess)
