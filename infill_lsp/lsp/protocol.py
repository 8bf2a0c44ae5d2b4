"""pygls' LanguageServerProtocol, hardened: every message is checked before a handler sees it.

`FrameReader` (transport.py) hands each frame's body to `InfillProtocol.receive`; from there on
it is pygls: its converter (made strict below) structures the message into lsprotocol's typed
classes, its feature manager dispatches. What this subclass adds, each answered the way JSON-RPC
2.0 and LSP 3.17 say:

- a body that is not UTF-8 JSON: -32700 ParseError, id null;
- not a JSON-RPC 2.0 object (a batch, `jsonrpc` missing or not "2.0", an `id` that is not a
  string or an integer, a `method` that is not a string, `params` neither object nor array):
  -32600 InvalidRequest, id null unless a valid id could be read;
- a request before `initialize`: -32002 ServerNotInitialized (notifications are dropped, `exit`
  still works); a second `initialize`: -32600; anything after `shutdown` but `exit`: -32600;
- an unknown request: -32601 MethodNotFound;
- params that do not structure into the method's typed params (a field missing, a string where
  an integer belongs, a negative position, ...): -32602 InvalidParams naming the fields;
  notifications with bad params are dropped with a warning.
Rejections are logged as one warning line, never a traceback: tracebacks are kept for bugs.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import typing
from typing import Any
from urllib.parse import unquote

import attrs
import cattrs
import cattrs.cols
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcMethodNotFound,
    JsonRpcParseError,
)
from pygls.protocol import LanguageServerProtocol, lsp_method
from pygls.protocol.json_rpc import JsonRPCNotification, JsonRPCRequestMessage

log = logging.getLogger(__name__)

STATUS = "infill/status"
DID_SHOW = "infill/didShowCompletion"
DID_PARTIALLY_ACCEPT = "infill/didPartiallyAcceptCompletion"
STATS = "infill/stats"
HEALTH = "infill/health"  # the checks of `infill-lsp doctor`, from the running server (doctor.server_health)

_MISSING: Any = object()
FAIL_FAST_VALUES = 20_000  # above this many commas in a message, structuring stops at the first error


class _Answered:
    """What structure_message returns for a message it has already answered (or dropped)."""

    jsonrpc = "answered"


ANSWERED = _Answered()


# -- typed params of infill's own methods ---------------------------------------------------------
@attrs.define
class ItemId:
    """`infill/didShowCompletion` params and the `infill.accept` command's argument."""

    id: str


@attrs.define
class PartialAccept:
    """`infill/didPartiallyAcceptCompletion` params (`acceptedLength` on the wire)."""

    id: str
    accepted_length: int = attrs.field(validator=attrs.validators.ge(0))


@attrs.define
class DidShowCompletionNotification:
    params: ItemId
    method: str = DID_SHOW
    jsonrpc: str = "2.0"


@attrs.define
class DidPartiallyAcceptCompletionNotification:
    params: PartialAccept
    method: str = DID_PARTIALLY_ACCEPT
    jsonrpc: str = "2.0"


CUSTOM_MESSAGE_TYPES: dict[str, type] = {
    DID_SHOW: DidShowCompletionNotification,
    DID_PARTIALLY_ACCEPT: DidPartiallyAcceptCompletionNotification,
    # infill/stats and infill/health take no params: any object, array or null is accepted (JsonRPCRequestMessage)
}


# -- a converter that does not coerce -----------------------------------------------------------------
def strict_converter(detailed: bool = True) -> cattrs.Converter:
    """pygls' converter (lsprotocol's hooks plus pygls' three), except that JSON scalars must already
    have the type the field declares (cattrs would turn null into "None" for a URI, "5" into 5 and
    true into 1) and a list field takes only an array (cattrs would iterate a 1 MB string,
    character by character, failing on each: seconds of CPU for one message). `detailed=False`
    stops at the first error: for large messages, whose error trees could be huge."""
    from lsprotocol.converters import get_converter
    from pygls.protocol import (JsonRPCResponseMessage, _params_field_structure_hook,
                                _result_field_structure_hook)

    converter = get_converter(cattrs.Converter(detailed_validation=detailed))
    converter.register_structure_hook(JsonRPCRequestMessage, _params_field_structure_hook)
    converter.register_structure_hook(JsonRPCResponseMessage, _result_field_structure_hook)
    converter.register_structure_hook(JsonRPCNotification, _params_field_structure_hook)

    def arrays_only(factory):
        def make(cls, conv):
            inner = factory(cls, conv)

            def structure(value: Any, target: type) -> Any:
                if not isinstance(value, list):
                    raise TypeError(f"expected an array, got {_json_type(value)}")
                return inner(value, target)

            return structure

        return make

    # later registrations are tried first: mutable sequences (lists) before the other ones (tuples)
    converter.register_structure_hook_factory(cattrs.cols.is_sequence,
                                              arrays_only(cattrs.cols.homogenous_tuple_structure_factory))
    converter.register_structure_hook_factory(cattrs.cols.is_mutable_sequence,
                                              arrays_only(cattrs.cols.list_structure_factory))

    def hook(kind: str, accepts, base: type):
        def structure(value: Any, cls: type) -> Any:
            if not accepts(value):
                raise TypeError(f"expected {kind}, got {_json_type(value)}")
            if cls is base:
                return base(value)
            return cls(value)  # an enum of that base: its own check of the value

        return structure

    converter.register_structure_hook(
        int, hook("an integer", lambda v: type(v) is int or (type(v) is float and v.is_integer()), int))
    converter.register_structure_hook(float, hook("a number", lambda v: type(v) in (int, float), float))
    converter.register_structure_hook(str, hook("a string", lambda v: type(v) is str, str))
    converter.register_structure_hook(bool, hook("a boolean", lambda v: type(v) is bool, bool))

    # lsprotocol passes these unions through unchecked: a request id or progress token that is an
    # object reaches pygls' dict lookups as an unhashable key.
    def union(kind: str, accepts):
        def structure(value: Any, _cls: type) -> Any:
            if not accepts(value):
                raise TypeError(f"expected {kind}, got {_json_type(value)}")
            return value

        return structure

    int_or_str = lambda v: type(v) is int or isinstance(v, str)  # noqa: E731
    converter.register_structure_hook(typing.Union[int, str], union("an integer or a string", int_or_str))
    converter.register_structure_hook(typing.Optional[typing.Union[int, str]],
                                      union("an integer, a string or null", lambda v: v is None or int_or_str(v)))
    converter.register_structure_hook(typing.Optional[typing.Union[str, bool]], union(
        "a string, a boolean or null", lambda v: v is None or isinstance(v, (str, bool))))
    return converter


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def describe(exc: BaseException, limit: int = 400) -> str:
    """cattrs' errors as `what @ where` lines, joined: the text of an InvalidParams reply."""
    if isinstance(exc, cattrs.BaseValidationError):
        try:
            text = "; ".join(cattrs.transform_error(exc, path="$"))
        except Exception:  # transform_error itself choking on an odd error tree
            text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def _arity(handler) -> set[int] | None:
    """How many arguments a command handler takes (the server argument aside); None: any number."""
    function = getattr(handler, "func", handler)
    try:
        parameters = list(inspect.signature(function).parameters.values())[1:]  # ls
    except (TypeError, ValueError):
        return None
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return None
    required = sum(1 for p in parameters if p.default is p.empty)
    return set(range(required, len(parameters) + 1))


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or type(value) is int


class InfillProtocol(LanguageServerProtocol):
    """LanguageServerProtocol that checks each message before pygls dispatches it (see the module doc)."""

    # -- the entry point: one frame's body --------------------------------------------------------
    def receive(self, body: bytes) -> None:
        # many values: a failed structuring would collect (and describe) an error per value
        self._fail_fast = body.count(b",") > FAIL_FAST_VALUES
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self._reject(None, JsonRpcParseError, f"the message is not UTF-8 ({exc.reason} at byte {exc.start})")
            return
        except (ValueError, RecursionError) as exc:
            self._reject(None, JsonRpcParseError, f"the message is not JSON ({_short(str(exc), 120)})")
            return
        message = self.check_message(data)
        if message is not ANSWERED:
            self.handle_message(message)

    # -- pygls hooks ------------------------------------------------------------------------------
    def structure_message(self, data: Any):
        """pygls' json object_hook (its websocket loop uses it): inner objects pass through."""
        if isinstance(data, dict) and "jsonrpc" not in data:
            return data
        return self.check_message(data)

    def check_message(self, data: Any):
        """Envelope, lifecycle, method and params checks, then pygls' (strict) structuring into the
        method's typed message; ANSWERED when the message was rejected (and answered if a request)."""
        if not isinstance(data, dict):
            what = "a batch (LSP has no batches)" if isinstance(data, list) else _json_type(data)
            return self._reject(None, JsonRpcInvalidRequest, f"a message must be a JSON object, got {what}")
        msg_id = data.get("id", _MISSING)
        has_id = msg_id is not _MISSING
        if has_id and not _valid_id(msg_id):
            return self._reject(None, JsonRpcInvalidRequest,
                                f"id must be a string or an integer, got {_json_type(msg_id)}")
        reply_id = msg_id if has_id else None
        if data.get("jsonrpc") != "2.0":
            return self._reject(reply_id, JsonRpcInvalidRequest, 'jsonrpc must be "2.0"')
        method = data.get("method", _MISSING)
        if method is _MISSING:
            return self._structure_response(data)
        if not isinstance(method, str):
            return self._reject(reply_id, JsonRpcInvalidRequest, f"method must be a string, got {_json_type(method)}")
        params = data.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            return self._reject(reply_id, JsonRpcInvalidRequest,
                                f"params must be an object or an array, got {_json_type(params)}")

        if (refusal := self._lifecycle(method)) is not None:
            if has_id:
                code, text = refusal
                return self._reject(msg_id, code, text)
            log.info("dropped %s notification: %s", _short(method), refusal[1])
            return ANSWERED

        if not self.handles(method):
            if has_id:
                return self._reject(msg_id, JsonRpcMethodNotFound, f"unknown method {_short(method)}")
            log.debug("ignored notification for unknown method %s", _short(method))
            return ANSWERED

        default = JsonRPCRequestMessage if has_id else JsonRPCNotification
        message_type = self.get_message_type(method) or default
        if not has_id and message_type.__name__.endswith("Request"):
            return self._reject(None, JsonRpcInvalidRequest, f"{_short(method)} is a request: it needs an id")
        if has_id and message_type.__name__.endswith("Notification") and message_type is not default:
            return self._reject(msg_id, JsonRpcInvalidRequest, f"{_short(method)} is a notification: no id")
        try:
            return self._structuring_converter().structure(data, message_type)
        except Exception as exc:  # ClassValidationError mostly; any failure to structure is bad params
            reason = describe(exc)
            if has_id:
                return self._reject(msg_id, JsonRpcInvalidParams, f"invalid params for {method}: {reason}")
            log.warning("ignored %s notification with invalid params: %s", _short(method), reason)
            return ANSWERED

    def _structuring_converter(self) -> cattrs.Converter:
        if not getattr(self, "_fail_fast", False):
            return self._converter
        if getattr(self, "_fast_converter", None) is None:
            self._fast_converter = strict_converter(detailed=False)
        return self._fast_converter

    def handles(self, method: str) -> bool:
        """Whether a handler (or pygls itself, for $/cancelRequest) takes this method. pygls has
        notebook handlers built in, but this server does not advertise notebook sync: a client that
        sends notebook notifications anyway has them ignored (pygls' notebook code trusts them)."""
        if method.startswith("notebookDocument/") and getattr(self._server, "_notebook_document_sync", None) is None:
            return False
        return method == types.CANCEL_REQUEST or method in self.fm.builtin_features or method in self.fm.features

    def _structure_response(self, data: dict):
        """A client's answer to one of the server's requests."""
        if "id" not in data:
            return self._reject(None, JsonRpcInvalidRequest, "neither a request, a notification nor a response")
        if ("result" in data) == ("error" in data):
            log.warning("ignored a response with %s result and error", "both" if "result" in data else "neither")
            return ANSWERED
        try:
            if "error" in data:
                return self._converter.structure(data, types.ResponseErrorMessage)
            response_type = self._result_types.pop(data["id"], None) or self._response_type()
            return self._converter.structure(data, response_type)
        except Exception as exc:
            log.warning("ignored a malformed response to request %s: %s", _short(data["id"]), describe(exc))
            return ANSWERED

    @staticmethod
    def _response_type():
        from pygls.protocol.json_rpc import JsonRPCResponseMessage

        return JsonRPCResponseMessage

    def _lifecycle(self, method: str) -> tuple[Any, str] | None:
        """Why a message may not be handled now (LSP's initialize ... shutdown, exit rules), or None."""
        if method == types.EXIT:
            return None
        if self._shutdown:
            return JsonRpcInvalidRequest, "the server is shutting down: only exit is accepted"
        initialized = self._workspace is not None
        if method == types.INITIALIZE:
            return (JsonRpcInvalidRequest, "initialize may only be sent once") if initialized else None
        if not initialized:
            return types.ErrorCodes.ServerNotInitialized, f"{_short(method)} before initialize"
        return None

    def get_message_type(self, method: str):
        return CUSTOM_MESSAGE_TYPES.get(method) or super().get_message_type(method)

    def handle_message(self, message) -> None:
        if message is ANSWERED:
            return
        super().handle_message(message)

    def _send_handler_result(self, future, *, msg_id) -> None:
        """A handler that raised a JsonRpcException rejected its input: answer with that error and
        one log line. pygls would log a traceback, as for a crash."""
        if future.done() and not future.cancelled() and isinstance(exc := future.exception(), JsonRpcException):
            self._request_futures.pop(msg_id, None)
            error = exc.to_response_error()
            cause = exc.__cause__ or exc.__context__
            if isinstance(exc, JsonRpcInvalidParams) and isinstance(cause, (cattrs.BaseValidationError, TypeError)):
                error.message = f"invalid params: {describe(cause)}"  # pygls' text names no field
            log.warning("request %s rejected: %s", _short(msg_id), error.message)
            self._send_response(msg_id, error=error)
            return
        super()._send_handler_result(future, msg_id=msg_id)

    @lsp_method(types.WORKSPACE_EXECUTE_COMMAND)
    def lsp_workspace__execute_command(self, params: types.ExecuteCommandParams):
        """pygls calls a command with whatever arguments came: too few is a TypeError in the
        handler (an internal error with a traceback). Count them first."""
        handler = self.fm.commands.get(params.command)
        if handler is not None and (arity := _arity(handler)) is not None:
            got = len(params.arguments or ())
            if got not in arity:
                raise JsonRpcInvalidParams(message=f"invalid params: {_short(params.command)} takes "
                                                   f"{'/'.join(map(str, sorted(arity)))} argument(s), got {got}")
        return (yield from super().lsp_workspace__execute_command(params))

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        """pygls looks the document up without checking: a KeyError for one that is not open."""
        if unquote(params.text_document.uri) not in self.workspace.text_documents:
            log.warning("ignored didChange for a document that is not open: %s", _short(params.text_document.uri))
            return
        yield from super().lsp_text_document__did_change(params)

    @lsp_method(types.NOTEBOOK_DOCUMENT_DID_CHANGE)
    def lsp_notebook_document__did_change(self, params: types.DidChangeNotebookDocumentParams):
        if unquote(params.notebook_document.uri) not in self.workspace.notebook_documents:
            log.warning("ignored didChange for a notebook that is not open: %s",
                        _short(params.notebook_document.uri))
            return
        yield from super().lsp_notebook_document__did_change(params)

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args):
        self._exiting = True  # the writer is about to close: nothing more is sent
        return (yield from super().lsp_exit(*args))

    def _send_data(self, data: Any) -> None:
        """pygls' _send_data, except that a closed or broken stdout (after exit, or a client that
        went away) drops the message with one log line instead of a traceback per message."""
        if not data or getattr(self, "_exiting", False) or getattr(self, "_gone", False):
            return
        if self.writer is None:
            log.error("no transport to send on")
            return
        try:
            body = json.dumps(data, default=self._serialize_message).encode(self.CHARSET)
        except (TypeError, ValueError, RecursionError) as exc:  # a bug in a handler's result
            log.error("could not serialize a message: %s", exc)
            return
        if self._include_headers:
            body = (f"Content-Length: {len(body)}\r\n"
                    f"Content-Type: {self.CONTENT_TYPE}; charset={self.CHARSET}\r\n\r\n").encode("ascii") + body
        try:
            result = self.writer.write(body)
        except (BrokenPipeError, ConnectionError, ValueError, OSError) as exc:  # ValueError: closed file
            self._gone = True
            log.error("the client's end of the connection is closed (%s); nothing more is sent", exc)
            return
        if inspect.isawaitable(result):
            asyncio.ensure_future(result)

    def _send_response(self, msg_id, result=None, error=None) -> None:
        if msg_id is None and error is not None:
            # lsprotocol drops a None id when it serializes; JSON-RPC wants `"id": null` there.
            self._send_data({"jsonrpc": "2.0", "id": None, "error": self._converter.unstructure(error)})
            return
        super()._send_response(msg_id, result, error)

    def _reject(self, msg_id, error: type[JsonRpcException] | int, message: str) -> _Answered:
        if isinstance(error, type):
            response_error = error(message=message).to_response_error()
        else:
            response_error = types.ResponseError(code=int(error), message=message)
        log.warning("rejected a message (%d, id %s): %s", response_error.code, _short(msg_id), message)
        self._send_response(msg_id, error=response_error)
        return ANSWERED
