"""Server reflection that also resolves *method* symbols, and shows only the services it
advertises.

ghz and other grpc-go tools resolve ``--call pkg.Service/Method`` by asking for the file
that contains ``pkg.Service.Method``; stock grpcio-reflection answers NOT_FOUND for method
symbols (grpc-go servers answer them). This servicer falls back to the service's file for them.

Reflection answers with whole files: the API file holds both services, so ``VS_REFLECTION=search``
would still hand the Catalog API to anyone who asks for the VisualSearch file. Where a service
is hidden, reflection reads from its own descriptor pool holding a copy of the API file without
the hidden services and without the messages and enums only they use.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import _async, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._base import _file_descriptor_response
from grpc_reflection.v1alpha.reflection import SERVICE_NAME

from services.api import pb


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


def _top_level(message: descriptor.Descriptor) -> descriptor.Descriptor:
    while message.containing_type is not None:
        message = message.containing_type
    return message


def _used_types(services: list[descriptor.ServiceDescriptor]) -> set[str]:
    """Full names of the top-level messages and enums the services' methods reach."""
    used: set[str] = set()
    todo = [m for s in services for method in s.methods for m in (method.input_type, method.output_type)]
    seen: set[str] = set()
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        used.add(_top_level(message).full_name)
        for f in message.fields:
            if f.message_type is not None:
                todo.append(f.message_type)
            if f.enum_type is not None:
                used.add(f.enum_type.full_name if f.enum_type.containing_type is None
                         else _top_level(f.enum_type.containing_type).full_name)
        todo.extend(message.nested_types)
    return used


def filtered_pool(advertised: list[str]) -> descriptor_pool.DescriptorPool:
    """A pool with the API file cut down to the advertised services, plus health and reflection."""
    api = pb.DESCRIPTOR
    kept = [s for s in api.services_by_name.values() if s.full_name in advertised]
    used = _used_types(kept)
    proto = descriptor_pb2.FileDescriptorProto()
    api.CopyToProto(proto)
    package = f"{api.package}."
    messages = [m for m in proto.message_type if package + m.name in used]
    enums = [e for e in proto.enum_type if package + e.name in used]
    services = [s for s in proto.service if package + s.name in advertised]
    del proto.message_type[:], proto.enum_type[:], proto.service[:]
    proto.message_type.extend(messages)
    proto.enum_type.extend(enums)
    proto.service.extend(services)
    pool = descriptor_pool.DescriptorPool()
    for dependency in (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        copy = descriptor_pb2.FileDescriptorProto()
        dependency.CopyToProto(copy)
        pool.Add(copy)
    pool.Add(proto)
    return pool


__all__ = ["SERVICE_NAME", "MethodAwareReflectionServicer", "enable", "filtered_pool"]


def enable(server: grpc.aio.Server, service_names: list[str], api_services: list[str]) -> None:
    """Reflection for ``service_names``; ``api_services`` are all the API's services (those not
    advertised are cut out of what reflection shows)."""
    hidden = [s for s in api_services if s not in service_names]
    pool = filtered_pool([s for s in api_services if s in service_names]) if hidden else None
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        MethodAwareReflectionServicer(service_names, pool=pool), server)
