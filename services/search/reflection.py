"""Server reflection that also resolves *method* symbols.

ghz and other grpc-go tools resolve ``--call pkg.Service/Method`` by asking for the file
that contains ``pkg.Service.Method``; stock grpcio-reflection answers NOT_FOUND for method
symbols (grpc-go servers answer them). This servicer falls back to the service's file for them.
"""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import _async, reflection_pb2_grpc
from grpc_reflection.v1alpha._base import _file_descriptor_response
from grpc_reflection.v1alpha.reflection import SERVICE_NAME


class MethodAwareReflectionServicer(_async.ReflectionServicer):
    def _file_containing_symbol(self, request, fully_qualified_name: str):  # noqa: ANN001, ANN202
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        service_name, _, method = fully_qualified_name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method not in service.methods_by_name:
            return response
        return _file_descriptor_response(service.file, request)


__all__ = ["SERVICE_NAME", "MethodAwareReflectionServicer", "enable"]


def enable(server: grpc.aio.Server, service_names: list[str]) -> None:
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        MethodAwareReflectionServicer(service_names), server)
