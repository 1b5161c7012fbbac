"""Settings: defaults, validation naming the variable, and the docs table matching the code."""

from __future__ import annotations

import pytest

from services.api import pb
from services.search.config import ConfigError, Settings, documented_settings
from services.search.errors import InvalidInput
from services.search.filters import build_expression
from services.search.product_fields import writer_limits
from tests.conftest import ROOT


def test_defaults_are_valid():
    settings = Settings.from_env({})
    assert settings.milvus_uri == "./data/catalog.db" and settings.consistency_level == "Bounded"
    assert settings.effective_index_params == {"M": 16, "efConstruction": 200}
    server = Settings.from_env({"VS_MILVUS_URI": "http://milvus:19530", "VS_MILVUS_REPLICAS": "2"})
    assert server.milvus_is_server and server.milvus_replicas == 2


@pytest.mark.parametrize("env, fragment", [
    ({"VS_MAX_IN_FLIGHT": "many"}, "VS_MAX_IN_FLIGHT"),
    ({"VS_MAX_IN_FLIGHT": "0"}, "VS_MAX_IN_FLIGHT='0': out of range"),
    ({"VS_INDEX_TYPE": "ANNOY"}, "VS_INDEX_TYPE='ANNOY': must be one of"),
    ({"VS_INDEX_PARAMS": "[1]"}, "VS_INDEX_PARAMS"),
    ({"VS_LISTEN": "nohost"}, "VS_LISTEN"),
    ({"VS_MAX_MESSAGE_BYTES": "1000"}, "VS_MAX_MESSAGE_BYTES must exceed"),
    ({"VS_MILVUS_COLLECTION": "bad-name"}, "VS_MILVUS_COLLECTION"),
    ({"VS_MILVUS_REPLICAS": "2"}, "VS_MILVUS_REPLICAS=2: Milvus Lite"),
    ({"VS_MILVUS_SHARDS": "2"}, "VS_MILVUS_SHARDS=2: Milvus Lite"),
    ({"VS_MILVUS_SHARDS": "0", "VS_MILVUS_URI": "http://milvus:19530"}, "VS_MILVUS_SHARDS='0': out of range"),
    ({"VS_LISTED_DETECTION_SCORE": "1.5"}, "VS_LISTED_DETECTION_SCORE='1.5': out of range"),
    ({"VS_MAX_IN_FLIGHT": "16"}, "VS_MAX_WRITES_IN_FLIGHT \\(16\\) must be below VS_MAX_IN_FLIGHT \\(16\\)"),
])
def test_bad_settings_name_the_variable(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


def test_the_configuration_page_documents_every_setting_with_its_default():
    page = (ROOT / "docs" / "configuration.md").read_text()
    for env, default, _help in documented_settings():
        assert f"| `{env}` | {default or '(empty)'} |" in page, f"{env}: run python -m tools.settings_table"


def test_the_api_page_documents_every_catalog_field_limit():
    page = (ROOT / "docs" / "api.md").read_text()
    for name, rule in writer_limits():
        assert f"| {name} | {rule} |" in page, name


def test_filters_escape_values_and_cannot_change_the_expression():
    flt = pb.Filter(categories=['x" or product_id != "'], attributes={"color": pb.AttributeValues(any_of=['r"ed'])})
    expression = build_expression(flt)
    assert expression == ('category in ["x\\" or product_id != \\""] and '
                          '(attributes["color"] == "r\\"ed")')
    assert build_expression(pb.Filter()) == ""
    with pytest.raises(InvalidInput, match="at most 64 values"):
        build_expression(pb.Filter(categories=[str(i) for i in range(65)]))
