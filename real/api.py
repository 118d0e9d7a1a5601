"""An OpenAI-compatible HTTP front end for the real engine: `POST /v1/completions` with one extra field,
`priority` ("LS" latency-sensitive or "BE" best-effort), which is what the policies schedule by.

The engine keeps the main thread (CUDA work and the policy run there, as in a trace replay); the HTTP
server answers on threads of its own and hands requests over through `real.arrivals.LiveArrivals`. A
request's arrival is the moment the server admits it, so an LS request posted while a BE batch runs
preempts it exactly as a trace's arrival does. Generation is greedy and runs for `max_tokens` tokens (the
engine has no stop tokens: the traces fix every request's length, and so does the client here)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from policies import Priority
from real.arrivals import ArrivalError, LiveArrivals, Ticket

COMPLETIONS, MODELS, HEALTH = "/v1/completions", "/v1/models", "/health"
UNSUPPORTED = {"stream": False, "n": 1, "best_of": 1, "echo": False, "suffix": None, "logprobs": None}
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

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids) if self.processor is not None else ""


@dataclass(frozen=True)
class Completion:
    """A parsed `/v1/completions` body."""

    prompt_ids: list[int]
    max_tokens: int
    priority: Priority


def parse_completion(body: object, codec: Codec, max_len: int, default_priority: Priority,
                     default_max_tokens: int) -> Completion:
    """Validate a request body; every refusal names the field and what it accepts."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if "prompt" not in body:
        raise BadRequest("`prompt` is required")
    for key, default in UNSUPPORTED.items():
        if body.get(key, default) not in (default, None):
            raise BadRequest(f"`{key}` is not supported (only {json.dumps(default)})")
    prompt_ids = codec.encode(body["prompt"])
    max_tokens = body.get("max_tokens", default_max_tokens)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"`max_tokens` must be an integer >= 1, got {max_tokens!r}")
    if len(prompt_ids) + max_tokens > max_len:
        raise BadRequest(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({max_tokens}) exceed the engine's "
                         f"KV slot length {max_len} (engine.max_len)")
    try:
        priority = Priority.parse(body.get("priority", default_priority.name))
    except (ValueError, KeyError, TypeError):
        raise BadRequest(f"`priority` must be \"LS\" or \"BE\", got {body.get('priority')!r}") from None
    return Completion(prompt_ids, max_tokens, priority)


def completion_body(ticket: Ticket, model: str, codec: Codec, wall_s: float) -> dict:
    """The OpenAI completion object, with the token ids and qllm's timing beside it."""
    request, output = ticket.request, ticket.output_ids or []
    return {
        "id": f"cmpl-{request.request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "text": codec.decode(output), "token_ids": output, "logprobs": None,
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": request.num_prompt_tokens, "completion_tokens": len(output),
                  "total_tokens": request.num_prompt_tokens + len(output)},
        "qllm": {"request_id": request.request_id, "priority": request.priority.name,
                 "arrival_s": request.arrival_s, "latency_s": wall_s},
    }


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

    def complete(self, body: object) -> tuple[int, dict]:
        """(status, JSON body) for a completion request."""
        try:
            parsed = parse_completion(body, self.codec, self.max_len, self.default_priority, self.default_max_tokens)
            started = time.perf_counter()
            ticket = self.arrivals.submit(parsed.prompt_ids, parsed.max_tokens, parsed.priority)
        except BadRequest as error:
            return HTTPStatus.BAD_REQUEST, error_body(str(error), "invalid_request_error")
        except ArrivalError as error:
            return HTTPStatus.SERVICE_UNAVAILABLE, error_body(str(error), "server_error")
        if not ticket.done.wait(self.timeout_s):
            return HTTPStatus.GATEWAY_TIMEOUT, error_body(f"no answer within {self.timeout_s:g} s", "server_error")
        if ticket.error is not None:
            return HTTPStatus.INTERNAL_SERVER_ERROR, error_body(ticket.error, "server_error")
        return HTTPStatus.OK, completion_body(ticket, self.model, self.codec, time.perf_counter() - started)

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
            else:
                self._reply(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path}", "invalid_request_error"))

        def do_POST(self) -> None:  # noqa: N802
            if self.path != COMPLETIONS:
                self._reply(HTTPStatus.NOT_FOUND, error_body(f"no route {self.path} (POST {COMPLETIONS})",
                                                             "invalid_request_error"))
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, error_body("body too large", "invalid_request_error"))
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                self._reply(HTTPStatus.BAD_REQUEST, error_body(f"the body is not JSON: {error}", "invalid_request_error"))
                return
            self._reply(*api.complete(body))

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: the summary reports requests
            pass

    return Handler


def bind_http(api: Api, host: str, port: int) -> ThreadingHTTPServer:
    """The HTTP server, bound (port 0: any free one) but not yet answering: `serve_forever` on a thread of
    its own starts it, `shutdown()` stops it. Each request is answered on a thread of its own."""
    server = ThreadingHTTPServer((host, port), handler_for(api))
    server.daemon_threads = True
    return server
