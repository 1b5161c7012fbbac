"""The docs/catalog.md recipe for a new filterable product field, followed in a test: the proto gets the
field (and its filter), ``PRODUCT_FIELDS`` gets one entry, and nothing else changes. Then the
field is validated, stored in a real Milvus Lite collection, filtered on, returned with
matches and read from an importer manifest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from services.paths import ROOT

PROTO = ROOT / "proto" / "visualsearch" / "v1" / "visual_search.proto"

CHECK = textwrap.dedent('''
    import asyncio, sys
    import numpy as np
    from services.search import product_fields as pf
    pf.PRODUCT_FIELDS.append(pf.ProductField("brand", pf.TEXT, 32, filter="brands"))  # the recipe's one entry

    from services.api import pb
    from services.domain import ModelVersions
    from services.importer import ProductSpec, product_request, Summary
    from services.search import mapping
    from services.search.catalog_rows import image_rows
    from services.search.config import Settings
    from services.search.errors import InvalidInput
    from services.search.filters import build_expression
    from services.search.milvus_store import MilvusStore
    from services.search.objects import single
    from services.search.validation import check_product

    settings = Settings.from_env({"VS_MILVUS_URI": sys.argv[1]})
    request = pb.ImportProductsRequest(product=pb.Product(product_id="p1", category="bags", brand="acme"),
                                       images=[pb.ProductImage(image_id="main", content=b"x")])
    values = check_product(request, settings)
    assert values["brand"] == "acme", values
    try:
        check_product(pb.ImportProductsRequest(product=pb.Product(product_id="p2", brand="b" * 33),
                                               images=request.images), settings)
        raise AssertionError("a 33-character brand was accepted")
    except InvalidInput as exc:
        assert "product.brand must be at most 32 characters" in str(exc), exc

    models = ModelVersions("det", "a" * 64, "emb", "b" * 64, 4)
    store = MilvusStore(settings)
    store.connect(models)
    vector = np.array([1, 0, 0, 0], np.float32)
    rows = {}
    for pid, brand in (("p1", "acme"), ("p2", "other")):
        v = check_product(pb.ImportProductsRequest(product=pb.Product(product_id=pid, brand=brand),
                                                   images=request.images), settings)
        rows[pid] = image_rows(pid, "main", "k" * 64, single(np.zeros(4), vector, "image"), v)
        rows[pid][0].update(product_head=True, image_head=True)
    store.replace_products(rows, [])
    store.wait_visible({pid: {r["pk"] for r in r_} for pid, r_ in rows.items()})
    expression = build_expression(pb.Filter(brands=["acme"]))
    assert expression == 'brand in ["acme"]', expression
    hits = store.search(vector[None], 10, expression)[0]
    assert [h.fields["product_id"] for h in hits] == ["p1"], hits
    match = mapping.match(hits[0])
    assert match.product.brand == "acme", match

    from services.search.product_fields import manifest_values
    fields = manifest_values({"product_id": "p3", "image_path": "a.jpg", "brand": "zeta", "price": "2"}, "row 2")
    assert fields == {"price": 2.0, "brand": "zeta"}, fields
    print("ok")
''')


def test_adding_a_filterable_field_is_one_table_entry_and_the_proto_field(tmp_path):
    proto_dir = tmp_path / "proto" / "visualsearch" / "v1"
    proto_dir.mkdir(parents=True)
    text = PROTO.read_text()
    product = "message Product {\n"
    filter_ = "message Filter {\n"
    assert product in text and filter_ in text
    text = text.replace(product, product + "  string brand = 100;\n")
    text = text.replace(filter_, filter_ + "  repeated string brands = 100;\n")
    (proto_dir / PROTO.name).write_text(text)
    gen = tmp_path / "gen"
    gen.mkdir()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path / 'proto'}", f"--python_out={gen}",
                    f"--grpc_python_out={gen}", str(proto_dir / PROTO.name)], check=True)
    env = {**os.environ, "PYTHONPATH": f"{gen}:{ROOT}"}
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "catalog.db")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr
