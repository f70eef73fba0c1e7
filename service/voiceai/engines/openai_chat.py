"""An OpenAI-compatible chat server as the LanguageModel: vLLM, llama.cpp's llama-server,
LM Studio, Ollama's /v1 and OpenAI itself answer `POST {url}/chat/completions`.

The reply is streamed (`stream: true`, server-sent events `data: {...}` up to `data: [DONE]`)
and timed out like OllamaLLM: a first-token deadline, then a deadline for the whole reply.
Tool calls come as `delta.tool_calls` fragments per index (the name first, the arguments as
JSON text in pieces); they are joined and yielded as ToolCalls after the text, when the stream
ends. Our history keeps Ollama's shape for tool turns; `openai_messages` converts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from voiceai.config import hide_url_password
from voiceai.engines.llm import (
    CONNECT_TIMEOUT_S,
    LOAD_TIMEOUT_S,
    LLMError,
    Message,
    ToolCall,
    ToolSpec,
    _describe,
    parse_arguments,
    total_timeout,
)

log = logging.getLogger(__name__)

SERVER = "OpenAI-compatible server"
MESSAGE_CHARS = 300  # of a server's error text: enough to say why, not a whole HTML page


class OpenAIChatLLM:
    """A model behind an OpenAI-compatible `/chat/completions`, streamed over httpx."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "",
        max_tokens: int = 200,
        first_token_timeout_s: float = 8.0,
        total_timeout_s: float | None = None,
        load_timeout_s: float = LOAD_TIMEOUT_S,
    ) -> None:
        self.name = f"openai:{model}"
        self.supports_tools = True
        self.url = url.rstrip("/")
        self.model = model
        self._where = f"{SERVER} at {hide_url_password(self.url)}"
        self._api_key = api_key
        self._max_tokens = max_tokens
        self._first_timeout_s = first_token_timeout_s
        self._total_timeout_s = total_timeout_s or total_timeout(first_token_timeout_s, max_tokens)
        self._load_timeout_s = load_timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Our asyncio deadlines decide; httpx's read timeout only backs them up.
        read_s = max(self._total_timeout_s, load_timeout_s) + 1.0
        self._client = httpx.AsyncClient(
            base_url=self.url + "/",
            headers=headers,
            timeout=httpx.Timeout(read_s, connect=CONNECT_TIMEOUT_S),
        )

    async def stream_reply(
        self, messages: list[Message], tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._first_timeout_s
        body = self._body(messages, tools, stream=True)
        response: httpx.Response | None = None
        got_first = False
        calls: dict[int, _CallParts] = {}
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    request = self._client.build_request("POST", "chat/completions", json=body)
                    response = await self._client.send(request, stream=True)
                    if response.status_code >= 400:
                        await response.aread()
            except TimeoutError:
                raise LLMError(self._timeout_message(False)) from None
            if response.status_code >= 400:
                raise self._status_error(response)
            lines = response.aiter_lines()
            while True:
                # The timeout scope never spans `yield`: it would cancel the consumer's awaits.
                try:
                    async with asyncio.timeout_at(deadline):
                        line = await anext(lines)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise LLMError(self._timeout_message(got_first)) from None
                data = self._data(line)
                if data is None:
                    continue
                if data.strip() == "[DONE]":
                    break
                texts, generated = _take(self._chunk(data), calls)
                if generated and not got_first:
                    got_first = True
                    deadline = started + self._total_timeout_s
                for text in texts:
                    yield text
            for call in _finished(calls):
                yield call
        except LLMError:
            raise
        except Exception as exc:
            raise self._error(exc) from exc
        finally:
            if response is not None:
                # Closes the HTTP stream, so the server stops generating for a gone caller.
                await response.aclose()

    async def warm_up(self) -> None:
        """A one-token answer: checks the URL, key and model, and makes a server that loads
        models on demand (Ollama's /v1, LM Studio) load this one now."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 1,
            "stream": False,
        }
        try:
            async with asyncio.timeout(self._load_timeout_s):
                response = await self._client.post("chat/completions", json=body)
        except TimeoutError:
            raise LLMError(
                f"{self._where} did not answer with {self.model} within {self._load_timeout_s:g} s"
            ) from None
        except Exception as exc:
            raise self._error(exc) from exc
        if response.status_code >= 400:
            raise self._status_error(response)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _body(
        self, messages: list[Message], tools: Sequence[ToolSpec], *, stream: bool
    ) -> dict[str, Any]:
        # max_tokens, not max_completion_tokens: every compatible server knows the former.
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(messages),
            "stream": stream,
            "max_tokens": self._max_tokens,
        }
        if tools:
            body["tools"] = [dict(tool) for tool in tools]  # Ollama's tool specs are OpenAI's
        return body

    def _data(self, line: str) -> str | None:
        """The data of one SSE line; None for a line that carries none (blank, comment).

        Each `data:` line is a whole event: these servers send one-line JSON, and some omit
        the blank line between events."""
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "error":  # llama-server reports a failure mid-stream as `error: {...}`
            raise LLMError(f"{self._where} failed mid-stream: {self._said(value)}")
        return value if field == "data" and value.strip() else None

    def _chunk(self, data: str) -> dict[str, Any]:
        chunk = json.loads(data)
        if not isinstance(chunk, dict):
            raise LLMError(f"{self._where} sent an unusable chunk: {data[:MESSAGE_CHARS]}")
        if chunk.get("error") or chunk.get("object") == "error":  # vLLM's mid-stream failure
            raise LLMError(f"{self._where} failed mid-stream: {self._said(data)}")
        return chunk

    def _said(self, text: str) -> str:
        return server_message(text, secrets=[self._api_key])

    def _timeout_message(self, got_first: bool) -> str:
        if got_first:
            return f"reply from {self.name} not finished within {self._total_timeout_s:g} s"
        return f"no first token within {self._first_timeout_s:g} s from {self.name} ({self._where})"

    def _status_error(self, response: httpx.Response) -> LLMError:
        status = response.status_code
        if status in (401, 403):
            return LLMError(
                key_refused(self._where, status, self._api_key, "VOICEAI_OPENAI_API_KEY")
            )
        said = self._said(response.text) or response.reason_phrase
        if status == 404:
            return LLMError(
                f"{self._where} has no model {self.model!r} (VOICEAI_OPENAI_MODEL), or no "
                f"chat/completions there (does VOICEAI_OPENAI_URL end in /v1?): HTTP 404: {said}"
            )
        return LLMError(f"{self._where} failed (HTTP {status}): {said}")

    def _error(self, exc: Exception) -> LLMError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | ConnectionError):
            return LLMError(f"{self._where} is not reachable: {_describe(exc)}")
        if isinstance(exc, httpx.HTTPError):
            return LLMError(f"{self._where} broke the connection: {_describe(exc)}")
        return LLMError(f"{self._where} gave an unusable answer: {_describe(exc)}")


@dataclass
class _CallParts:
    """One streamed tool call being put together from its fragments."""

    id: str = ""
    name: str = ""
    arguments: str = ""


def _take(chunk: Mapping[str, Any], calls: dict[int, _CallParts]) -> tuple[list[str], bool]:
    """A chunk's text pieces (tool-call fragments are added to `calls`), and whether the model
    generated anything in it (a role-only first chunk or the usage chunk does not count)."""
    texts: list[str] = []
    generated = False
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue  # we ask for one choice
        delta = choice.get("delta") or {}
        if content := delta.get("content"):
            texts.append(str(content))
            generated = True
        for position, fragment in enumerate(delta.get("tool_calls") or ()):
            _add_fragment(calls, fragment, position)
            generated = True
    return texts, generated


def _add_fragment(calls: dict[int, _CallParts], fragment: Mapping[str, Any], position: int) -> None:
    index = fragment.get("index")
    parts = calls.setdefault(index if isinstance(index, int) else position, _CallParts())
    parts.id = parts.id or str(fragment.get("id") or "")
    function = fragment.get("function") or {}
    parts.name = parts.name or str(function.get("name") or "")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        parts.arguments += arguments
    elif arguments is not None:  # a server that sends the arguments whole, as an object
        parts.arguments += json.dumps(arguments)


def _finished(calls: dict[int, _CallParts]) -> list[ToolCall]:
    finished = []
    for index, parts in sorted(calls.items()):
        if not parts.name:
            log.warning("%s: a streamed tool call (index %d) came without a name", SERVER, index)
            continue
        finished.append(ToolCall(parts.name, parse_arguments(parts.arguments), parts.id))
    return finished


def openai_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Our history (Ollama's shape for tool turns) in OpenAI's shape: an assistant turn's tool
    calls get an id, `"type": "function"` and their arguments as JSON text; each tool result
    gets the `tool_call_id` of the call it answers (by name, else in order)."""
    converted: list[dict[str, Any]] = []
    waiting: list[tuple[str, str]] = []  # (id, name) of the calls not answered yet
    for position, message in enumerate(messages):
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                _openai_call(call, position, n) for n, call in enumerate(message["tool_calls"])
            ]
            waiting = [(call["id"], call["function"]["name"]) for call in calls]
            # OpenAI's own turns carry null content beside tool calls.
            converted.append(
                {
                    "role": "assistant",
                    "content": message.get("content") or None,
                    "tool_calls": calls,
                }
            )
        elif role == "tool":
            content = message.get("content")
            converted.append(
                {
                    "role": "tool",
                    "tool_call_id": _answered(message, waiting, position),
                    "content": content if isinstance(content, str) else json.dumps(content),
                }
            )
        else:
            converted.append({"role": role, "content": message.get("content") or ""})
    return converted


def _openai_call(call: Mapping[str, Any], position: int, n: int) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments or {}, ensure_ascii=False)
    return {
        "id": str(call.get("id") or stable_call_id(position, n)),
        "type": "function",
        "function": {"name": str(function.get("name") or ""), "arguments": arguments},
    }


def stable_call_id(position: int, n: int) -> str:
    """The id of the n-th call of the history's message at `position`: the same every time the
    history is sent (a server's prefix cache still matches), and 9 letters and digits, which
    Mistral's chat templates (vLLM) insist on."""
    return "call" + hashlib.sha256(f"{position}:{n}".encode()).hexdigest()[:5]


def _answered(message: Mapping[str, Any], waiting: list[tuple[str, str]], position: int) -> str:
    """The id of the call a tool result answers, taken off `waiting`."""
    given = str(message.get("tool_call_id") or "")
    if given:
        waiting[:] = [w for w in waiting if w[0] != given]
        return given
    name = message.get("tool_name") or message.get("name")
    match = next((w for w in waiting if w[1] == name), waiting[0] if waiting else None)
    if match is None:  # a result without its call: the server will say so
        return stable_call_id(position, 0)
    waiting.remove(match)
    return match[0]


def key_refused(where: str, status: int, key: str, setting: str) -> str:
    """A 401/403, said without the server's own text, which may echo part of the key (OpenAI's
    does)."""
    if not key:
        return f"{where} wants an API key (HTTP {status}): set {setting}"
    return f"{where} refused the API key (HTTP {status}): check {setting}"


def server_message(text: str, *, secrets: Sequence[str] = ()) -> str:
    """What a server said in an error body, one line and short: the `error.message` of
    OpenAI-style JSON, FastAPI's `detail`, or the text itself; any secret replaced by ***."""
    said = text.strip()
    try:
        body = json.loads(said)
    except ValueError:
        body = None
    if isinstance(body, dict):
        said = _message_of(body) or said
    for secret in secrets:
        if secret:
            said = said.replace(secret, "***")
    return " ".join(said.split())[:MESSAGE_CHARS]


def _message_of(body: Mapping[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, Mapping) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str) and error:
        return error
    for key in ("message", "detail"):
        if body.get(key):
            value = body[key]
            return value if isinstance(value, str) else json.dumps(value)
    return ""
