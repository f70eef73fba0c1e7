"""The tools one agent offers: their declarations for the model, the check of the model's
arguments, and the call of a webhook tool."""

from __future__ import annotations

import asyncio
import codecs
import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from voiceai import __version__
from voiceai.tools.declarations import SHOWN_CHARS, Tool

MAX_RESULT_BYTES = 4096  # what the model reads of a webhook's answer; the rest is cut
TRUNCATED = " …(truncated)"


class ToolFailed(Exception):
    """A webhook tool gave no usable answer; the message says what, never a secret."""


class Toolbox:
    """An agent's tools, in the order the model is offered them."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._validators = {
            name: Draft202012Validator(tool.parameters) for name, tool in self._tools.items()
        }

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"Toolbox({', '.join(self._tools)})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def specs(self) -> list[dict[str, Any]]:
        """The declarations for the LLM's `tools=`, in Ollama's (and OpenAI's) shape."""
        return [tool.spec() for tool in self._tools.values()]

    def check(self, name: str, arguments: object) -> str | None:
        """None when the model may call `name` with `arguments`; else a short text telling the
        model what is wrong, to send back as the tool's result."""
        if name not in self._tools:
            offered = ", ".join(self._tools) or "none"
            return f"unknown tool {_shown(name)}; the tools are: {offered}"
        if not isinstance(arguments, Mapping):
            return (
                f"invalid arguments for {name}: must be a JSON object, not {_json_type(arguments)}"
            )
        error = best_match(self._validators[name].iter_errors(dict(arguments)))
        if error is None:
            return None
        where = f" (at {error.json_path})" if error.path else ""
        return f"invalid arguments for {name}: {_short(error.message)}{where}"

    async def run_webhook(self, name: str, arguments: Mapping[str, Any]) -> str:
        """The webhook's answer (its body, cut to MAX_RESULT_BYTES), or ToolFailed."""
        tool = self._tools.get(name)
        if tool is None or tool.builtin:
            raise ToolFailed(f"{_shown(name)} is not a webhook tool of this agent")
        return await call_webhook(tool, arguments)


async def call_webhook(tool: Tool, arguments: Mapping[str, Any]) -> str:
    """POST sends the arguments as a JSON body, GET as query parameters. Redirects are not
    followed: a custom auth header would be sent on to wherever they point."""
    where = f"tool {tool.name}: {tool.method} {tool.host()}"
    headers = {"User-Agent": f"voiceai/{__version__}", "Accept": "application/json, text/*"}
    secret = ""
    if tool.auth_header:
        secret = os.environ.get(tool.auth_env, "")  # read now: a rotated secret needs no reload
        if not secret:
            raise ToolFailed(f"{where}: the environment variable {tool.auth_env} is not set")
        headers[tool.auth_header] = secret
    body: dict[str, Any] = {}
    if tool.method == "POST":
        body["json"] = dict(arguments)
    else:
        body["params"] = _query(arguments)
    try:
        # httpx's timeout bounds each step; this bounds the whole exchange (a trickling answer).
        async with (
            asyncio.timeout(tool.timeout_s),
            httpx.AsyncClient(timeout=tool.timeout_s, follow_redirects=False) as client,
            client.stream(tool.method, tool.url, headers=headers, **body) as answer,
        ):
            if not answer.is_success:
                raise ToolFailed(f"{where} answered HTTP {answer.status_code}")
            return await _read_text(answer)
    except TimeoutError:
        raise ToolFailed(f"{where} gave no answer within {tool.timeout_s:g} s") from None
    except httpx.TimeoutException:
        raise ToolFailed(f"{where} gave no answer within {tool.timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        reason = _short(_reason(exc))
        if secret:
            reason = reason.replace(secret, "***")
        raise ToolFailed(f"{where} failed: {reason}") from None


async def _read_text(answer: httpx.Response) -> str:
    """The body as text, at most MAX_RESULT_BYTES of it (a huge answer is never all read)."""
    data = bytearray()
    async for chunk in answer.aiter_bytes():
        data += chunk
        if len(data) > MAX_RESULT_BYTES:
            break
    cut = len(data) > MAX_RESULT_BYTES
    try:
        decoder = codecs.getincrementaldecoder(answer.encoding or "utf-8")(errors="replace")
    except LookupError:  # a charset Python does not know
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    # Not final when cut: a character split by the cut is left out, not shown as garbage.
    text = decoder.decode(bytes(data[:MAX_RESULT_BYTES]), final=not cut)
    if not text.strip():
        return f"(HTTP {answer.status_code}, no content)"
    return text + TRUNCATED if cut else text


def _reason(exc: BaseException) -> str:
    """The root cause in words ("Connection refused"): httpx's own text for a refused
    connection is only "All connection attempts failed"."""
    cause: BaseException | None = exc
    root: OSError | None = None
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            root = cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(root, socket.gaierror) and root.strerror:
        return root.strerror  # "Name or service not known"
    if root is not None and root.errno and root.errno > 0:
        return os.strerror(root.errno)
    return str(exc) or type(exc).__name__


def _query(arguments: Mapping[str, Any]) -> dict[str, str]:
    """Query parameters: strings as they are, anything else as JSON (true, 3, [1, 2])."""
    return {
        key: value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        for key, value in arguments.items()
    }


def _json_type(value: object) -> str:
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "an array"
    return "null" if value is None else type(value).__name__


def _shown(name: object) -> str:
    return repr(_short(str(name)))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
