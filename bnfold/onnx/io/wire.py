"""Protobuf wire format: just enough to walk ModelProto → GraphProto → TensorProto without
parsing weights, and to write length-delimited fields by hand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not well-formed protobuf, or use a form we do not walk (groups)."""


class Field(NamedTuple):
    """One field: its number and wire type, where it starts (key) and its value span."""

    number: int
    wire_type: int
    start: int
    value_start: int
    end: int


def read_varint(buf: memoryview | bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; returns (value, position after it)."""
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes")


def fields(buf: memoryview | bytes, start: int, end: int) -> Iterator[Field]:
    """The fields of the message stored in ``buf[start:end]``, in file order."""
    pos = start
    while pos < end:
        first = pos
        key, pos = read_varint(buf, pos, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == VARINT:
            _, stop = read_varint(buf, pos, end)
        elif wire_type == FIXED64:
            stop = pos + 8
        elif wire_type == FIXED32:
            stop = pos + 4
        elif wire_type == LEN:
            length, pos = read_varint(buf, pos, end)
            stop = pos + length
        else:
            raise WireError(f"wire type {wire_type} (groups) is not walked")
        if stop > end:
            raise WireError("field runs past the end of its message")
        yield Field(number, wire_type, first, pos, stop)
        pos = stop


def packed_varints(buf: memoryview | bytes, start: int, end: int) -> list[int]:
    """The values of a packed repeated varint field's payload."""
    values = []
    pos = start
    while pos < end:
        value, pos = read_varint(buf, pos, end)
        values.append(value)
    return values


def varint(n: int) -> bytes:
    """Encode a non-negative integer as a varint."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def len_key(number: int) -> bytes:
    """The key of a length-delimited field."""
    return varint((number << 3) | LEN)


def len_field(number: int, payload_length: int) -> bytes:
    """Key and length prefix of a length-delimited field whose payload follows."""
    return len_key(number) + varint(payload_length)
