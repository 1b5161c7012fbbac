"""Which grant call the Milvus access tool makes for a server version."""

from __future__ import annotations

from services import milvus_access


def test_the_grant_call_follows_the_server_version():
    assert not milvus_access.grants_by_level("v2.3.5-lite")
    assert not milvus_access.grants_by_level("2.4.15")
    assert milvus_access.grants_by_level("v2.5.10")
    assert milvus_access.grants_by_level("v2.6.0")
