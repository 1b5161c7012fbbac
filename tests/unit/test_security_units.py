"""Authentication, authorization, admission and stream limits without a server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os

import pytest

from services.api import pb
from services.channels import ClientConfigError, ClientSecurity
from services.search import auth
from services.search.admission import Admission
from services.search.auth import Guard, Policy, token_digest
from services.search.catalog import Catalog
from services.search.config import ConfigError, Settings
from services.search.errors import DeadlineExceeded, InvalidInput, Overloaded, PermissionDenied, Unauthenticated
from tests.unit.conftest import no_deadline
from tests.unit.fakes import objects, unit


class Context:
    """What Guard reads from a grpc.aio.ServicerContext."""

    def __init__(self, metadata=(), certificate: str | None = None, peer: str = "ipv4:10.1.2.3:50123",
                 tls: bool = True):
        self.metadata, self.certificate, self._peer, self.tls = tuple(metadata), certificate, peer, tls

    def invocation_metadata(self):
        return self.metadata

    def auth_context(self):
        context = {"transport_security_type": [b"ssl" if self.tls else b"insecure"]}
        return {**context, "x509_common_name": [self.certificate.encode()]} if self.certificate else context

    def peer(self):
        return self._peer


@pytest.fixture
def policy_file(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"callers": [
        {"name": "web", "roles": ["search"], "token_sha256": [token_digest("t-web").hex()]},
        {"name": "importer", "roles": ["catalog.write", "search"], "certificate": "importer.svc"}]}))
    return path


def test_tokens_and_certificates_map_to_callers_and_roles(policy_file):
    guard = Guard(str(policy_file))
    web = guard.caller(Context([("authorization", "Bearer t-web")]))
    assert (web.name, web.roles, web.how) == ("web", frozenset({"search"}), "token")
    guard.authorize(web, auth.SEARCH, "SearchByImage")
    with pytest.raises(PermissionDenied, match="caller 'web' lacks the role 'catalog.write' that DeleteProducts "
                                               r"needs \(its roles: search\)"):
        guard.authorize(web, auth.CATALOG_WRITE, "DeleteProducts")
    importer = guard.caller(Context(certificate="importer.svc"))
    assert importer.name == "importer" and auth.CATALOG_WRITE in importer.roles


@pytest.mark.parametrize("context, fragment", [
    (Context(), "no credentials: send 'authorization: Bearer <token>' metadata or a client certificate"),
    (Context([("authorization", "Bearer nope")]), "the bearer token is not valid"),
    (Context([("authorization", "Basic dXNlcjpwdw==")]), "must be 'Bearer <token>'"),
])
def test_missing_or_wrong_credentials_are_unauthenticated(policy_file, context, fragment):
    with pytest.raises(Unauthenticated, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Guard(str(policy_file)).caller(context)


def test_a_token_without_tls_is_refused_unless_a_mesh_terminates_tls(policy_file):
    plaintext = Context([("authorization", "Bearer t-web")], tls=False)
    with pytest.raises(Unauthenticated, match="bearer tokens are refused over plaintext"):
        Guard(str(policy_file)).caller(plaintext)
    assert Guard(str(policy_file), allow_plaintext_tokens=True).caller(plaintext).name == "web"


def test_a_verified_certificate_the_policy_does_not_name_has_no_role(policy_file):
    guard = Guard(str(policy_file))
    caller = guard.caller(Context(certificate="stranger.svc"))
    assert caller.name == "stranger.svc" and not caller.roles
    with pytest.raises(PermissionDenied, match="its roles: none"):
        guard.authorize(caller, auth.SEARCH, "SearchByImage")


def test_without_a_policy_every_caller_has_every_role_and_is_named_by_its_address():
    caller = Guard("").caller(Context())
    assert caller.name == "ipv4:10.1.2.3" and caller.roles == frozenset(auth.ROLES)


def test_a_rotated_policy_is_picked_up_and_a_broken_one_keeps_the_last(policy_file):
    guard = Guard(str(policy_file))
    policy_file.write_text(json.dumps({"callers": [
        {"name": "web", "roles": ["search"], "token_sha256": [token_digest("t-new").hex()]}]}))
    os.utime(policy_file, ns=(1, 2))  # a new mtime even within the same clock tick
    assert guard.caller(Context([("authorization", "Bearer t-new")])).name == "web"
    with pytest.raises(Unauthenticated):
        guard.caller(Context([("authorization", "Bearer t-web")]))
    policy_file.write_text("{ half written")
    os.utime(policy_file, ns=(3, 4))
    assert guard.caller(Context([("authorization", "Bearer t-new")])).name == "web"


@pytest.mark.parametrize("content, fragment", [
    ('{"callers": [{"name": "x", "roles": ["admin"], "certificate": "x"}]}', "unknown roles ['admin']"),
    ('{"callers": [{"name": "x", "roles": ["search"], "token_sha256": ["abc"]}]}', "64 hex digits"),
    ('{"callers": [{"roles": ["search"], "certificate": "x"}]}', "callers[0] needs a name"),
    ('{"callers": [{"name": "x", "roles": ["search"]}]}', "needs token_sha256 or certificate"),
    ('[]', "expected"),
])
def test_a_bad_policy_is_a_start_up_error_naming_the_setting(tmp_path, content, fragment):
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        Policy.load(path)
    assert "VS_AUTH_POLICY=" in str(err.value) and fragment in str(err.value)


def test_hash_token_prints_the_digest_the_policy_stores(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert auth.main(["hash-token"]) == 0
    assert capsys.readouterr().out.strip() == token_digest("s3cret").hex()


def test_one_caller_cannot_take_every_slot():
    admission = Admission(limit=3, per_caller=2)
    admission.enter("a")
    admission.enter("a")
    with pytest.raises(Overloaded, match="caller 'a' is at its limit of 2 requests in flight"):
        admission.enter("a")
    admission.enter("b")
    with pytest.raises(Overloaded, match="server is at its limit of 3 requests in flight"):
        admission.enter("c")
    admission.leave("a")
    admission.enter("c")
    assert admission.in_flight == 3 and dict(admission.by_caller) == {"a": 1, "b": 1, "c": 1}


def _catalog(settings, backends, fake_triton, **changes):
    for i in range(5):
        fake_triton.detections[f"i{i}".encode()] = objects(("cup", 0.9, unit(1, 0, 0, i)))
    return Catalog(dataclasses.replace(settings, **changes), backends)


def _request(i: int) -> pb.ImportProductsRequest:
    return pb.ImportProductsRequest(product=pb.Product(product_id=f"P{i}"),
                                    images=[pb.ProductImage(image_id="main", content=f"i{i}".encode())])


def test_an_idle_stream_is_closed_after_importing_what_it_sent(settings, backends, fake_triton, fake_store):
    catalog = _catalog(settings, backends, fake_triton, import_idle_timeout_s=0.1)

    async def trickle():
        yield _request(0)
        yield _request(1)
        await asyncio.sleep(30)  # then nothing
        yield _request(2)

    with pytest.raises(DeadlineExceeded, match=r"sent nothing for 0 s \(VS_IMPORT_IDLE_TIMEOUT_S\).*2 products"):
        asyncio.run(catalog.import_products(trickle(), no_deadline))
    assert {r["product_id"] for r in fake_store.rows.values()} == {"P0", "P1"}


def test_a_stream_that_keeps_trickling_meets_the_total_limit(settings, backends, fake_triton):
    catalog = _catalog(settings, backends, fake_triton, import_idle_timeout_s=1.0, import_max_duration_s=0.3)

    async def slow():
        for i in range(5):
            await asyncio.sleep(0.1)
            yield _request(i)

    with pytest.raises(DeadlineExceeded, match="VS_IMPORT_MAX_DURATION_S"):
        asyncio.run(catalog.import_products(slow(), no_deadline))


def test_products_past_the_per_call_cap_are_refused(settings, backends, fake_triton, fake_store):
    catalog = _catalog(settings, backends, fake_triton, import_max_products=3)

    async def many():
        for i in range(5):
            yield _request(i)

    with pytest.raises(InvalidInput, match=r"at most 3 products per ImportProducts call \(VS_IMPORT_MAX_PRODUCTS\)"):
        asyncio.run(catalog.import_products(many(), no_deadline))
    assert {r["product_id"] for r in fake_store.rows.values()} == {"P0", "P1", "P2"}


@pytest.mark.parametrize("env, fragment", [
    ({"VS_TLS_CERT": "{f}"}, "VS_TLS_CERT is set but VS_TLS_KEY is not"),
    ({"VS_TLS_CERT": "{f}", "VS_TLS_KEY": "/nonexistent.pem"}, "VS_TLS_KEY='/nonexistent.pem': no such file"),
    ({"VS_TLS_CLIENT_CA": "{f}"}, "VS_TLS_CLIENT_CA needs VS_TLS_CERT"),
    ({"VS_TRITON_TLS_KEY": "{f}"}, "VS_TRITON_TLS_KEY is set but VS_TRITON_TLS_CERT is not"),
    ({"VS_AUTH_POLICY": "/nonexistent.json", "VS_ALLOW_PLAINTEXT_TOKENS": "true"},
     "VS_AUTH_POLICY='/nonexistent.json': no such file"),
    ({"VS_AUTH_POLICY": "{f}"}, "VS_AUTH_POLICY is set but the port is plaintext"),
    ({"VS_TOKEN_LISTEN": "0.0.0.0:50053"}, "VS_TOKEN_LISTEN needs VS_TLS_CERT, VS_TLS_KEY and VS_TLS_CLIENT_CA"),
    ({"VS_MAX_IN_FLIGHT_PER_CALLER": "0"}, "VS_MAX_IN_FLIGHT_PER_CALLER='0': out of range"),
    ({"VS_REFLECTION": "maybe"}, "VS_REFLECTION='maybe': must be one of on, search, off"),
])
def test_bad_security_settings_name_the_variable(tmp_path, env, fragment):
    existing = tmp_path / "x.pem"
    existing.write_text("x")
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        Settings.from_env({k: v.format(f=existing) for k, v in env.items()})


@pytest.mark.parametrize("security, fragment", [
    (ClientSecurity(token_file="t"), "needs TLS"),
    (ClientSecurity(ca="ca.pem", cert="c.pem"), "needs both --tls-cert and --tls-key"),
])
def test_clients_never_send_a_token_in_plaintext(security, fragment):
    with pytest.raises(ClientConfigError, match=fragment):
        security.channel("127.0.0.1:1")
