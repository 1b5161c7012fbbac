"""Server TLS from PEM files, re-read when they change (cert-manager rotates the Secret in
place): gRPC asks for the current certificate at every new handshake, so a rotation needs
no restart and connections already open keep theirs."""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from pathlib import Path

import grpc

from services.search.config import ConfigError, Settings

log = logging.getLogger(__name__)


class ServerCertificates:
    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.files = [Path(cert), Path(key), *([Path(client_ca)] if client_ca else [])]
        self.mutual = bool(client_ca)
        self._lock = threading.Lock()
        self._digest = b""

    def _read(self) -> tuple[bytes, list[bytes]]:
        contents = [path.read_bytes() for path in self.files]
        return hashlib.sha256(b"\0".join(contents)).digest(), contents

    def _configuration(self, contents: list[bytes]) -> grpc.ServerCertificateConfiguration:
        cert, key = contents[0], contents[1]
        # A half-rotated pair (new certificate, old key) must not replace a working one.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.files[0]), str(self.files[1]))
        return grpc.ssl_server_certificate_configuration([(key, cert)],
                                                         root_certificates=contents[2] if self.mutual else None)

    def credentials(self) -> grpc.ServerCredentials:
        try:
            digest, contents = self._read()
            initial = self._configuration(contents)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"VS_TLS_CERT/VS_TLS_KEY: cannot load the server certificate: {exc}") from None
        self._digest = digest
        return grpc.dynamic_ssl_server_credentials(initial, self._fetch,
                                                   require_client_authentication=self.mutual)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration when the files changed."""
        with self._lock:
            try:
                digest, contents = self._read()
                if digest == self._digest:
                    return None
                configuration = self._configuration(contents)
            except (OSError, ssl.SSLError) as exc:
                log.warning("new certificate files not usable yet; keeping the current ones",
                            extra={"error": str(exc)})
                return None
            self._digest = digest
            log.info("reloaded the server certificate", extra={"files": [str(f) for f in self.files]})
            return configuration


def server_credentials(settings: Settings, client_certificates: bool = True) -> grpc.ServerCredentials | None:
    """TLS (mutual when VS_TLS_CLIENT_CA is set, unless ``client_certificates`` is False) or None
    for plaintext. gRPC Python either requires a client certificate or never asks for one, so
    certificate and token callers need a port each when a client CA is set (VS_TOKEN_LISTEN)."""
    if not settings.tls:
        return None
    client_ca = settings.tls_client_ca if client_certificates else ""
    return ServerCertificates(settings.tls_cert, settings.tls_key, client_ca).credentials()
