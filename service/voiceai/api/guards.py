"""What every request passes before any route sees it: its size, its host, its origin.

- Bodies are limited before they are read, so an unauthenticated 1 GB POST costs nothing.
- Host names the service does not know are refused (DNS rebinding: a web page whose name
  resolves to this machine would otherwise be "same-origin" with the API).
- Browsers' cross-site websockets and state-changing requests are refused by their Origin, and
  without an API token a state-changing request must be JSON, which no HTML form can send.
- Request heads must arrive whole and quickly (uvicorn has no such limit of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
from typing import Any, Final
from urllib.parse import urlsplit

import h11
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from voiceai.config import Settings

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S: Final = 5.0  # for a request's head, then for its body: real clients need ms
MAX_HEAD_BYTES: Final = 16 * 1024  # request line + headers; more gets 400 and a close
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
FORK_PATH: Final = "/fork/"  # FreeSWITCH's websocket: its Host is whatever FS_FORK_URL names
DEFAULT_PORTS: Final = {"http": 80, "ws": 80, "https": 443, "wss": 443}
CLOSE: Final = {"Connection": "close"}


def install(app: FastAPI, settings: Settings) -> None:
    """The guards (the last added runs first): a refused request is never read, parsed or
    authenticated."""
    hosts = HostNames.from_settings(settings)
    json_required = not settings.api_token.get_secret_value()
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CrossSiteGuard, hosts=hosts, json_required=json_required)
    app.add_middleware(HostGuard, hosts=hosts)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]


def http_server_options() -> dict[str, Any]:
    """uvicorn options that bound what a client can make the server hold."""
    return {"http": GuardedH11Protocol, "h11_max_incomplete_event_size": MAX_HEAD_BYTES}


# -- refusing ----------------------------------------------------------------------------------


async def refuse(scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
    """A JSON error, for a websocket as an HTTP denial (the handshake is never accepted); an
    HTTP connection is closed after it (what the client still sends is never read)."""
    headers = CLOSE if scope["type"] == "http" else None
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    if scope["type"] == "websocket" and "websocket.http.response" not in (
        scope.get("extensions") or {}
    ):
        await send({"type": "websocket.close", "code": 1008})  # the server answers 403
        return
    await response(scope, receive, send)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


# -- host names -------------------------------------------------------------------------------


class HostNames:
    """The names this service answers to. IP addresses always pass: no page can rebind one."""

    def __init__(self, names: set[str], suffixes: tuple[str, ...], any_host: bool) -> None:
        self.names = names
        self.suffixes = suffixes
        self.any_host = any_host
        self.configured: set[str] = set()  # the operator's own names: trusted as origins too

    @classmethod
    def from_settings(cls, settings: Settings) -> HostNames:
        configured = [h.strip().lower().rstrip(".") for h in settings.allowed_hosts.split(",")]
        configured = [h for h in configured if h]
        names = {"localhost", *_machine_names()}
        if not _is_ip(settings.host) and settings.host not in ("", "0.0.0.0", "::"):
            names.add(settings.host.lower())
        names.update(h for h in configured if not h.startswith("*"))
        suffixes = tuple(h[1:] for h in configured if h.startswith("*."))
        hosts = cls(names, suffixes, "*" in configured)
        hosts.configured = {h for h in configured if h != "*"}
        return hosts

    def allows(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return self.any_host or _is_ip(name) or name in self.names or name.endswith(self.suffixes)

    def configured_allows(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        return name in self.configured or any(
            pattern.startswith("*.") and name.endswith(pattern[1:]) for pattern in self.configured
        )


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower()}
    with contextlib.suppress(OSError):  # no resolver: the plain host name is enough
        names.add(socket.getfqdn().lower())
    names |= {f"{name.split('.')[0]}.local" for name in names if name}  # mDNS
    return {name for name in names if name}


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_name(host: str) -> str:
    """The name in a Host header: without its port, an IPv6 address without brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostGuard:
    """400 for a Host the service does not know (a request without one comes from no browser)."""

    def __init__(self, app: ASGIApp, hosts: HostNames) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"].startswith(FORK_PATH):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if host is None or self.hosts.allows(host_name(host)):
            await self.app(scope, receive, send)
            return
        log.warning(
            "refused %r from %s: unknown Host %r (add it to VOICEAI_ALLOWED_HOSTS)",
            scope["path"][:200],
            _client(scope),
            host[:200],
        )
        await refuse(scope, receive, send, 400, "unknown host: add it to VOICEAI_ALLOWED_HOSTS")


# -- origins ----------------------------------------------------------------------------------


def _netloc(host: str, port: int | None, scheme: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None or port == DEFAULT_PORTS.get(scheme) else f"{shown}:{port}"


def origin_host(origin: str) -> tuple[str, str] | None:
    """(host name, host[:port] without a default port) of a browser's Origin; None if invalid."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, _netloc(parts.hostname, port, parts.scheme)


def same_host(origin_netloc: str, host: str) -> bool:
    host = host.lower()
    for default in (":80", ":443"):
        host = host.removesuffix(default)
    return origin_netloc == host


class CrossSiteGuard:
    """403 for a browser's websocket or state-changing request from another site; without an
    API token, 415 for a state-changing request that is not JSON (forms cannot send JSON)."""

    def __init__(self, app: ASGIApp, hosts: HostNames, json_required: bool) -> None:
        self.app = app
        self.hosts = hosts
        self.json_required = json_required

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        unsafe = kind == "websocket" or (kind == "http" and scope["method"] not in SAFE_METHODS)
        if not unsafe:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = self._origin_problem(scope, headers)
        if problem is None and kind == "http" and self.json_required:
            problem = _not_json(headers)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, detail = problem
        log.warning(
            "refused %s %r from %s: %s",
            scope.get("method", "websocket"),
            scope["path"][:200],
            _client(scope),
            detail,
        )
        await refuse(scope, receive, send, status, detail)

    def _origin_problem(self, scope: Scope, headers: Headers) -> tuple[int, str] | None:
        origin = headers.get("origin")
        # Browsers always send a scheme://host Origin (or "null"); mod_audio_fork sends its bare
        # host name, and curl or FreeSWITCH none: only a browser can be lured cross-site.
        if origin is None or ("://" not in origin and origin != "null"):
            return None
        if scope["path"].startswith(FORK_PATH):  # FreeSWITCH's own: never a browser's
            return 403, "the fork socket is for FreeSWITCH, not for browsers"
        parsed = origin_host(origin)
        host = headers.get("host")
        if parsed is not None:
            name, netloc = parsed
            if (host is not None and same_host(netloc, host)) or self.hosts.configured_allows(name):
                return None
        return 403, f"cross-site request from origin {origin[:100]!r} refused"


def _not_json(headers: Headers) -> tuple[int, str] | None:
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        return None
    return 415, "send Content-Type: application/json (no API token is set)"


# -- body size and pace -----------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes", headers=CLOSE)


class BodyTooSlow(HTTPException):
    def __init__(self) -> None:
        detail = f"request body not received within {CLIENT_TIMEOUT_S:g} s"
        super().__init__(408, detail, headers=CLOSE)


class BodyLimit:
    """413 for a body over the limit (by its Content-Length, or counted as it arrives), 408 for
    one that does not arrive in time; bodies are never read past either."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.strip().isdigit() and int(length) > self.max_bytes:
            log.warning(
                "refused %s %r from %s: body of %s bytes, over VOICEAI_MAX_BODY_BYTES",
                scope["method"],
                scope["path"][:200],
                _client(scope),
                length.strip()[:30],
            )
            await refuse(scope, receive, send, 413, f"request body over {self.max_bytes} bytes")
            return
        started = False
        counted = 0
        complete = False
        deadline = asyncio.get_running_loop().time() + CLIENT_TIMEOUT_S

        async def limited_receive() -> Message:
            nonlocal counted, complete
            if complete:  # after the body, receive() only waits for the client to leave
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTooSlow() from None
            if message["type"] == "http.request":
                counted += len(message.get("body", b""))
                if counted > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
                complete = not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except (BodyTooLarge, BodyTooSlow) as exc:  # read outside a route (routes answer it)
            if started:
                raise
            log.warning("refused %r from %s: %s", scope["path"][:200], _client(scope), exc.detail)
            await refuse(scope, receive, send, exc.status_code, exc.detail)


# -- validation errors ------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """`value` with the floats JSON cannot hold (1e400 parses as inf) as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, able to show every input it refused (its own fails on inf: a bare 500)."""
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


# -- the HTTP server --------------------------------------------------------------------------


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request head: a client that connects
    and sends nothing, or a head bit by bit, is closed after CLIENT_TIMEOUT_S (uvicorn would
    hold it for ever). h11 itself answers a head over MAX_HEAD_BYTES with 400."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _await_head(self) -> None:
        if not self._waiting_for_head():
            self._stop_head_timer()
        elif self._head_timer is None:  # armed once a head: trickling bytes does not renew it
            self._head_timer = self.loop.call_later(CLIENT_TIMEOUT_S, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._waiting_for_head():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.warning(
                "closed the connection from %s: no complete request within %g s",
                client,
                CLIENT_TIMEOUT_S,
            )
            self.transport.close()
