"""TLS, mutual TLS, per-method authorization and abuse limits against the real service (real
Triton, Milvus Lite) with real certificates made at test time."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time

import grpc
import pytest
import tritonclient.grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from services import importer
from services.api import PROTOSET, pb, pb_grpc
from services.channels import ClientSecurity
from services.search import triton_client
from services.search.auth import token_digest
from tests.conftest import ROOT, require
from tests.integration.conftest import REPOSITORY, free_port
from tests.integration.service_process import ServiceProcess
from tools.loadtest import ghz
from tools.sample_photos import encode
from tools.stack.certificates import CertificateAuthority, serial_of
from tools.stack.triton_launcher import GrpcTLS, TritonServer

WEB_TOKEN = "web-frontend-token-0123456789"
STATS_TOKEN = "stats-reader-token-9876543210"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder)
    other = CertificateAuthority(folder / "other", "some-other-ca")
    issued = {"server": ca.issue("search.visualsearch.svc", server=True, file_stem="server"),
              "importer": ca.issue("catalog-importer"), "web": ca.issue("web-frontend-pod"),
              "expired": ca.issue("catalog-importer", expired=True, file_stem="expired"),
              "foreign": other.issue("catalog-importer", file_stem="foreign")}
    for name, token in (("web.token", WEB_TOKEN), ("stats.token", STATS_TOKEN), ("wrong.token", "not-a-token")):
        (folder / name).write_text(token + "\n")
    policy = {"callers": [
        {"name": "web-frontend", "roles": ["search"], "token_sha256": [token_digest(WEB_TOKEN).hex()]},
        {"name": "stats-reader", "roles": ["catalog.read"], "token_sha256": [token_digest(STATS_TOKEN).hex()]},
        {"name": "catalog-importer", "roles": ["search", "catalog.write", "catalog.read"],
         "certificate": "catalog-importer"}]}
    (folder / "policy.json").write_text(json.dumps(policy))
    return folder, ca, issued


def client(pki, cert: str | None = None, token: str | None = None) -> ClientSecurity:
    folder, ca, issued = pki
    pair = issued[cert] if cert else None
    return ClientSecurity(ca=str(ca.cert), cert=str(pair.cert) if pair else "", key=str(pair.key) if pair else "",
                          token_file=str(folder / token) if token else "")


@pytest.fixture(scope="module")
def mtls_service(triton, pki, tmp_path_factory):
    """Mutual TLS + the policy; one request in flight per caller; imports idle out after 2 s."""
    folder, ca, issued = pki
    tmp = tmp_path_factory.mktemp("mtls")
    token_port = free_port()
    svc = ServiceProcess(triton.grpc_url, str(tmp / "catalog.db"), tmp / "service.log",
                         security=client(pki, "importer"),
                         VS_TLS_CERT=str(issued["server"].cert), VS_TLS_KEY=str(issued["server"].key),
                         VS_TLS_CLIENT_CA=str(ca.cert), VS_AUTH_POLICY=str(folder / "policy.json"),
                         VS_TOKEN_LISTEN=f"127.0.0.1:{token_port}",
                         VS_MAX_IN_FLIGHT_PER_CALLER="1", VS_IMPORT_IDLE_TIMEOUT_S="2").start()
    svc.token_address = f"127.0.0.1:{token_port}"
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def imported(mtls_service, pki, photos, tmp_path_factory):
    """The importer CLI imports over mutual TLS."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("coffee", "cat"):
        (folder / f"{name}.jpg").write_bytes(encode(photos[name].pixels))
    _, ca, issued = pki
    code = importer.main(["--address", mtls_service.address, "--folder", str(folder), "--category", "demo",
                          "--no-progress", "--tls-ca", str(ca.cert), "--tls-cert", str(issued["importer"].cert),
                          "--tls-key", str(issued["importer"].key)])
    assert code == 0
    return ["cat", "coffee"]


def stubs(service, security: ClientSecurity):
    channel = security.channel(service.address)
    return pb_grpc.VisualSearchStub(channel), pb_grpc.CatalogStub(channel)


def stats(service) -> pb.CatalogStats:
    return service.catalog.GetCatalogStats(pb.GetCatalogStatsRequest(), timeout=30)


def test_mutual_tls_search_finds_the_imported_product(mtls_service, imported, photos):
    response = mtls_service.search.SearchByImage(
        pb.SearchByImageRequest(image=encode(photos["cat"].pixels), top_k=1), timeout=60)
    assert response.objects[0].matches[0].product_id == "cat"
    assert stats(mtls_service).products == 2


@pytest.mark.parametrize("security", [
    ClientSecurity(),  # plaintext to a TLS port
], ids=["plaintext"])
def test_plaintext_to_the_tls_port_fails(mtls_service, imported, security):
    search, _ = stubs(mtls_service, security)
    with pytest.raises(grpc.RpcError) as err:
        search.SearchByImage(pb.SearchByImageRequest(image=b"x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("cert", [None, "expired", "foreign"], ids=["no-client-cert", "expired", "other-ca"])
def test_the_mutual_tls_port_refuses_clients_without_a_valid_certificate(mtls_service, imported, pki, cert):
    if cert == "foreign":
        folder, _ca, issued = pki
        security = ClientSecurity(ca=str(pki[1].cert), cert=str(issued["foreign"].cert), key=str(issued["foreign"].key))
    else:
        security = client(pki, cert)
    search, _ = stubs(mtls_service, security)
    with pytest.raises(grpc.RpcError) as err:
        search.SearchByImage(pb.SearchByImageRequest(image=b"x"), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_certificate_and_token_callers_both_reach_one_deployment(mtls_service, imported, pki, photos):
    """gRPC Python cannot ask for a client certificate without requiring one, so token callers
    have their own TLS port (VS_TOKEN_LISTEN) beside the mutual TLS one."""
    image = encode(photos["cat"].pixels)
    with client(pki, token="web.token").channel(mtls_service.token_address) as channel:  # the CA and a token
        found = pb_grpc.VisualSearchStub(channel).SearchByImage(pb.SearchByImageRequest(image=image, top_k=1),
                                                                timeout=60)
    assert found.products[0].product_id == "cat"
    with client(pki, "importer").channel(mtls_service.address) as channel:  # a certificate, no token
        found = pb_grpc.VisualSearchStub(channel).SearchByImage(pb.SearchByImageRequest(image=image, top_k=1),
                                                                timeout=60)
    assert found.products[0].product_id == "cat"
    with client(pki, "importer").channel(mtls_service.token_address) as channel:  # no certificate asked for there
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.VisualSearchStub(channel).SearchByImage(pb.SearchByImageRequest(image=image), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_token_policy_without_tls_refuses_to_start(triton, pki, tmp_path):
    folder, _ca, _issued = pki
    svc = ServiceProcess(triton.grpc_url, str(tmp_path / "catalog.db"), tmp_path / "service.log",
                         VS_AUTH_POLICY=str(folder / "policy.json"))
    with pytest.raises(RuntimeError, match="exited with 2"):
        svc.start()
    assert "VS_AUTH_POLICY is set but the port is plaintext" in svc.log_path.read_text()


def test_a_search_only_caller_cannot_delete_and_nothing_changes(mtls_service, imported, pki):
    before = stats(mtls_service)
    search, catalog = stubs(mtls_service, client(pki, "web", "web.token"))
    with pytest.raises(grpc.RpcError) as err:
        catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["cat", "coffee"]), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'web-frontend' lacks the role 'catalog.write' that DeleteProducts needs" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        catalog.ImportProducts(iter([pb.ImportProductsRequest()]), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    after = stats(mtls_service)
    assert (after.products, after.vectors) == (before.products, before.vectors)
    # its own role passes authorization (and then meets the image check)
    with pytest.raises(grpc.RpcError) as err:
        search.SearchByImage(pb.SearchByImageRequest(image=b"x"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_known_certificate_without_a_token_gets_the_roles_of_its_policy_entry(mtls_service, imported, pki):
    _, catalog = stubs(mtls_service, client(pki, "web"))  # a valid certificate that the policy does not name
    with pytest.raises(grpc.RpcError) as err:
        catalog.GetCatalogStats(pb.GetCatalogStatsRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "'web-frontend-pod'" in err.value.details()
    _, catalog = stubs(mtls_service, client(pki, "web", "stats.token"))
    assert catalog.GetCatalogStats(pb.GetCatalogStatsRequest(), timeout=30).products == 2


def test_a_wrong_token_is_unauthenticated(mtls_service, imported, pki):
    search, _ = stubs(mtls_service, client(pki, "web", "wrong.token"))
    with pytest.raises(grpc.RpcError) as err:
        search.SearchByImage(pb.SearchByImageRequest(image=b"x"), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def audit_lines(service, method: str, caller: str, code: str, timeout_s: float = 5, **fields) -> list[dict]:
    """The service's audit log lines for ``method`` by ``caller`` ending ``code`` (and holding
    ``fields``). A refused call's line follows its status, which reaches the caller first."""
    deadline = time.monotonic() + timeout_s
    while True:
        # only whole lines: the service may be writing the last one as the file is read
        text = service.log_path.read_text()
        whole = text[:text.rfind("\n") + 1].splitlines()
        lines = [json.loads(line) for line in whole if '"audit": true' in line]
        found = [line for line in lines if (line["method"], line["caller"], line["code"]) == (method, caller, code)
                 and fields.items() <= line.items()]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_catalog_writes_leave_an_audit_line(mtls_service, imported, pki):
    _, catalog = stubs(mtls_service, client(pki, "importer"))
    assert catalog.DeleteProducts(pb.DeleteProductsRequest(product_ids=["nothing-here"]), timeout=30)
    _, denied = stubs(mtls_service, client(pki, "web", "web.token"))
    with pytest.raises(grpc.RpcError):
        denied.DeleteProducts(pb.DeleteProductsRequest(product_ids=["cat"]), timeout=30)
    deleted = audit_lines(mtls_service, "DeleteProducts", "catalog-importer", "OK", product_ids=["nothing-here"])
    assert deleted and {"credential": "certificate", "products": 1, "vectors_deleted": 0}.items() <= deleted[-1].items()
    refused = audit_lines(mtls_service, "DeleteProducts", "web-frontend", "PERMISSION_DENIED", product_ids=["cat"])
    assert refused and refused[-1]["credential"] == "token" and refused[-1]["vectors_deleted"] is None
    imports = audit_lines(mtls_service, "ImportProducts", "catalog-importer", "OK")
    assert imports and imports[0]["products_imported"] == 2 and imports[0]["vectors_written"] >= 2


def test_an_idle_import_stream_is_closed_and_frees_its_slot(mtls_service, imported, pki):
    _, catalog = stubs(mtls_service, client(pki, "importer"))
    release = threading.Event()

    def silent():
        release.wait(30)  # a client that opens the stream and sends nothing
        return
        yield

    result: dict = {}

    def run():
        start = time.monotonic()
        try:
            catalog.ImportProducts(silent(), timeout=60)
        except grpc.RpcError as exc:
            result.update(code=exc.code(), details=exc.details())
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    # while the stream holds the caller's only slot, its other calls are turned away
    with pytest.raises(grpc.RpcError) as err:
        catalog.GetCatalogStats(pb.GetCatalogStatsRequest(), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "VS_MAX_IN_FLIGHT_PER_CALLER" in err.value.details()
    thread.join(20)
    release.set()
    assert result["code"] == grpc.StatusCode.DEADLINE_EXCEEDED and "VS_IMPORT_IDLE_TIMEOUT_S" in result["details"]
    assert result["seconds"] < 10
    assert catalog.GetCatalogStats(pb.GetCatalogStatsRequest(), timeout=30).products == 2  # the slot is free


# -- TLS without client certificates: bearer tokens, and certificate rotation -------------

@pytest.fixture(scope="module")
def tls_service(triton, pki, tmp_path_factory):
    folder, ca, issued = pki
    tmp = tmp_path_factory.mktemp("tls")
    live = tmp / "live"
    live.mkdir()
    health_port = free_port()
    for name in ("cert", "key"):
        (live / f"{name}.pem").write_bytes(getattr(issued["server"], name).read_bytes())
    svc = ServiceProcess(triton.grpc_url, str(tmp / "catalog.db"), tmp / "service.log",
                         security=client(pki, token="stats.token"),
                         VS_TLS_CERT=str(live / "cert.pem"), VS_TLS_KEY=str(live / "key.pem"),
                         VS_AUTH_POLICY=str(folder / "policy.json"),
                         VS_HEALTH_LISTEN=f"127.0.0.1:{health_port}").start()
    svc.live, svc.health_port = live, health_port
    yield svc
    svc.stop()


def test_tls_search_with_a_token_works_and_without_one_is_unauthenticated(tls_service, pki, photos):
    search, _ = stubs(tls_service, client(pki, token="web.token"))
    response = search.SearchByImage(pb.SearchByImageRequest(image=encode(photos["cat"].pixels)), timeout=60)
    assert response.objects  # an empty catalog: groups without matches
    search, _ = stubs(tls_service, client(pki))
    with pytest.raises(grpc.RpcError) as err:
        search.SearchByImage(pb.SearchByImageRequest(image=b"x"), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.value.details()


def test_kubernetes_probes_get_plaintext_health_on_their_own_port(tls_service):
    with grpc.insecure_channel(f"127.0.0.1:{tls_service.health_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:  # and nothing else
            pb_grpc.VisualSearchStub(channel).SearchByImage(pb.SearchByImageRequest(image=b"x"), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def served_serial(address: str, ca_file: str) -> int:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as sock, \
            context.wrap_socket(sock, server_hostname=host) as tls:
        return serial_of(ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True)).encode())


def test_a_rotated_certificate_is_served_without_restart(tls_service, pki):
    _, ca, issued = pki
    first = served_serial(tls_service.address, str(ca.cert))
    assert first == serial_of(issued["server"].cert.read_bytes())
    rotated = ca.issue("search.visualsearch.svc", server=True, file_stem="server-rotated")
    for name in ("key", "cert"):  # as a Secret volume does: new files swapped in
        tmp = tls_service.live / f".{name}.tmp"
        tmp.write_bytes(getattr(rotated, name).read_bytes())
        os.replace(tmp, tls_service.live / f"{name}.pem")
    deadline = time.monotonic() + 10
    while served_serial(tls_service.address, str(ca.cert)) != serial_of(rotated.cert.read_bytes()):
        assert time.monotonic() < deadline, "the new certificate was never served"
        time.sleep(0.2)
    _, catalog = stubs(tls_service, client(pki, token="stats.token"))  # and clients still verify it
    assert catalog.GetCatalogStats(pb.GetCatalogStatsRequest(), timeout=30).products == 0
    assert tls_service.process.poll() is None


def test_the_shipped_mtls_ghz_config_drives_the_mutual_tls_port(mtls_service, imported, pki, photos, tmp_path):
    binary = require(ghz.find(), "the real ghz", "install ghz or set VS_GHZ", required_in_ci=False)
    _, ca, issued = pki
    payload = tmp_path / "request.bin"
    payload.write_bytes(pb.SearchByImageRequest(image=encode(photos["cat"].pixels), top_k=3).SerializeToString())
    config = json.loads((ROOT / "deploy" / "loadtest" / "search-mtls.json").read_text())
    config.update({"host": mtls_service.address, "cacert": str(ca.cert), "cert": str(issued["importer"].cert),
                   "key": str(issued["importer"].key), "cname": "localhost", "binary-file": str(payload),
                   "protoset": str(PROTOSET), "skipFirst": 0, "concurrency": 1, "total": 4})
    for key in ("rps", "duration", "load-schedule"):
        config.pop(key)
    (tmp_path / "ghz.json").write_text(json.dumps(config))
    result = subprocess.run([binary, "--config", str(tmp_path / "ghz.json"), "--format", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == 4 and report["statusCodeDistribution"] == {"OK": 4}, report.get("errorDistribution")


def test_the_service_reaches_triton_over_mutual_tls(pki, photos, tmp_path):
    """Triton with --grpc-use-ssl-mutual: the service connects with VS_TRITON_TLS_* and serves."""
    _, ca, issued = pki
    triton_cert = ca.issue("triton", server=True, file_stem="triton")
    service_cert = ca.issue("search-to-triton", file_stem="search-to-triton")
    tls = GrpcTLS(triton_cert.cert, triton_cert.key, ca.cert, client_ca=ca.cert,
                  client_cert=service_cert.cert, client_key=service_cert.key)
    with TritonServer(REPOSITORY, free_port(), free_port(), free_port(), log_path=tmp_path / "triton.log",
                      grpc_tls=tls) as triton:
        plain = tritonclient.grpc.InferenceServerClient(triton.grpc_url)
        with pytest.raises(InferenceServerException):  # Triton refuses plaintext now
            plain.infer(*triton_client.detect_request(triton_client.PROBE_IMAGE), client_timeout=10)
        plain.close()
        svc = ServiceProcess(triton.grpc_url, str(tmp_path / "catalog.db"), tmp_path / "service.log",
                             VS_TRITON_TLS_CA=str(ca.cert), VS_TRITON_TLS_CERT=str(service_cert.cert),
                             VS_TRITON_TLS_KEY=str(service_cert.key)).start()
        try:
            response = svc.search.SearchByImage(pb.SearchByImageRequest(image=encode(photos["cat"].pixels)),
                                                timeout=60)
            assert "cat" in [group.label for group in response.objects]
        finally:
            svc.stop()
