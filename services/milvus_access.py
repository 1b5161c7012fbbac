"""The Milvus user the search service and its jobs (importer, catalog_upgrade) log in as, and
exactly the privileges its role holds. An operator runs this once per cluster, after changing
root's initial password, from a pod with the search image:

    MILVUS_ADMIN_TOKEN=root:<password> VS_MILVUS_PASSWORD=<new password> \\
        python -m services.milvus_access --uri http://milvus-milvus.milvus:19530 --user visualsearch

and stores ``visualsearch:<password>`` as the service's VS_MILVUS_TOKEN. Neither secret ever
appears on a command line. Re-running it is safe: an existing user keeps its password (leave
VS_MILVUS_PASSWORD unset), and the role ends with exactly ``PRIVILEGES``.

Why these: on its first start a pod creates the collection of its models
(``<VS_MILVUS_COLLECTION>__<sha>``), its index and the alias, and loads it; afterwards it
upserts, deletes, queries and searches; ``catalog_upgrade`` builds the next collection and
moves the alias. The collection names are not known before the models are, so every
collection privilege applies to all collections of the database (``*``): give the service a
Milvus (or a database) of its own. The role cannot drop collections, aliases or databases, nor
manage users: ``tests/integration/test_milvus_access.py`` runs the service and both jobs as a
user holding this list and nothing else, on a Milvus server with authorization on.

Milvus 2.3/2.4 take each privilege with its object type (``grant_privilege``); 2.5 derives the
level from the privilege (``grant_privilege_v2``, privilege groups beside). The names are the
same in both.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from pymilvus import MilvusClient

from services import logging_setup

log = logging.getLogger(__name__)

ROLE = "visualsearch"

# (object type in Milvus 2.3/2.4, privilege)
PRIVILEGES: tuple[tuple[str, str], ...] = (
    ("Global", "CreateCollection"),
    ("Global", "DescribeCollection"),
    ("Global", "ShowCollections"),
    ("Global", "CreateAlias"),
    ("Global", "DescribeAlias"),
    ("Collection", "CreateIndex"),
    ("Collection", "IndexDetail"),
    ("Collection", "Load"),
    ("Collection", "GetLoadState"),
    ("Collection", "GetLoadingProgress"),
    ("Collection", "Insert"),
    ("Collection", "Upsert"),
    ("Collection", "Delete"),
    ("Collection", "Search"),
    ("Collection", "Query"),
    ("Collection", "Flush"),
    ("Collection", "GetStatistics"),
)


def grants_by_level(version: str) -> bool:
    """True where the server takes ``grant_privilege_v2`` (Milvus 2.5 and later)."""
    digits = version.lstrip("v").split("-")[0].split(".")
    major, minor = int(digits[0]), int(digits[1]) if len(digits) > 1 else 0
    return (major, minor) >= (2, 5)


def provision(admin: MilvusClient, user: str, password: str | None, role: str = ROLE,
              database: str = "default") -> None:
    """Create (or update) ``user`` with ``role`` holding exactly ``PRIVILEGES``."""
    if user not in admin.list_users():
        if not password:
            raise ValueError(f"user {user!r} does not exist: give its password (VS_MILVUS_PASSWORD)")
        admin.create_user(user, password)
    elif password:
        # rotating it here would lock out the pods logged in with the old one until they restart
        raise ValueError(f"user {user!r} exists: rotate its password (MilvusClient.update_password) together "
                         "with the search-secrets Secret, or leave VS_MILVUS_PASSWORD unset")
    if role not in admin.list_roles():
        admin.create_role(role)
    wanted = {privilege for _, privilege in PRIVILEGES}
    v2 = grants_by_level(admin.get_server_version())
    for granted in admin.describe_role(role)["privileges"]:
        if granted["privilege"] not in wanted:
            admin.revoke_privilege(role, granted["object_type"], granted["privilege"], granted["object_name"],
                                   db_name=granted.get("db_name") or database)
    for object_type, privilege in PRIVILEGES:
        if v2:
            admin.grant_privilege_v2(role, privilege, collection_name="*", db_name=database)
        else:
            admin.grant_privilege(role, object_type, privilege, "*", db_name=database)
    admin.grant_role(user, role)
    log.info("milvus user provisioned", extra={"user": user, "role": role, "database": database,
                                               "privileges": len(PRIVILEGES)})


def main(argv: list[str] | None = None) -> int:
    logging_setup.configure()
    parser = argparse.ArgumentParser(prog="python -m services.milvus_access", description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", required=True, help="the Milvus server, e.g. http://milvus-milvus.milvus:19530")
    parser.add_argument("--user", default=ROLE, help="the service's Milvus user (default: %(default)s)")
    parser.add_argument("--role", default=ROLE, help="its role (default: %(default)s)")
    parser.add_argument("--database", default="default", help="the database its privileges cover")
    args = parser.parse_args(argv)
    admin_token = os.environ.get("MILVUS_ADMIN_TOKEN", "")
    if not admin_token:
        print("MILVUS_ADMIN_TOKEN (root:<password>) is not set", file=sys.stderr)
        return 2
    admin = MilvusClient(args.uri, token=admin_token)
    try:
        provision(admin, args.user, os.environ.get("VS_MILVUS_PASSWORD") or None, args.role, args.database)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
