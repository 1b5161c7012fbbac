"""Each step of the RPC handler (rpc.py) on its own."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from prometheus_client import REGISTRY

from services.search import rpc
from services.search.admission import Admission
from services.search.auth import Caller, Guard
from services.search.errors import BackendUnavailable, InvalidInput, Overloaded, PermissionDenied
from tests.unit.test_security_units import Context


def test_identify_names_the_caller_and_checks_the_role():
    outcome = rpc.Outcome("DeleteProducts")
    caller = rpc.identify(Guard(""), Context(peer="ipv4:10.0.0.7:4000"), "catalog.write", outcome)
    assert caller.name == "ipv4:10.0.0.7" and outcome.caller is caller


def test_identify_refuses_a_caller_without_the_role(tmp_path):
    outcome = rpc.Outcome("DeleteProducts")
    guard = Guard("")
    guard.caller = lambda _context: Caller("web", frozenset({"search"}), "token")
    with pytest.raises(PermissionDenied):
        rpc.identify(guard, Context(), "catalog.write", outcome)
    assert outcome.caller.name == "web"  # known for the audit line even when refused


def test_admitted_holds_a_slot_for_the_call_only():
    admission = Admission(limit=1, per_caller=1)
    caller = Caller("web", frozenset(), "peer")
    with rpc.admitted(admission, caller):
        assert admission.in_flight == 1
        with pytest.raises(Overloaded), rpc.admitted(admission, caller):
            pass
    assert admission.in_flight == 0
    with pytest.raises(RuntimeError), rpc.admitted(admission, caller):
        raise RuntimeError("boom")
    assert admission.in_flight == 0


@pytest.mark.parametrize("exc, code, message", [
    (InvalidInput("bad image"), grpc.StatusCode.INVALID_ARGUMENT, "bad image"),
    (BackendUnavailable("Triton down"), grpc.StatusCode.UNAVAILABLE, "Triton down"),
    (asyncio.CancelledError(), grpc.StatusCode.CANCELLED, ""),
    (KeyError("x"), grpc.StatusCode.INTERNAL, "internal error; see the server log"),
])
def test_failed_maps_each_failure_to_its_status(exc, code, message, caplog):
    outcome = rpc.Outcome("SearchByImage")
    with caplog.at_level(logging.WARNING, logger="services.search.server"):
        rpc.failed(outcome, exc)
    assert (outcome.code, outcome.message) == (code, message)
    logged = [r.getMessage() for r in caplog.records]
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert not logged  # the caller's business, not the operator's
    if code == grpc.StatusCode.INTERNAL:
        assert logged == ["unexpected error"] and caplog.records[0].exc_info


def test_record_counts_by_method_and_code():
    def count():
        return REGISTRY.get_sample_value("vs_requests_total", {"method": "StepTest", "code": "UNAVAILABLE"}) or 0
    before = count()
    outcome = rpc.Outcome("StepTest", code=grpc.StatusCode.UNAVAILABLE)
    rpc.record(outcome)
    assert count() == before + 1


def test_audit_line_says_who_did_what():
    outcome = rpc.Outcome("DeleteProducts", caller=Caller("importer", frozenset(), "certificate"))
    line = rpc.audit_line(outcome, "ipv4:10.0.0.9:1", {"ids": 2}, lambda request, _response: dict(request))
    assert line["audit"] and line["caller"] == "importer" and line["credential"] == "certificate"
    assert line["code"] == "OK" and line["ids"] == 2 and line["peer"] == "ipv4:10.0.0.9:1"


def test_catalog_writes_have_their_own_limit_below_the_total():
    admission = Admission(limit=3, per_caller=3, write_limit=1)
    importer, shop = Caller("importer", frozenset(), "token"), Caller("shop", frozenset(), "token")
    with rpc.admitted(admission, importer, write=True):
        with pytest.raises(Overloaded, match="VS_MAX_WRITES_IN_FLIGHT"), rpc.admitted(admission, importer, write=True):
            pass
        with rpc.admitted(admission, shop), rpc.admitted(admission, shop):  # the slots kept for searches
            assert (admission.in_flight, admission.writes) == (3, 1)
    assert (admission.in_flight, admission.writes) == (0, 0)
