"""The generated gRPC code for proto/visualsearch/v1 (``make proto`` writes it to build/gen;
nothing here runs protoc) and the message-size options every server and client uses."""

from __future__ import annotations

import sys

from services.paths import BUILD, ROOT

GEN = BUILD / "gen"
PROTO_DIR = ROOT / "proto"
PROTOSET = BUILD / "visualsearch.protoset"


def message_size_options(limit: int) -> list[tuple[str, int]]:
    """gRPC channel/server options raising both message limits: gRPC's 4 MiB default breaks
    real photos. Every server and client in the project uses these."""
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


# Client side (the server accepts VS_MAX_MESSAGE_BYTES, 64 MiB by default).
CLIENT_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = message_size_options(CLIENT_MESSAGE_BYTES)


# PYTHONPATH comes first (the Makefile and the images set it); build/gen is the fallback for a
# checkout run without it.
if str(GEN) not in sys.path:
    sys.path.append(str(GEN))
try:
    from visualsearch.v1 import visual_search_pb2 as pb
    from visualsearch.v1 import visual_search_pb2_grpc as pb_grpc
except ImportError as exc:
    raise ImportError(f"the generated gRPC code is missing from {GEN}: run `make proto` ({exc})") from None

__all__ = ["CHANNEL_OPTIONS", "PROTOSET", "message_size_options", "pb", "pb_grpc"]
