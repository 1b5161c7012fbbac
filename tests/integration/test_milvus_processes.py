"""The test tool that runs the real Milvus server never deletes its data to get going."""

from __future__ import annotations

import pytest

from tools.stack.milvus_processes import MilvusServer


def test_a_failed_start_is_retried_on_the_same_data_which_is_kept(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "segment").write_text("acknowledged rows")
    attempts = []

    def fail(self, timeout_s):  # a server that never serves
        attempts.append(timeout_s)
        raise TimeoutError("milvus did not start")

    monkeypatch.setattr(MilvusServer, "_start_once", fail)
    with pytest.raises(TimeoutError):
        MilvusServer(data).start(timeout_s=1, attempts=2)
    assert len(attempts) == 2
    assert (data / "segment").read_text() == "acknowledged rows"
