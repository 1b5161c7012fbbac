"""The importer CLI: folder and manifest parsing, and a real import through the service."""

from __future__ import annotations

import json

import pytest

from services import importer
from services.api import pb
from tests.integration.service_process import ServiceProcess
from tools.sample_photos import encode


def test_folder_layout_becomes_products(tmp_path, photos):
    (tmp_path / "moto-9").mkdir()
    (tmp_path / "moto-9" / "left.jpg").write_bytes(encode(photos["motorcycle_left"].pixels))
    (tmp_path / "moto-9" / "right.png").write_bytes(encode(photos["motorcycle_right"].pixels, "PNG"))
    (tmp_path / "cup-9.jpg").write_bytes(encode(photos["coffee"].pixels))
    (tmp_path / "notes.txt").write_text("ignored")
    products = {p.product_id: p for p in importer.from_folder(tmp_path, category="demo")}
    assert set(products) == {"moto-9", "cup-9"}
    assert [i[0] for i in products["moto-9"].images] == ["left", "right"]
    assert products["cup-9"].images[0][0] == "main" and products["cup-9"].fields == {"category": "demo"}


def test_csv_manifest_groups_rows_by_product(tmp_path):
    manifest = tmp_path / "catalog.csv"
    manifest.write_text("product_id,image_path,category,price,attr.color,attributes\n"
                        "p1,a.jpg,shoes,10.5,red,\n"
                        'p1,b.jpg,shoes,10.5,red,"{""size"": ""42""}"\n'
                        "p2,c.jpg,bags,3,,\n")
    products = {p.product_id: p for p in importer.from_manifest(manifest)}
    assert [i[0] for i in products["p1"].images] == ["a", "b"]
    assert products["p1"].fields["attributes"] == {"color": "red", "size": "42"}
    assert products["p1"].fields["price"] == 10.5
    assert products["p2"].images[0][1] == (tmp_path / "c.jpg").resolve()


@pytest.mark.parametrize("line, message", [
    ('{"image_path": "a.jpg"}', "product_id and image_path are required"),
    ('{"product_id": "p", "image_path": "a.jpg", "price": "cheap"}', "not a number"),
    ('{"product_id": "p", "image_path": "a.jpg", "attributes": [1]}', "JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_manifest_rows_name_the_line(tmp_path, line, message):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(line + "\n")
    with pytest.raises(importer.ManifestError, match=f"m.jsonl:1: .*{message}"):
        importer.from_manifest(manifest)


def test_import_reports_failures_and_reruns_safely(triton, tmp_path, photos, capsys):
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "c.db"), tmp_path / "svc.log").start()
    try:
        folder = tmp_path / "photos"
        folder.mkdir()
        (folder / "cup-1.jpg").write_bytes(encode(photos["coffee"].pixels))
        (folder / "cat-1.jpg").write_bytes(encode(photos["cat"].pixels))
        (folder / "broken-1.jpg").write_bytes(b"\xff\xd8\xff garbage")
        manifest = tmp_path / "catalog.jsonl"
        manifest.write_text("\n".join(json.dumps(r) for r in [
            {"product_id": "cup-1", "image_path": "photos/cup-1.jpg", "category": "kitchen", "price": 9},
            {"product_id": "cat-1", "image_path": "photos/cat-1.jpg", "mode": "whole_image"},
            {"product_id": "broken-1", "image_path": "photos/broken-1.jpg"},
            {"product_id": "missing-1", "image_path": "photos/missing.jpg"},
        ]) + "\n")
        argv = ["--address", svc.address, "--manifest", str(manifest), "--no-progress"]
        assert importer.main(argv) == 1
        out = capsys.readouterr().out
        assert "imported 2 products" in out and "2 images failed" in out
        assert "broken-1/broken-1: invalid image" in out and "missing-1/missing: cannot read file" in out
        first = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert importer.main(argv) == 1  # a re-run changes nothing
        again = svc.catalog.GetCatalogStats(pb.GetCatalogStatsRequest())
        assert (again.products, again.images, again.vectors) == (first.products, first.images, first.vectors) \
            and first.products == 2
    finally:
        svc.stop()
