"""The Milvus user deploy/README tells operators to create: on a real Milvus server with
authorization on, it holds exactly ``milvus_access.PRIVILEGES`` (the service, the importer and
catalog_upgrade run as it in the other tests of this layer), cannot do what the service never
does, and a role lacking one of them cannot start the service."""

from __future__ import annotations

import dataclasses
import re

import pytest
from pymilvus import MilvusClient

from services import milvus_access
from services.domain import ModelVersions
from services.paths import ROOT
from services.search.config import Settings
from services.search.errors import BackendUnavailable
from services.search.milvus_store import MilvusStore
from tests.integration.conftest import SERVICE_USER

MODELS = ModelVersions("det", "a" * 64, "emb", "b" * 64, 8)


def store(milvus_server, token: str, alias: str) -> MilvusStore:
    settings = dataclasses.replace(Settings.from_env({}), milvus_uri=milvus_server.uri, milvus_token=token,
                                   milvus_collection=alias)
    return MilvusStore(settings)


def test_the_service_user_holds_exactly_the_privileges_deploy_readme_lists(milvus_server):
    admin = MilvusClient(milvus_server.uri, token=milvus_server.admin_token)
    granted = {(p["object_type"], p["privilege"]) for p in admin.describe_role(milvus_access.ROLE)["privileges"]}
    assert granted == set(milvus_access.PRIVILEGES)
    assert milvus_access.ROLE in admin.describe_user(SERVICE_USER)["roles"]
    readme = (ROOT / "deploy" / "README.md").read_text()
    listed = set(re.search(r"<!-- milvus-privileges -->(.*?)<!-- /milvus-privileges -->", readme, re.S)
                 .group(1).replace("`", " ").replace(",", " ").split())
    assert listed == {privilege for _, privilege in milvus_access.PRIVILEGES}


def test_the_service_user_cannot_drop_collections_or_manage_users(milvus_server):
    service = store(milvus_server, milvus_server.service_token, "access_checked")
    service.connect(MODELS)
    try:
        client = MilvusClient(milvus_server.uri, token=milvus_server.service_token)
        for forbidden in (lambda: client.drop_collection(service.collection),
                          lambda: client.drop_alias("access_checked"),
                          lambda: client.create_user("intruder", "password123")):
            with pytest.raises(Exception, match="permission deny"):  # MilvusException or a grpc error
                forbidden()
        assert client.has_collection(service.collection)
    finally:
        service.disconnect()


def test_a_role_without_create_alias_cannot_start_the_service(milvus_server):
    """What a grant missing from the list does: the pod never becomes ready, and says which."""
    admin = MilvusClient(milvus_server.uri, token=milvus_server.admin_token)
    role, user = "without_create_alias", "without_create_alias"
    admin.create_role(role)
    for object_type, privilege in milvus_access.PRIVILEGES:
        if privilege != "CreateAlias":
            admin.grant_privilege(role, object_type, privilege, "*")
    admin.create_user(user, "password123")
    admin.grant_role(user, role)
    lacking = store(milvus_server, f"{user}:password123", "never_aliased")
    with pytest.raises(BackendUnavailable, match="CreateAlias: permission deny"):
        lacking.connect(MODELS)

