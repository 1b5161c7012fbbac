"""Hostile image payloads shared by the unit and integration tests."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from tools.sample_photos import encode


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's signature)."""
    data = bytearray(encode(np.zeros((4, 4, 3), np.uint8), "PNG"))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)
