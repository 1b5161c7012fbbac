"""Change the models without downtime: build the new models' collection beside the live one,
then switch the alias the search service reads through.

    python -m services.catalog_upgrade build --triton new-triton:8001 --manifest catalog.jsonl
    python -m services.catalog_upgrade switch --triton new-triton:8001

Milvus, the alias and their credentials come from the search service's own settings
(``VS_MILVUS_URI``, ``VS_MILVUS_TOKEN``, ``VS_MILVUS_COLLECTION`` = the alias, TLS); ``--triton``
is a Triton that serves the new models. Each pair of models has its own collection
(``<alias>__<sha of both models>``).

* ``build`` embeds the catalog (a manifest or folder, as for ``services.importer``) with the
  new Triton into the new models' collection; the alias and the search pods are untouched.
  Safe to re-run: unchanged images are not embedded again.
* ``switch`` points the alias to the new collection in one atomic step. A search pod keeps the
  collection it resolved at start until it restarts with the new models (roll the Triton and
  search pods next), so no search mixes two models' vectors, and a pod started with the
  old models refuses the new collection and says why. Drop the old collection once the roll
  is done.

Exit code 0 on success, 1 when some images failed or the switch was refused, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

from pymilvus import MilvusClient

from services import importer
from services.api import pb
from services.domain import ModelVersions
from services.search.backends import Backends
from services.search.catalog import Catalog
from services.search.collection import SchemaMismatch, alias_target, collection_for
from services.search.config import ConfigError, Settings
from services.search.errors import ServiceError
from services.search.milvus_store import MilvusStore
from services.search.triton_client import TritonClient

log = logging.getLogger("services.catalog_upgrade")
PRODUCTS_PER_CALL = 256


async def stream(items: list[pb.ImportProductsRequest]):  # noqa: ANN201 - async generator
    """Requests as the async stream ``Catalog.import_products`` reads."""
    for item in items:
        yield item


async def _models(settings: Settings) -> tuple[TritonClient, ModelVersions]:
    triton = TritonClient.from_settings(settings)
    await triton.probe()
    return triton, await triton.model_versions()


async def build(settings: Settings, products: list[importer.ProductSpec]) -> importer.Summary:
    """Import ``products`` into the new models' collection (created if missing)."""
    triton, models = await _models(settings)
    store = MilvusStore(settings)
    await asyncio.to_thread(store.connect, models, False)
    backends = Backends(triton, store)
    problems = await backends.probe()
    if any(problems.values()):
        raise ServiceError(f"backends not ready: {problems}")
    log.info("building %s for detector %s, embedder %s", store.collection, models.detector, models.embedder)
    catalog = Catalog(settings, backends)
    summary = importer.Summary()
    for start in range(0, len(products), PRODUCTS_PER_CALL):
        requests = [r for r in (importer.product_request(s, summary) for s in products[start:start + PRODUCTS_PER_CALL])
                    if r is not None]
        summary.add(await catalog.import_products(stream(requests), lambda: None))
        log.info("%d of %d products", min(start + PRODUCTS_PER_CALL, len(products)), len(products))
    await backends.close()
    return summary


class SwitchRefused(RuntimeError):
    """The new collection is missing or empty, or the alias name is taken by a collection."""


async def switch(settings: Settings) -> tuple[str | None, str]:
    """Point the alias to the collection of the models ``--triton`` serves; returns (old, new)."""
    triton, models = await _models(settings)
    await triton.close()
    alias = settings.milvus_collection
    wanted = collection_for(alias, models)
    client = MilvusClient(uri=settings.milvus_uri, token=settings.milvus_token, timeout=settings.milvus_timeout_s,
                          **MilvusStore(settings).tls_arguments())
    try:
        if not client.has_collection(wanted):
            raise SwitchRefused(f"{wanted} does not exist: run `build` with this Triton first")
        rows = client.query(wanted, filter="", output_fields=["count(*)"], consistency_level="Strong")
        if not rows or not rows[0]["count(*)"]:
            raise SwitchRefused(f"{wanted} is empty: run `build` with this Triton first")
        exists = client.has_collection(alias)  # true for an alias too
        current = alias_target(client, alias, settings.milvus_timeout_s) if exists else None
        if exists and current is None:
            raise SwitchRefused(f"{alias!r} is a collection, not an alias (made before collections per model); "
                                "set VS_MILVUS_COLLECTION to a new alias name for the new models")
        if current is None:
            client.create_alias(wanted, alias)
        elif current != wanted:
            client.alter_alias(wanted, alias)
        return current, wanted
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "switch"))
    parser.add_argument("--triton", required=True, help="host:port of a Triton serving the new models")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--manifest", type=Path)
    source.add_argument("--folder", type=Path)
    parser.add_argument("--category", default="", help="category for --folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        settings = dataclasses.replace(Settings.from_env(), triton_url=args.triton)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "switch":
        try:
            old, new = asyncio.run(switch(settings))
        except (SwitchRefused, ServiceError) as exc:
            print(f"error: switch refused: {exc}", file=sys.stderr)
            return 1
        print(f"alias {settings.milvus_collection}: {old or '(none)'} -> {new}; roll the Triton and search pods to "
              f"the new models next, then drop {old or 'the old collection'}")
        return 0
    if not (args.manifest or args.folder):
        parser.error("build needs --manifest or --folder")
    try:
        products = importer.from_folder(args.folder, args.category) if args.folder else \
            importer.from_manifest(args.manifest)
    except (importer.ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(build(settings, products))
    except (ServiceError, SchemaMismatch) as exc:
        print(f"error: build stopped: {exc} (safe to re-run)", file=sys.stderr)
        return 1
    importer.print_summary(summary)
    return 0 if not summary.failures else 1


if __name__ == "__main__":
    sys.exit(main())
