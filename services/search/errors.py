"""Failures the service turns into precise gRPC status codes (``server.handler`` aborts the RPC with
``code`` and the message)."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class BackendUnavailable(ServiceError):
    """Triton or Milvus cannot be reached or is not serving."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
