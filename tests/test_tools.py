"""Tools: the built-ins' declarations, the check of the model's arguments, webhook calls against
a real local HTTP server, and the tools file's one-line errors."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import free_port
from voiceai.tools import (
    BUILTIN_TOOLS,
    MAX_RESULT_BYTES,
    Tool,
    Toolbox,
    ToolFailed,
    ToolsFileError,
    load_tools,
)

ROOT = Path(__file__).resolve().parent.parent
SECRET = "Bearer s3cret-hook-token"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Webhook:
    """A real HTTP server standing in for an operator's webhook."""

    url: str
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:  # quiet test output
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        parts = urlsplit(self.path)
        self.server.hook.seen.append(
            Seen(
                self.command,
                parts.path,
                parse_qs(parts.query),
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
        )
        if parts.path == "/echo":
            answer = {"ok": True, "status": "shipped"}
            self._answer(200, json.dumps(answer).encode())
        elif parts.path == "/slow":
            time.sleep(2.0)
            self._answer(200, b'{"late": true}')
        elif parts.path == "/trickle":  # the head at once, then a byte every 0.2 s
            self.send_response(200)
            self.send_header("Content-Length", "20")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        elif parts.path == "/fail":  # a careless server that echoes the request's headers
            self._answer(500, json.dumps(dict(self.headers.items())).encode())
        elif parts.path == "/big":
            self._answer(200, "é".encode() * MAX_RESULT_BYTES, "text/plain; charset=utf-8")
        elif parts.path == "/empty":
            self.send_response(204)
            self.end_headers()
        elif parts.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/echo")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._answer(404, b"no such hook")

    do_GET = do_POST = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the tests time out on purpose: the slow handlers then write to a closed socket


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    server = _Server(("127.0.0.1", free_port()), _Handler)
    server.hook = Webhook(f"http://127.0.0.1:{server.server_address[1]}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.hook  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.fixture
def hook(webhook: Webhook) -> Webhook:
    webhook.seen.clear()
    return webhook


def _tool(url: str, **fields: Any) -> Tool:
    values: dict[str, Any] = {
        "name": "order_status",
        "description": "Look up an order.",
        "url": url,
        "parameters": {
            "type": "object",
            "properties": {"order_number": {"type": "string"}, "express": {"type": "boolean"}},
            "required": ["order_number"],
            "additionalProperties": False,
        },
    }
    return Tool(**{**values, **fields})


def _run(tool: Tool, arguments: dict[str, Any]) -> str:
    return asyncio.run(Toolbox([tool]).run_webhook(tool.name, arguments))


def _fails(tool: Tool, arguments: dict[str, Any]) -> str:
    with pytest.raises(ToolFailed) as failure:
        _run(tool, arguments)
    return str(failure.value)


# --- declarations and the model's arguments ------------------------------------------------


def test_builtins_are_declared_in_ollama_function_shape() -> None:
    specs = Toolbox(BUILTIN_TOOLS.values()).specs()
    assert [spec["function"]["name"] for spec in specs] == [
        "transfer_to_person",
        "end_call",
        "take_message",
    ]
    for spec in specs:
        assert spec["type"] == "function"
        assert spec["function"]["description"]
        assert spec["function"]["parameters"]["type"] == "object"
    take_message = specs[2]["function"]["parameters"]
    assert take_message["required"] == ["name", "callback_number", "message"]
    assert all(tool.builtin and not tool.url for tool in BUILTIN_TOOLS.values())


def test_valid_arguments_pass_the_check() -> None:
    tools = Toolbox(BUILTIN_TOOLS.values())
    assert tools.check("end_call", {"reason": "caller is done"}) is None
    arguments = {"name": "Ann", "callback_number": "5551234", "message": "call me"}
    assert tools.check("take_message", arguments) is None


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("hang_up", {}, "unknown tool 'hang_up'; the tools are: transfer_to_person, end_call"),
        ("take_message", {"name": "Ann", "message": "hi"}, "'callback_number' is a required"),
        ("end_call", {"reason": 42}, "42 is not of type 'string' (at $.reason)"),
        ("end_call", {"reason": "done", "mood": "sad"}, "Additional properties are not allowed"),
        ("end_call", "done", "must be a JSON object, not a string"),
    ],
    ids=["unknown-tool", "missing-field", "wrong-type", "extra-field", "not-an-object"],
)
def test_bad_arguments_get_a_short_message_for_the_model(
    name: str, arguments: object, expected: str
) -> None:
    message = Toolbox(BUILTIN_TOOLS.values()).check(name, arguments)
    assert message is not None and expected in message
    assert "\n" not in message and len(message) < 300


# --- webhook calls -------------------------------------------------------------------------


def test_post_webhook_gets_the_arguments_as_json_with_the_auth_header(
    hook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    tool = _tool(f"{hook.url}/echo", auth_header="Authorization", auth_env="HOOK_TOKEN")
    answer = _run(tool, {"order_number": "1234", "express": True})
    assert json.loads(answer) == {"ok": True, "status": "shipped"}
    [request] = hook.seen
    assert request.method == "POST" and request.path == "/echo"
    assert json.loads(request.body) == {"order_number": "1234", "express": True}
    assert request.headers["authorization"] == SECRET
    assert request.headers["content-type"] == "application/json"


def test_get_webhook_gets_the_arguments_as_query_parameters(
    hook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_KEY", "k-123")
    tool = _tool(f"{hook.url}/echo", method="get", auth_header="X-Api-Key", auth_env="HOOK_KEY")
    _run(tool, {"order_number": "00 12", "express": False})
    [request] = hook.seen
    assert request.method == "GET" and request.body == b""
    assert request.query == {"order_number": ["00 12"], "express": ["false"]}
    assert request.headers["x-api-key"] == "k-123"


def test_a_slow_webhook_fails_once_its_timeout_passes(hook: Webhook) -> None:
    started = time.monotonic()
    message = _fails(_tool(f"{hook.url}/slow", timeout_s=0.3), {"order_number": "1"})
    assert time.monotonic() - started < 1.5  # the hook answers after 2 s
    assert message == f"tool order_status: POST {hook.url} gave no answer within 0.3 s"


def test_a_trickling_answer_is_bounded_by_the_timeout_as_a_whole(hook: Webhook) -> None:
    # Each byte comes within httpx's per-read timeout; only a total deadline stops it.
    started = time.monotonic()
    message = _fails(_tool(f"{hook.url}/trickle", timeout_s=1.0), {"order_number": "1"})
    assert time.monotonic() - started < 2.5  # the whole answer takes 4 s
    assert "gave no answer within 1 s" in message


def test_an_error_status_fails_without_the_secret_or_the_body(
    hook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    tool = _tool(
        f"{hook.url}/fail?token=q-s3cret", auth_header="Authorization", auth_env="HOOK_TOKEN"
    )
    message = _fails(tool, {"order_number": "1"})
    assert message == f"tool order_status: POST {hook.url} answered HTTP 500"
    assert "s3cret" not in message  # neither the header (echoed in the body) nor the query


def test_an_unreachable_webhook_fails_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    tool = _tool(url, auth_header="Authorization", auth_env="HOOK_TOKEN")
    message = _fails(tool, {"order_number": "1"})
    assert message.startswith(f"tool order_status: POST {url.removesuffix('/hook')} failed: ")
    assert "refused" in message.lower() and "s3cret" not in message


def test_a_redirect_is_not_followed_with_the_auth_header(
    hook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", SECRET)
    tool = _tool(f"{hook.url}/moved", auth_header="Authorization", auth_env="HOOK_TOKEN")
    assert "answered HTTP 302" in _fails(tool, {"order_number": "1"})
    assert [request.path for request in hook.seen] == ["/moved"]


def test_a_long_answer_is_cut_for_the_model(hook: Webhook) -> None:
    answer = _run(_tool(f"{hook.url}/big"), {"order_number": "1"})
    assert answer.endswith(" …(truncated)")
    kept = answer.removesuffix(" …(truncated)")
    assert set(kept) == {"é"} and len(kept.encode()) == MAX_RESULT_BYTES  # no half character


def test_an_empty_answer_tells_the_model_so(hook: Webhook) -> None:
    assert _run(_tool(f"{hook.url}/empty"), {"order_number": "1"}) == "(HTTP 204, no content)"


def test_an_auth_variable_unset_since_start_fails_without_calling(
    hook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    tool = _tool(f"{hook.url}/echo", auth_header="Authorization", auth_env="HOOK_TOKEN")
    assert "the environment variable HOOK_TOKEN is not set" in _fails(tool, {"order_number": "1"})
    assert hook.seen == []


def test_only_webhook_tools_of_the_toolbox_are_run(hook: Webhook) -> None:
    tools = Toolbox([*BUILTIN_TOOLS.values(), _tool(f"{hook.url}/echo")])
    for name in ("end_call", "no_such_tool"):
        with pytest.raises(ToolFailed, match="is not a webhook tool"):
            asyncio.run(tools.run_webhook(name, {}))
    assert hook.seen == []


# --- the tools file ------------------------------------------------------------------------


GOOD_TOOL = """
- name: order_status
  description: Look up an order.
  url: https://shop.example.com/orders
  method: GET
  auth_header: Authorization
  auth_env: SHOP_TOKEN
  parameters:
    type: object
    properties: {order_number: {type: string}}
    required: [order_number]
- name: opening_hours
  description: Today's opening hours.
  url: http://127.0.0.1:9/hours
  timeout_s: 2
"""


def test_the_tools_file_declares_webhook_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_TOKEN", SECRET)
    path = tmp_path / "tools.yaml"
    path.write_text(GOOD_TOOL)
    tools = load_tools(path, default_timeout_s=4)
    assert list(tools) == ["order_status", "opening_hours"]
    assert tools["order_status"].method == "GET" and tools["order_status"].timeout_s == 4
    assert tools["opening_hours"].method == "POST" and tools["opening_hours"].timeout_s == 2
    assert tools["opening_hours"].parameters == {"type": "object", "properties": {}}
    assert SECRET not in repr(tools)  # the value stays in the environment
    assert load_tools(None) == {}


def test_the_example_tools_file_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_API_TOKEN", SECRET)
    assert list(load_tools(ROOT / "tools.example.yaml")) == ["order_status", "book_appointment"]


BAD_TOOLS = {
    "bad-yaml": ("- name: a\n  description: [unclosed\n", "not valid YAML: ", "line 3"),
    "not-a-list": ("name: a\n", "must be a list of tools", ""),
    "missing-url": ("- name: lookup\n  description: d\n", "tool 'lookup': url: Field required", ""),
    "missing-name": ("- description: d\n  url: http://h/\n", "tool #1: name: Field required", ""),
    "bad-schema": (
        "- name: lookup\n  description: d\n  url: http://h/\n"
        "  parameters: {type: object, properties: {n: {type: strin}}}\n",
        "tool 'lookup': parameters: not a valid JSON schema at $.properties.n.type:",
        "'strin'",
    ),
    "schema-not-object": (
        "- name: lookup\n  description: d\n  url: http://h/\n  parameters: {type: string}\n",
        'tool \'lookup\': parameters: must be a JSON schema with "type": "object"',
        "",
    ),
    "builtin-clash": (
        "- name: end_call\n  description: d\n  url: http://h/\n",
        "tool 'end_call': name: end_call is a built-in tool",
        "",
    ),
    "auth-env-unset": (
        "- name: lookup\n  description: d\n  url: http://h/\n"
        "  auth_header: Authorization\n  auth_env: NO_SUCH_TOKEN_VAR\n",
        "tool 'lookup': auth_env: the environment variable NO_SUCH_TOKEN_VAR is not set",
        "",
    ),
    "header-without-env": (
        "- name: lookup\n  description: d\n  url: http://h/\n  auth_header: Authorization\n",
        "tool 'lookup': auth_header and auth_env go together",
        "",
    ),
    "unknown-field": (
        "- name: lookup\n  description: d\n  url: http://h/\n  methdo: GET\n",
        "tool 'lookup': methdo: Extra inputs are not permitted",
        "",
    ),
    "bad-url": (
        "- name: lookup\n  description: d\n  url: ftp://h/x\n",
        "tool 'lookup': url: must be an http:// or https:// URL",
        "",
    ),
    "twice": (
        "- {name: a, description: d, url: 'http://h/'}\n- {name: a, description: d, url: 'http://h/'}\n",
        "tool 'a': name: declared twice",
        "",
    ),
    "duplicate-key": (
        "- name: a\n  description: d\n  url: http://h/\n  url: http://g/\n",
        "duplicate key 'url'",
        "line 4",
    ),
}


@pytest.mark.parametrize(("text", "expected", "also"), BAD_TOOLS.values(), ids=BAD_TOOLS.keys())
def test_a_bad_tools_file_is_one_line_naming_file_tool_and_problem(
    tmp_path: Path, text: str, expected: str, also: str
) -> None:
    path = tmp_path / "tools.yaml"
    path.write_text(text)
    with pytest.raises(ToolsFileError) as error:
        load_tools(path)
    message = str(error.value)
    assert message.startswith(f"invalid setting VOICEAI_TOOLS_FILE: {path}: ")
    assert expected in message and also in message
    assert "\n" not in message


def test_a_missing_tools_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ToolsFileError, match=r"tools\.yaml: cannot read it \(No such file"):
        load_tools(tmp_path / "tools.yaml")
