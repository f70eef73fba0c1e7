"""An Ollama server emulator: Ollama's real HTTP API on a real socket, with a scripted model.

Speaks what the official `ollama` client and our OllamaLLM use: `GET /api/version`,
`GET /api/tags`, `POST /api/chat` and `POST /api/generate` (NDJSON streams or one JSON
object, Ollama's field names and error bodies). Behaviour is set per instance and may be
changed while it runs: `reply`, `token_delay_s`, `first_token_delay_s`, `fail_with`,
`fail_after_pieces`, `tool_models`. Every chat/generate request is recorded in `requests`.

    with OllamaEmulator(reply=lambda messages: "Hello there.") as ollama:
        ...  # point the service at ollama.url

Tool calling: `reply` may also return a tool call, or a list of text and tool calls in the
order the model "writes" them. A tool call is `tool_call(name, **arguments)` (a dict with
"name", "arguments" and optionally "id"), or any object with `name` and `arguments`
attributes such as voiceai.engines.llm.ToolCall. As Ollama (0.8 and later) streams them, the
text comes in pieces, then each call in its own chunk with `done: false`, then the final
`done: true` chunk; `stream: false` gives one message with `content` and `tool_calls`. A
request's `tools` are recorded in `OllamaRequest.tools`, and a tool result comes back in a
later request's `messages` as {"role": "tool", "content": ..., "tool_name": ...}. Real
Ollama always sends `arguments` as a JSON object; a string given here is sent as it is, to
play a server that does not.

or from a shell: `python -m voiceai.sim.ollama_server --port 11434`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from voiceai.sim.background import BackgroundServer

# One scripted item: text, or a tool call (a `tool_call(...)` dict, or a ToolCall-like object).
ReplyItem = str | Mapping[str, Any] | Any
ReplyFn = Callable[[list[dict[str, Any]]], ReplyItem | Sequence[ReplyItem]]

OLLAMA_VERSION: Final = "0.9.0"  # streaming tool calls came with 0.8
DEFAULT_MODEL: Final = "llama3.2:3b"
NDJSON: Final = "application/x-ndjson"
# What Ollama streams when its runner dies mid-reply.
MID_STREAM_ERROR: Final = "an error was encountered while running the model: unexpected EOF"
_PIECE = re.compile(r"\s*\w+|\s*[^\w\s]+|\s+")  # word-ish tokens keeping their leading space


def polite_echo(messages: list[dict[str, Any]]) -> str:
    """The default model: repeats the caller's last words inside a polite sentence."""
    said = next(
        (str(m.get("content", "")).strip() for m in reversed(messages) if m.get("role") == "user"),
        "",
    )
    if not said:
        return "Hello, thank you for calling. How can I help you?"
    return f'Thank you, I understood: "{said}". How else can I help you?'


def split_pieces(text: str) -> list[str]:
    """Token-like pieces that join back to `text` exactly."""
    return _PIECE.findall(text)


def tool_call(name: str, arguments: Any = None, /, *, id: str = "", **named: Any) -> dict[str, Any]:
    """A scripted tool call: `tool_call("end_call", reason="done")`, or arguments given whole
    (a dict, or a string to play a server that sends them as text)."""
    call: dict[str, Any] = {"name": name, "arguments": named if arguments is None else arguments}
    if id:
        call["id"] = id
    return call


@dataclass
class _Chunk:
    """One streamed message: a text piece, or one tool call in Ollama's wire shape."""

    text: str = ""
    tool_call: dict[str, Any] | None = None


def _script(reply: Any) -> tuple[str, list[dict[str, Any]], list[_Chunk]]:
    """A reply's whole text, its tool calls (wire shape) and its chunks, in the scripted order."""
    items = [reply] if isinstance(reply, str | Mapping) or hasattr(reply, "name") else list(reply)
    text, calls, chunks = "", [], []
    for item in items:
        if isinstance(item, str):
            text += item
            chunks += [_Chunk(text=piece) for piece in split_pieces(item)]
            continue
        call = _wire_call(item, index=len(calls))
        calls.append(call)
        chunks.append(_Chunk(tool_call=call))
    return text, calls, chunks


def _cut(chunks: list[_Chunk], text_pieces: int) -> list[_Chunk]:
    """The chunks before the text piece number `text_pieces` (counting from 0)."""
    seen = 0
    for index, chunk in enumerate(chunks):
        if chunk.tool_call is None:
            if seen == text_pieces:
                return chunks[:index]
            seen += 1
    return chunks


def _wire_call(item: Any, index: int) -> dict[str, Any]:
    """A tool call as Ollama sends it: {"id"?, "function": {"index", "name", "arguments"}}."""
    get = item.get if isinstance(item, Mapping) else lambda key: getattr(item, key, None)
    arguments = get("arguments")
    call: dict[str, Any] = {
        "function": {
            "index": index,
            "name": str(get("name")),
            "arguments": {} if arguments is None else arguments,
        }
    }
    if get("id"):
        call["id"] = str(get("id"))
    return call


@dataclass
class OllamaRequest:
    """One /api/chat or /api/generate request as the emulator received it."""

    path: str
    model: str
    messages: list[dict[str, Any]]
    prompt: str | None
    stream: bool
    keep_alive: str | float | None
    options: dict[str, Any]
    # pending → streaming → done | error | disconnected (the client went away mid-stream)
    outcome: str = "pending"
    pieces_sent: int = 0  # chunks sent before the final one: text pieces and tool calls
    body: dict[str, Any] = field(default_factory=dict)
    tools: list[dict[str, Any]] = field(default_factory=list)  # as the request offered them


class OllamaEmulator:
    """A scripted Ollama on 127.0.0.1 (port 0 = a free one), served by uvicorn in a thread."""

    def __init__(
        self,
        *,
        models: list[str] | None = None,
        reply: ReplyFn = polite_echo,
        token_delay_s: float = 0.0,
        first_token_delay_s: float = 0.0,
        fail_with: str | None = None,
        fail_after_pieces: int | None = None,
        tool_models: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.models = list(models or [DEFAULT_MODEL])
        self.reply = reply
        self.token_delay_s = token_delay_s
        self.first_token_delay_s = first_token_delay_s
        self.fail_with = fail_with  # chat/generate answer HTTP 500 {"error": fail_with}
        self.fail_after_pieces = fail_after_pieces  # stream an {"error"} line after N pieces
        # Models that accept `tools` (None: all); the others answer HTTP 400 as Ollama does.
        self.tool_models = tool_models
        self.requests: list[OllamaRequest] = []
        self.host = host
        self.port = port
        self.app = Starlette(
            routes=[
                Route("/", self._root, methods=["GET", "HEAD"]),
                Route("/api/version", self._version, methods=["GET"]),
                Route("/api/tags", self._tags, methods=["GET"]),
                Route("/api/chat", self._chat, methods=["POST"]),
                Route("/api/generate", self._generate, methods=["POST"]),
            ]
        )
        self._background = BackgroundServer(self.app, host, port, "ollama-emulator")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> OllamaEmulator:
        self.port = self._background.start(timeout_s)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._background.stop(timeout_s)

    def __enter__(self) -> OllamaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_outcome(self, index: int = -1, timeout_s: float = 3.0) -> str:
        """The outcome of a recorded request once its stream has ended (or `streaming`)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            outcome = self.requests[index].outcome
            if outcome not in ("pending", "streaming"):
                return outcome
            time.sleep(0.01)
        return self.requests[index].outcome

    # --- routes ------------------------------------------------------------------------

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def _version(self, request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def _tags(self, request: Request) -> Response:
        return JSONResponse({"models": [_model_entry(name) for name in self.models]})

    async def _chat(self, request: Request) -> Response:
        return await self._handle(request, chat=True)

    async def _generate(self, request: Request) -> Response:
        return await self._handle(request, chat=False)

    async def _handle(self, request: Request, *, chat: bool) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            return _error(400, f"invalid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = str(body.get("model") or "")
        record = OllamaRequest(
            path=request.url.path,
            model=model,
            messages=list(body.get("messages") or []),
            prompt=body.get("prompt"),
            stream=body.get("stream") is not False,  # Ollama streams unless told not to
            keep_alive=body.get("keep_alive"),
            options=dict(body.get("options") or {}),
            body=body,
            tools=list(body.get("tools") or []),
        )
        self.requests.append(record)
        if not model:
            record.outcome = "error"
            return _error(400, "model is required")
        if not any(_same_model(model, name) for name in self.models):
            record.outcome = "error"
            return _error(404, f'model "{model}" not found, try pulling it first')
        if self.fail_with is not None:
            record.outcome = "error"
            return _error(500, self.fail_with)
        if record.tools and not self._takes_tools(model):
            record.outcome = "error"
            return _error(400, f"registry.ollama.ai/library/{model} does not support tools")
        conversation = record.messages if chat else [{"role": "user", "content": record.prompt}]
        if not (record.messages if chat else record.prompt):
            # Nothing to answer: Ollama only loads (or, with keep_alive 0, unloads) the model.
            record.outcome = "done"
            unload = record.keep_alive in (0, "0", "0s")
            return JSONResponse(_final(model, chat, "unload" if unload else "load", load_only=True))
        _, calls, chunks = _script(self.reply(conversation))
        done_reason = "stop"
        limit = record.options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < sum(c.tool_call is None for c in chunks):
            # Cut before the text piece past the limit: what follows was never written.
            chunks, done_reason = _cut(chunks, limit), "length"
            calls = [c.tool_call for c in chunks if c.tool_call is not None]
        if not chat:
            chunks = [c for c in chunks if c.tool_call is None]  # generate has no tool calls
        if record.stream:
            lines = self._stream(record, chat, chunks, done_reason, conversation)
            return StreamingResponse(lines, media_type=NDJSON)
        return await self._whole(record, chat, chunks, calls, done_reason, conversation)

    def _takes_tools(self, model: str) -> bool:
        return self.tool_models is None or any(_same_model(model, m) for m in self.tool_models)

    async def _stream(
        self,
        record: OllamaRequest,
        chat: bool,
        chunks: list[_Chunk],
        done_reason: str,
        conversation: list[dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        started = time.perf_counter_ns()
        record.outcome = "streaming"
        try:
            await asyncio.sleep(self.first_token_delay_s)
            first_at = time.perf_counter_ns()
            for index, chunk in enumerate(chunks):
                if self.fail_after_pieces is not None and index >= self.fail_after_pieces:
                    record.outcome = "error"
                    yield _line({"error": MID_STREAM_ERROR})
                    return
                if index:
                    await asyncio.sleep(self.token_delay_s)
                line = _piece(record.model, chat, chunk.text)
                if chunk.tool_call is not None:
                    line["message"]["tool_calls"] = [chunk.tool_call]
                yield _line(line)
                record.pieces_sent += 1
            final = _final(record.model, chat, done_reason)
            final.update(_stats(started, first_at, conversation, len(chunks)))
            yield _line(final)
            record.outcome = "done"
        finally:
            # Starlette cancels (or closes) this generator when the client disconnects.
            if record.outcome == "streaming":
                record.outcome = "disconnected"

    async def _whole(
        self,
        record: OllamaRequest,
        chat: bool,
        chunks: list[_Chunk],
        calls: list[dict[str, Any]],
        done_reason: str,
        conversation: list[dict[str, Any]],
    ) -> Response:
        started = time.perf_counter_ns()
        await asyncio.sleep(self.first_token_delay_s)
        first_at = time.perf_counter_ns()
        await asyncio.sleep(self.token_delay_s * max(len(chunks) - 1, 0))
        result = _final(record.model, chat, done_reason)
        text = "".join(c.text for c in chunks)
        if chat:
            result["message"]["content"] = text
            if calls:
                result["message"]["tool_calls"] = calls
        else:
            result["response"] = text
        result.update(_stats(started, first_at, conversation, len(chunks)))
        record.pieces_sent = len(chunks)
        record.outcome = "done"
        return JSONResponse(result)


def _created_at() -> str:
    """Ollama's Go time format: RFC 3339 with nanoseconds, UTC."""
    ns = time.time_ns()
    whole = datetime.fromtimestamp(ns // 1_000_000_000, UTC)
    return f"{whole:%Y-%m-%dT%H:%M:%S}.{ns % 1_000_000_000:09d}Z"


def _piece(model: str, chat: bool, text: str) -> dict[str, Any]:
    head: dict[str, Any] = {"model": model, "created_at": _created_at()}
    if chat:
        return {**head, "message": {"role": "assistant", "content": text}, "done": False}
    return {**head, "response": text, "done": False}


def _final(model: str, chat: bool, done_reason: str, *, load_only: bool = False) -> dict[str, Any]:
    final = _piece(model, chat, "")
    final["done"] = True
    final["done_reason"] = done_reason
    if not chat and not load_only:
        final["context"] = [1, 2, 3]  # generate returns token ids to continue from
    return final


def _stats(
    started_ns: int, first_ns: int, conversation: list[dict[str, Any]], count: int
) -> dict[str, int]:
    now = time.perf_counter_ns()
    prompt_words = sum(len(str(m.get("content") or "").split()) for m in conversation)
    load_ns = (first_ns - started_ns) // 10  # the model is resident: loading is a small share
    return {
        "total_duration": now - started_ns,
        "load_duration": load_ns,
        "prompt_eval_count": prompt_words + 4 * len(conversation),
        "prompt_eval_duration": first_ns - started_ns - load_ns,
        "eval_count": count,
        "eval_duration": now - first_ns,
    }


def _model_entry(name: str) -> dict[str, Any]:
    full = name if ":" in name else name + ":latest"
    return {
        "name": full,
        "model": full,
        "modified_at": "2025-01-01T00:00:00.000000000Z",
        "size": 2019393189,
        "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "3.2B",
            "quantization_level": "Q4_K_M",
        },
    }


def _same_model(a: str, b: str) -> bool:
    def full(name: str) -> str:
        return name if ":" in name else name + ":latest"

    return full(a) == full(b)


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a scripted Ollama API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--model", action="append", help=f"model to list (default {DEFAULT_MODEL})")
    parser.add_argument("--reply", help="fixed reply text (default: a polite echo)")
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds between pieces")
    parser.add_argument("--first-token-delay", type=float, default=0.2, help="seconds to first")
    parser.add_argument("--fail-with", help="answer every chat/generate with HTTP 500 and this")
    args = parser.parse_args(argv)
    fixed: str | None = args.reply

    def fixed_reply(messages: list[dict[str, Any]]) -> str:
        return fixed or polite_echo(messages)

    emulator = OllamaEmulator(
        models=args.model,
        reply=fixed_reply,
        token_delay_s=args.token_delay,
        first_token_delay_s=args.first_token_delay,
        fail_with=args.fail_with,
    )
    print(f"Ollama emulator on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(emulator.app, host=args.host, port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
