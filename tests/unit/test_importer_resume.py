"""The importer resumes an interrupted run of the same catalog into the same service."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from services import importer
from services.api import pb


class Interrupted(Exception):
    pass


def catalog(tmp_path: Path, n: int) -> list[importer.ProductSpec]:
    specs = []
    for i in range(n):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(b"jpeg")
        specs.append(importer.ProductSpec(f"p{i}", [("main", path, pb.EMBED_MODE_DETECT)]))
    return specs


class RecordingImporter(importer.Importer):
    def __init__(self, fail_at_call: int | None = None) -> None:
        super().__init__("127.0.0.1:1", chunk=4, concurrency=1)
        self.sent: list[str] = []
        self.fail_at_call = fail_at_call

    def _send(self, requests):
        if self.fail_at_call is not None and len(self.sent) // 4 == self.fail_at_call:
            raise Interrupted
        self.sent += [r.product.product_id for r in requests]
        return pb.ImportProductsResponse(products_imported=len(requests), items=[
            pb.ImportItemStatus(product_id=r.product.product_id, image_id="main", vectors=1) for r in requests])


def test_an_interrupted_import_resumes_after_the_last_finished_chunk(tmp_path):
    products = catalog(tmp_path, 10)
    state = importer.ImportState(products, "search:50051", folder=tmp_path / "state")
    first = RecordingImporter(fail_at_call=2)
    with pytest.raises(Interrupted):
        first.run(products, progress=False, state=state)
    assert first.sent == [f"p{i}" for i in range(8)] and state.products_done() == 8
    second = RecordingImporter()
    summary = second.run(products, progress=False, state=state)
    assert second.sent == ["p8", "p9"] and summary.products_imported == 2
    assert not state.path.exists()  # a finished run starts from the beginning next time


def test_the_saved_place_belongs_to_one_catalog_and_one_service(tmp_path):
    products = catalog(tmp_path, 6)
    state = importer.ImportState(products, "search:50051", folder=tmp_path)
    state.save(4)
    changed = catalog(tmp_path, 6)
    changed[0].fields["price"] = 3.0
    assert importer.ImportState(changed, "search:50051", folder=tmp_path).products_done() == 0
    assert importer.ImportState(products, "other:50051", folder=tmp_path).products_done() == 0
    assert importer.ImportState(products, "search:50051", folder=tmp_path).products_done() == 4


def test_with_calls_at_once_the_saved_place_is_the_last_chunk_finished_with_all_before_it(tmp_path):
    products = catalog(tmp_path, 12)
    state = importer.ImportState(products, "search:50051", folder=tmp_path / "state")
    third_done = threading.Event()

    class OutOfOrder(importer.Importer):
        def __init__(self) -> None:
            super().__init__("127.0.0.1:1", chunk=4, concurrency=3)
            self.sent: list[str] = []

        def _send(self, requests):
            first = requests[0].product.product_id
            if first == "p4":  # the second chunk fails after the third one finished
                assert third_done.wait(10)
                raise Interrupted
            self.sent += [r.product.product_id for r in requests]
            if first == "p8":
                third_done.set()
            return pb.ImportProductsResponse(products_imported=len(requests))

    run = OutOfOrder()
    with pytest.raises(Interrupted):
        run.run(products, progress=False, state=state)
    assert sorted(run.sent) == sorted(f"p{i}" for i in (0, 1, 2, 3, 8, 9, 10, 11))
    assert state.products_done() == 4  # the third chunk finished, but the second did not: resume at p4
