"""An OpenAI-compatible HTTP front end for the real engine: `POST /v1/completions` and `/v1/chat/completions`
(real.chat) with one extra field, `priority` ("LS" latency-sensitive or "BE" best-effort), which is what the
policies schedule by.

The engine keeps the main thread (CUDA work and the policy run there, as in a trace replay); the HTTP
server answers on threads of its own and hands requests over through `real.arrivals.LiveArrivals`. A
request's arrival is the moment the server admits it, so an LS request posted while a BE batch runs
preempts it exactly as a trace's arrival does. Generation is greedy and runs for `max_tokens` tokens (the
engine has no stop tokens: the traces fix every request's length, and so does the client here). With
`"stream": true` the answer is OpenAI's server-sent events, a chunk per pass as its tokens reach the host, so a
client sees its own time to first token."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from policies import Priority, Request
from real.arrivals import ArrivalError, LiveArrivals, Ticket
from real.chat import ChatError, chat_prompt_ids
from real.metrics import Metrics

COMPLETIONS, CHAT, MODELS, HEALTH, METRICS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                                              "/metrics")
UNSUPPORTED = {"n": 1, "best_of": 1, "echo": False, "suffix": None, "logprobs": None}
MAX_BODY_BYTES = 8 << 20


class BadRequest(ValueError):
    """The client's request is malformed: answered 400 with this message."""


@dataclass
class Codec:
    """Text <-> token ids for the served model: Mixtral's SentencePiece tokenizer (`sim.workload.tokenizer`)
    where the model's vocabulary is that tokenizer's; otherwise (the tiny test models, Qwen3) `processor`
    is None and prompts must be token ids."""

    vocab_size: int
    processor: object | None = None

    @classmethod
    def for_vocab(cls, vocab_size: int, tokenizer: str | None = None) -> Codec:
        """`tokenizer`: a SentencePiece model file, which must exist and match the model's vocabulary. None:
        Mixtral's from mistral-common where it is installed and matches; token ids only otherwise."""
        from sim.workload.tokenizer import load_tokenizer

        try:
            processor = load_tokenizer(tokenizer)
        except (FileNotFoundError, ImportError):
            if tokenizer:
                raise
            return cls(vocab_size)
        if processor.get_piece_size() == vocab_size:
            return cls(vocab_size, processor)
        if tokenizer:
            raise ValueError(f"tokenizer {tokenizer} has {processor.get_piece_size()} tokens, the model {vocab_size}")
        return cls(vocab_size)

    def encode(self, prompt: object) -> list[int]:
        if isinstance(prompt, str):
            if self.processor is None:
                raise BadRequest(f"this model's {self.vocab_size}-token vocabulary has no tokenizer here: "
                                 "send `prompt` as a list of token ids")
            return self.processor.encode(prompt, add_bos=True)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            bad = [t for t in prompt if not 0 <= t < self.vocab_size]
            if bad:
                raise BadRequest(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
            return list(prompt)
        raise BadRequest("`prompt` must be a non-empty string or a non-empty list of token ids")

    def encode_chat(self, messages: object) -> list[int]:
        if self.processor is None:
            raise BadRequest(f"this model's {self.vocab_size}-token vocabulary has no tokenizer here, which chat "
                             f"needs: use {COMPLETIONS} with token ids")
        try:
            return chat_prompt_ids(messages, self.processor)
        except ChatError as error:
            raise BadRequest(str(error)) from None

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids) if self.processor is not None else ""


@dataclass
class TextStream:
    """A streamed completion's text, piece by piece: each piece is what the decoded text gained. A token
    that ends inside a character's bytes decodes to U+FFFD; its piece waits for the rest of the bytes."""

    codec: Codec
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters handed out

    def add(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.codec.decode(self.ids)
        return "" if text.endswith("\ufffd") else self._rest(text)

    def flush(self) -> str:
        return self._rest(self.codec.decode(self.ids))

    def _rest(self, text: str) -> str:
        piece, self.sent = text[self.sent:], max(self.sent, len(text))
        return piece


@dataclass(frozen=True)
class Completion:
    """A parsed `/v1/completions` (or `/v1/chat/completions`, `chat`) body."""

    prompt_ids: list[int]
    max_tokens: int
    priority: Priority
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    chat: bool = False


def parse_completion(body: object, codec: Codec, max_len: int, default_priority: Priority,
                     default_max_tokens: int, chat: bool = False) -> Completion:
    """Validate a request body (a chat one with `chat`); every refusal names the field and what it accepts."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    field_name = "messages" if chat else "prompt"
    if field_name not in body:
        raise BadRequest(f"`{field_name}` is required")
    for key, default in UNSUPPORTED.items():
        if body.get(key, default) not in (default, None):
            raise BadRequest(f"`{key}` is not supported (only {json.dumps(default)})")
    prompt_ids = codec.encode_chat(body["messages"]) if chat else codec.encode(body["prompt"])
    max_tokens = body.get("max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens",
                          default_max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"`max_tokens` must be an integer >= 1, got {max_tokens!r}")
    if len(prompt_ids) + max_tokens > max_len:
        raise BadRequest(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the engine's "
                         f"KV slot length {max_len} (engine.max_len)")
    try:
        priority = Priority.parse(body.get("priority", default_priority.name))
    except (ValueError, KeyError, TypeError):
        raise BadRequest(f"`priority` must be \"LS\" or \"BE\", got {body.get('priority')!r}") from None
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest(f"`stream` must be true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise BadRequest(f"`stream_options` must be an object like {{\"include_usage\": true}}, got {options!r}")
    if options and not stream:
        raise BadRequest("`stream_options` needs `\"stream\": true`")
    return Completion(prompt_ids, max_tokens, priority, stream, options.get("include_usage", False), chat)


def completion_body(ticket: Ticket, model: str, codec: Codec, wall_s: float, chat: bool = False) -> dict:
    """The OpenAI completion (or chat completion) object, with the token ids and qllm's timing beside it."""
    request, output = ticket.request, ticket.output_ids or []
    return {**_head(request, model, chat),
            "choices": [_choice(chat, False, codec.decode(output), output, "length")],
            "usage": _usage(request, len(output)), "qllm": _timing(request, wall_s)}


def _head(request: Request, model: str, chat: bool, chunk: bool = False) -> dict:
    kind = ("chat.completion.chunk" if chunk else "chat.completion") if chat else "text_completion"
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{request.request_id}", "object": kind,
            "created": int(time.time()), "model": model}


def _choice(chat: bool, chunk: bool, text: str, ids: list[int], finish: str | None, first: bool = False) -> dict:
    """One choice: `text` (completions), or the assistant's `message` (chat) or `delta` (chat chunks, the
    first naming the role)."""
    if not chat:
        return {"index": 0, "text": text, "token_ids": ids, "logprobs": None, "finish_reason": finish}
    content = {"role": "assistant", "content": text} if first or not chunk else {"content": text}
    return {"index": 0, "delta" if chunk else "message": content, "token_ids": ids, "logprobs": None,
            "finish_reason": finish}


def _usage(request: Request, completion_tokens: int) -> dict:
    return {"prompt_tokens": request.num_prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": request.num_prompt_tokens + completion_tokens}


def _timing(request: Request, wall_s: float) -> dict:
    return {"request_id": request.request_id, "priority": request.priority.name, "arrival_s": request.arrival_s,
            "latency_s": wall_s}


class Refused(Exception):
    """A request answered with an error instead of a completion: (status, JSON body)."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind)


@dataclass(frozen=True)
class Admitted:
    completion: Completion
    ticket: Ticket
    started: float  # perf_counter at admission


@dataclass
class Api:
    """What the handler threads share: the live arrivals, the codec and the limits."""

    arrivals: LiveArrivals
    codec: Codec
    model: str
    max_len: int
    default_priority: Priority = Priority.BE
    default_max_tokens: int = 16
    timeout_s: float = 600.0  # a client waits at most this long for its tokens
    answering: int = 0  # completion requests being answered (admitted, or read and not yet written back)
    metrics: Metrics = field(default_factory=Metrics)  # `GET /metrics` (real.metrics)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def answer(self) -> Iterator[None]:
        """Around a completion request's whole handling, so that a server stopping can `drain` first."""
        with self._lock:
            self.answering += 1
        try:
            yield
        finally:
            with self._lock:
                self.answering -= 1

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every completion request being handled has been written back (the handler threads are
        daemons: a process that exits first would cut the last answers off); False if some still are."""
        deadline = time.monotonic() + timeout_s
        while self.answering and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.answering

    def admit(self, body: object, chat: bool = False) -> Admitted:
        """Validate and submit a completion request; `Refused` if it cannot be."""
        try:
            parsed = parse_completion(body, self.codec, self.max_len, self.default_priority, self.default_max_tokens,
                                      chat)
            started = time.perf_counter()
            ticket = self.arrivals.submit(parsed.prompt_ids, parsed.max_tokens, parsed.priority, parsed.stream)
        except BadRequest as error:
            self.metrics.refused(self._priority_of(body))
            raise Refused(HTTPStatus.BAD_REQUEST, str(error), "invalid_request_error") from None
        except ArrivalError as error:
            self.metrics.refused(parsed.priority.name)
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, str(error), "server_error") from None
        self.metrics.admitted(parsed.priority.name)
        return Admitted(parsed, ticket, started)

    def _priority_of(self, body: object) -> str:
        """The class a refused body asked for, as far as it says (else the default's), for its count."""
        try:
            return Priority.parse(body.get("priority", self.default_priority.name)).name  # type: ignore[union-attr]
        except (AttributeError, KeyError, ValueError, TypeError):
            return self.default_priority.name

    def complete(self, body: object, chat: bool = False) -> tuple[int, dict]:
        """(status, JSON body) for a completion request, once all its tokens are on the host."""
        try:
            admitted = self.admit(body, chat)
        except Refused as refused:
            return refused.status, refused.body
        ticket, priority = admitted.ticket, admitted.completion.priority.name
        if not ticket.done.wait(self.timeout_s):
            self.metrics.ended(priority, "timeout", time.perf_counter() - admitted.started, 0)
            return HTTPStatus.GATEWAY_TIMEOUT, error_body(f"no answer within {self.timeout_s:g} s", "server_error")
        wall_s = time.perf_counter() - admitted.started
        if ticket.error is not None:
            self.metrics.ended(priority, "error", wall_s, 0)
            return HTTPStatus.INTERNAL_SERVER_ERROR, error_body(ticket.error, "server_error")
        self.metrics.first(priority, wall_s)  # one answer: its first token goes back with its last
        self.metrics.ended(priority, "ok", wall_s, len(ticket.output_ids or ()))
        return HTTPStatus.OK, completion_body(ticket, self.model, self.codec, wall_s, chat)

    def chunks(self, admitted: Admitted) -> Iterator[dict]:
        """A streamed completion's chunks: one per pass whose tokens reached the host, then one with
        `finish_reason` (and qllm's timing), then the usage if asked; an error object if it failed."""
        ticket, request, text = admitted.ticket, admitted.ticket.request, TextStream(self.codec)
        chat, first = admitted.completion.chat, True
        deadline = admitted.started + self.timeout_s
        outcome = "left"  # unless the stream reaches an end below: the client went away (its request runs on)
        try:
            while True:
                try:
                    ids = ticket.stream.get(timeout=max(deadline - time.perf_counter(), 0.0))
                except queue.Empty:
                    outcome = "timeout"
                    yield error_body(f"no answer within {self.timeout_s:g} s", "server_error")
                    return
                if ids is None:
                    break
                if first:
                    self.metrics.first(request.priority.name, time.perf_counter() - admitted.started)
                yield {**_head(request, self.model, chat, chunk=True),
                       "choices": [_choice(chat, True, text.add(ids), ids, None, first)]}
                first = False
            if ticket.error is not None:
                outcome = "error"
                yield error_body(ticket.error, "server_error")
                return
            outcome = "ok"
            yield {**_head(request, self.model, chat, chunk=True),
                   "choices": [_choice(chat, True, text.flush(), [], "length", first)],
                   "qllm": _timing(request, time.perf_counter() - admitted.started)}
            if admitted.completion.include_usage:
                yield {**_head(request, self.model, chat, chunk=True), "choices": [],
                       "usage": _usage(request, len(text.ids))}
        finally:
            self.metrics.ended(request.priority.name, outcome, time.perf_counter() - admitted.started, len(text.ids))

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "qllm",
                                            "vocab_size": self.codec.vocab_size, "max_len": self.max_len,
                                            "tokenizer": self.codec.processor is not None}]}


def error_body(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind}}


def handler_for(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path == MODELS:
                self._reply(HTTPStatus.OK, api.models())
            elif self.path == HEALTH:
                self._reply(HTTPStatus.OK, {"status": "ok"})
            elif self.path == METRICS:
                data = api.metrics.render().encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._reply(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "invalid_request_error"))

        def do_POST(self) -> None:  # noqa: N802
            with api.answer():
                self._post()

        def _post(self) -> None:
            if self.path not in (COMPLETIONS, CHAT):
                self._reply(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path} (POST {COMPLETIONS} or {CHAT})",
                                                             "invalid_request_error"))
                return
            chat = self.path == CHAT
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, error_body("body too large", "invalid_request_error"))
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                self._reply(HTTPStatus.BAD_REQUEST, error_body(f"the body is not JSON: {error}", "invalid_request_error"))
                return
            if not (isinstance(body, dict) and body.get("stream") is True):
                self._reply(*api.complete(body, chat))
                return
            try:
                admitted = api.admit(body, chat)
            except Refused as refused:
                self._reply(refused.status, refused.body)
                return
            self._stream(api.chunks(admitted))

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, chunks: Iterator[dict]) -> None:
            """Server-sent events in HTTP/1.1 chunks, ended by `data: [DONE]`. A client that leaves does not
            stop its request (the engine cannot drop a sequence mid-batch): it runs to its end unread."""
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for chunk in chunks:
                    self._chunk(f"data: {json.dumps(chunk)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: the summary reports requests
            pass

    return Handler


def bind_http(api: Api, host: str, port: int) -> ThreadingHTTPServer:
    """The HTTP server, bound (port 0: any free one) but not yet answering: `serve_forever` on a thread of
    its own starts it, `shutdown()` stops it. Each request is answered on a thread of its own."""
    server = _HTTPServer((host, port), handler_for(api))
    server.daemon_threads = True
    return server


class _HTTPServer(ThreadingHTTPServer):
    # connections the kernel queues until they are accepted: a burst of clients, or clients that connect while the
    # engine is built or its loop starts (socketserver's default, 5, drops the rest's first SYNs: a 1 s retry each)
    request_queue_size = 128
