"""Messages between `infill-lsp serve` and the resident `infill-lsp engine` daemon.

Length-prefixed msgpack frames (4-byte big-endian length) carrying tagged msgspec Structs;
the request and result types are the pipeline's own, so nothing is translated.
"""

from __future__ import annotations

import struct

import msgspec

from ..types import EngineInfo, InfillRequest, InfillResult

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class InfillCall(msgspec.Struct, tag="infill"):
    id: int
    request: InfillRequest


class CancelCall(msgspec.Struct, tag="cancel"):
    id: int


class InfoCall(msgspec.Struct, tag="info"):
    id: int


class ResultReply(msgspec.Struct, tag="result"):
    id: int
    result: InfillResult


class InfoReply(msgspec.Struct, tag="info_reply"):
    id: int
    info: EngineInfo


class ErrorReply(msgspec.Struct, tag="error"):
    id: int
    message: str
    cancelled: bool = False


Call = InfillCall | CancelCall | InfoCall
Reply = ResultReply | InfoReply | ErrorReply

_encoder = msgspec.msgpack.Encoder()
call_decoder = msgspec.msgpack.Decoder(Call)
reply_decoder = msgspec.msgpack.Decoder(Reply)


class FrameTooLarge(Exception):
    pass


def frame(message: Call | Reply) -> bytes:
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


def body_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise FrameTooLarge(f"frame of {length} bytes is over the {MAX_FRAME}-byte limit")
    return length


HEADER_SIZE = _HEADER.size
