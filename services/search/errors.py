"""Failures the service turns into precise gRPC status codes (``server.handler`` aborts the RPC with
``code`` and the message)."""

from __future__ import annotations

from typing import Any

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # What the call did before it failed (e.g. an import cut by its idle limit: the response of
    # the products it wrote), for the audit line; None when nothing.
    partial: Any = None


class InvalidInput(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class BackendUnavailable(ServiceError):
    """Triton or Milvus cannot be reached or is not serving."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServiceError):
    """Missing or unknown credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServiceError):
    """A known caller without the role the method needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Overloaded(ServiceError):
    """Past an in-flight limit: retry with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Conflict(ServiceError):
    """A concurrent call changed what this one was based on: retrying is safe."""

    code = grpc.StatusCode.ABORTED
