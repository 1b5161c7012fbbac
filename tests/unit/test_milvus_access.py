"""Which grant call the Milvus access tool makes for a server version."""

from __future__ import annotations

from services import milvus_access


def test_the_grant_call_follows_the_server_version():
    assert not milvus_access.grants_by_level("v2.3.5-lite")
    assert not milvus_access.grants_by_level("2.4.15")
    assert milvus_access.grants_by_level("v2.5.10")
    assert milvus_access.grants_by_level("v2.6.0")


def test_the_readme_counts_the_privileges_the_tool_grants():
    from services.paths import ROOT

    assert f"exactly the {len(milvus_access.PRIVILEGES)} privileges" in (ROOT / "README.md").read_text()
