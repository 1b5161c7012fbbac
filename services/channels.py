"""Client channels to the search service: plaintext (the local default), TLS, mutual TLS, and
a bearer token. Every client in the repository (importer, load generator, demo, tests) opens
its channel here, so all speak the same options."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.api import CHANNEL_OPTIONS


class ClientConfigError(ValueError):
    """Client security options that cannot work together; the message says which."""


@dataclass(frozen=True)
class ClientSecurity:
    ca: str = ""  # CA bundle that signed the server's certificate; set = TLS
    cert: str = ""  # client certificate chain, for mutual TLS
    key: str = ""  # client private key
    token_file: str = ""  # a bearer token (from a file, never the command line)
    server_name: str = ""  # expected name in the server's certificate, when it differs from the address

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("security (defaults from VS_CLIENT_* environment variables)")
        env = os.environ.get
        group.add_argument("--tls-ca", default=env("VS_CLIENT_TLS_CA", ""),
                           help="CA bundle (PEM) of the server's certificate: connect with TLS")
        group.add_argument("--tls-cert", default=env("VS_CLIENT_TLS_CERT", ""),
                           help="client certificate (PEM) for mutual TLS")
        group.add_argument("--tls-key", default=env("VS_CLIENT_TLS_KEY", ""), help="client private key (PEM)")
        group.add_argument("--token-file", default=env("VS_CLIENT_TOKEN_FILE", ""),
                           help="file holding a bearer token (sent only over TLS)")
        group.add_argument("--tls-server-name", default=env("VS_CLIENT_TLS_SERVER_NAME", ""),
                           help="name to expect in the server's certificate (default: the address' host)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClientSecurity:
        return cls(args.tls_ca, args.tls_cert, args.tls_key, args.token_file, args.tls_server_name)

    def _credentials(self) -> grpc.ChannelCredentials | None:
        if (self.cert or self.key) and not (self.cert and self.key):
            raise ClientConfigError("mutual TLS needs both --tls-cert and --tls-key")
        if not self.ca:
            if self.cert or self.token_file:
                raise ClientConfigError("a client certificate or a token needs TLS: give --tls-ca "
                                        "(tokens never travel in plaintext)")
            return None
        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))
        if self.token_file:
            token = Path(self.token_file).read_text().strip()
            credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
        return credentials

    def _options(self) -> list[tuple[str, object]]:
        if self.server_name:
            return [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.server_name)]
        return list(CHANNEL_OPTIONS)

    def channel(self, address: str) -> grpc.Channel:
        credentials = self._credentials()
        if credentials is None:
            return grpc.insecure_channel(address, options=self._options())
        return grpc.secure_channel(address, credentials, options=self._options())

    def aio_channel(self, address: str) -> grpc.aio.Channel:
        credentials = self._credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=self._options())
        return grpc.aio.secure_channel(address, credentials, options=self._options())


PLAINTEXT = ClientSecurity()
