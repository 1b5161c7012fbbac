"""Who is calling, and may they call this method: bearer tokens and client certificates mapped
to roles by a policy file (a mounted Secret).

Roles: ``search`` (VisualSearch), ``catalog.write`` (ImportProducts, DeleteProducts),
``catalog.read`` (GetCatalogStats). Health and reflection are not role-checked.

The policy holds only SHA-256 digests of tokens; a presented token is hashed and compared
with every digest in constant time. The file is re-read when it changes (token rotation
needs no restart). Make a digest with ``python -m services.search.auth hash-token < token``.

    {"callers": [
      {"name": "web-frontend", "roles": ["search"], "token_sha256": ["<64 hex>"]},
      {"name": "catalog-importer", "roles": ["search", "catalog.write", "catalog.read"],
       "certificate": "catalog-importer"}]}

``certificate`` matches the client certificate's common name or any of its DNS/URI subject
alternative names (mutual TLS must be on: VS_TLS_CLIENT_CA).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.search.config import ConfigError
from services.search.errors import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

SEARCH, CATALOG_WRITE, CATALOG_READ = "search", "catalog.write", "catalog.read"
ROLES = (SEARCH, CATALOG_WRITE, CATALOG_READ)
BEARER = "bearer "


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    how: str  # "token", "certificate" or "peer" (no policy: identified by certificate or address only)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Policy:
    tokens: tuple[tuple[bytes, Caller], ...]
    certificates: dict[str, Caller]

    @classmethod
    def load(cls, path: Path) -> Policy:
        where = f"VS_AUTH_POLICY={str(path)!r}"
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        tokens: list[tuple[bytes, Caller]] = []
        certificates: dict[str, Caller] = {}
        entries = data.get("callers") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: expected {{\"callers\": [...]}}")
        for i, entry in enumerate(entries):
            name, roles = entry.get("name"), entry.get("roles", [])
            if not name or not isinstance(name, str):
                raise ConfigError(f"{where}: callers[{i}] needs a name")
            unknown = set(roles) - set(ROLES)
            if unknown:
                raise ConfigError(f"{where}: caller {name!r} has unknown roles {sorted(unknown)} (known: {ROLES})")
            digests = entry.get("token_sha256", [])
            subject = entry.get("certificate")
            if not digests and not subject:
                raise ConfigError(f"{where}: caller {name!r} needs token_sha256 or certificate")
            for digest in digests:
                try:
                    raw = bytes.fromhex(digest)
                except ValueError:
                    raw = b""
                if len(raw) != 32:
                    raise ConfigError(f"{where}: caller {name!r}: token_sha256 entries are 64 hex digits "
                                      "(python -m services.search.auth hash-token)")
                tokens.append((raw, Caller(name, frozenset(roles), "token")))
            if subject:
                certificates[subject] = Caller(name, frozenset(roles), "certificate")
        return cls(tuple(tokens), certificates)


def certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The verified client certificate's CN and DNS/URI SANs ([] without mutual TLS)."""
    auth = context.auth_context() or {}
    names = [v.decode() for v in auth.get("x509_common_name", [])]
    names += [v.decode() for v in auth.get("x509_subject_alternative_name", [])]
    return names


def peer_host(context: grpc.aio.ServicerContext) -> str:
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


def plaintext(context: grpc.aio.ServicerContext) -> bool:
    """The call came over a connection without TLS."""
    auth = context.auth_context() or {}
    return auth.get("transport_security_type", [b"insecure"])[0] != b"ssl"


class Guard:
    """Authentication and per-method authorization; no policy = every caller has every role.
    A bearer token that arrives without TLS is refused unless ``allow_plaintext_tokens`` (a
    mesh terminates TLS in front of the pod)."""

    def __init__(self, policy_path: str, allow_plaintext_tokens: bool = False) -> None:
        self.path = Path(policy_path) if policy_path else None
        self.allow_plaintext_tokens = allow_plaintext_tokens
        self._stamp: tuple[int, int] | None = None
        self._policy: Policy | None = None
        if self.path:
            self._reload()

    def _reload(self) -> None:
        stat = os.stat(self.path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            self._policy = Policy.load(self.path)
        except ConfigError:
            if self._policy is None:
                raise
            log.exception("authorization policy unreadable; keeping the previous one")  # e.g. mid-rotation
            return
        self._stamp = stamp
        log.info("authorization policy loaded", extra={"path": str(self.path), "tokens": len(self._policy.tokens),
                                                       "certificates": len(self._policy.certificates)})

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        certificates = certificate_names(context)
        if self.path is None:
            return Caller(certificates[0] if certificates else peer_host(context), frozenset(ROLES), "peer")
        try:
            self._reload()
        except OSError:
            log.exception("authorization policy unreadable; keeping the previous one")
        policy = self._policy
        token = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        if token is not None:
            if not self.allow_plaintext_tokens and plaintext(context):
                raise Unauthenticated("bearer tokens are refused over plaintext: connect with TLS (the token was sent "
                                      "in clear; rotate it if the network is not trusted)")
            if not token.lower().startswith(BEARER):
                raise Unauthenticated("the authorization metadata must be 'Bearer <token>'")
            digest = token_digest(token[len(BEARER):].strip())
            found = None
            for known, caller in policy.tokens:  # every entry, so timing says nothing about which matched
                if hmac.compare_digest(known, digest):
                    found = caller
            if found is None:
                raise Unauthenticated("the bearer token is not valid")
            return found
        for name in certificates:
            if name in policy.certificates:
                return policy.certificates[name]
        if certificates:
            return Caller(certificates[0], frozenset(), "certificate")  # verified, but given no role
        raise Unauthenticated("no credentials: send 'authorization: Bearer <token>' metadata"
                              + (" or a client certificate" if policy.certificates else ""))

    @staticmethod
    def authorize(caller: Caller, role: str, method: str) -> None:
        if role not in caller.roles:
            has = ", ".join(sorted(caller.roles)) or "none"
            raise PermissionDenied(f"caller {caller.name!r} lacks the role {role!r} that {method} needs "
                                   f"(its roles: {has})")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["hash-token"]:
        print("usage: python -m services.search.auth hash-token < token-file", file=sys.stderr)
        return 2
    token = sys.stdin.read().strip()
    if not token:
        print("no token on standard input", file=sys.stderr)
        return 2
    print(token_digest(token).hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
