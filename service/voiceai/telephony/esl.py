"""FreeSWITCH's inbound event socket behind an asyncio facade (greenswitch in its own hub).

greenswitch 0.0.19 is gevent-only and the service must not be monkey-patched, so one dedicated
thread runs a private gevent hub and every greenswitch object lives there. The asyncio side
hands jobs in through a `queue.SimpleQueue` plus the hub's thread-safe async watcher; results
and events come back with `loop.call_soon_threadsafe`.

greenswitch defects guarded here (docs/design.md, "ESL"):
- its event parser URL-decodes the whole event before splitting headers, so a caller ID name
  such as `x%0AUnique-ID: other` forges headers: we subscribe with `event json`, read exactly
  Content-Length bytes and json.loads them ourselves; `EslEvent.uuid` comes from that JSON;
- `send()` has no timeout: every request has one, and a late reply still pops its own slot in
  greenswitch's FIFO (`_commands_sent`), so it is never taken for the next request's reply;
- requests in flight are not failed when the connection drops: we fail them all at once;
- no reconnect: we reconnect with exponential backoff, resubscribe and report the state;
- `stop()` sends `exit` and waits forever after a failed auth: never called, we close the
  socket ourselves; `_read_socket` spins forever on EOF inside a body: we read bodies ourselves;
- its reader buffers a header line of any length and skips what it cannot parse, so one bad
  Content-Length shifted every later reply onto the wrong request: we frame every message
  ourselves (capped lines, header blocks and bodies), check that each reply is of the kind its
  command gets, and drop the connection (then reconnect) at the first message out of step;
- nothing notices a FreeSWITCH that stops answering with the socket open: `api status` every
  `heartbeat_s`, and no (or a wrong) answer within `heartbeat_s` drops the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import queue
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from uuid import uuid4

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.socket
from greenswitch.esl import InboundESL

log = logging.getLogger(__name__)

LOST: Final = "FreeSWITCH event socket connection lost"
STOPPED: Final = "ESL client stopped"
INITIAL_BACKOFF_S: Final = 0.25
HUB_GRACE_S: Final = 2.0  # extra asyncio-side wait, in case the hub thread itself is stuck
MAX_HEADER: Final = 64 * 1024  # one header block; FreeSWITCH's are a few hundred bytes
MAX_BODY: Final = 16 * 1024 * 1024  # the largest real body (an event) is tens of kB

EventHandler = Callable[["EslEvent"], Awaitable[None] | None]
StateHandler = Callable[[str], Awaitable[None] | None]

_TOKEN = re.compile(r"[^\s]+")  # one space-free word (uuids, event names)
_HEADER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SUBCLASS = re.compile(r"[A-Za-z0-9_.:-]+")
_JOB_HEADER = re.compile(r"\nJob-UUID: (\S+)")


class EslError(Exception):
    """Talking to FreeSWITCH failed; the message never contains the password."""


class EslNotConnected(EslError):
    """The event socket is down (or went down while the request was in flight)."""


class EslTimeout(EslError):
    """FreeSWITCH did not answer in time (the connection itself may still be fine)."""


class _Desync(Exception):
    """The bytes no longer line up with ESL's framing: only a new connection can fix that."""


@dataclass(frozen=True)
class EslEvent:
    """One event, parsed from FreeSWITCH's JSON body (never from URL-decoded plain text)."""

    name: str
    subclass: str | None
    headers: dict[str, str]
    body: str | None = None

    @property
    def uuid(self) -> str | None:
        return self.headers.get("Unique-ID")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EslEvent | None:
        """An `text/event-json` object → event; None when it names no event."""
        headers = {str(k): _header_text(v) for k, v in data.items() if k != "_body"}
        name = headers.get("Event-Name")
        if not name:
            return None
        body = data.get("_body")
        return cls(
            name, headers.get("Event-Subclass"), headers, body if isinstance(body, str) else None
        )


def _header_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # multi-valued headers: FreeSWITCH's own plain-text form
        return "ARRAY::" + "|:".join(_header_text(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class _Reply:
    headers: dict[str, str]
    body: str | None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        return self.headers.get("Reply-Text", "")


class _Pending(gevent.event.AsyncResult):
    """One request's slot in greenswitch's reply FIFO: when it was sent, what must answer it."""

    def __init__(self, line: str, label: str) -> None:
        super().__init__()
        self.label = label
        self.sent_at = time.monotonic()
        self.expect = "api/response" if line.startswith("api ") else "command/reply"
        job = _JOB_HEADER.search(line)
        self.job = job.group(1) if job else None


def one_line(value: str, what: str) -> str:
    """Refuse CR/LF/NUL: one more line would be one more ESL header or command."""
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{what} must be a single line")
    return value


def subscription(events: Sequence[str], custom: Sequence[str]) -> str:
    """`event json A B ... CUSTOM x::y ...`: plain names first, every word after CUSTOM is a
    subclass (docs/design.md). BACKGROUND_JOB is always included: bgapi results arrive with it."""
    names: list[str] = []
    for raw in [*events, "BACKGROUND_JOB"]:
        name = raw.strip().upper()
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"not an event name: {raw!r}")
        if name != "CUSTOM" and name not in names:
            names.append(name)
    subclasses: list[str] = []
    for sub in custom:
        if not _SUBCLASS.fullmatch(sub):
            raise ValueError(f"not an event subclass: {sub!r}")
        if sub not in subclasses:
            subclasses.append(sub)
    line = "event json " + " ".join(names)
    return f"{line} CUSTOM {' '.join(subclasses)}" if subclasses else line


# --- one TCP session, inside the hub thread ------------------------------------------------


class _Connection(InboundESL):
    """One session to FreeSWITCH; never reused after it closes (a new one is made instead)."""

    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        *,
        timeout_s: float,
        stall_s: float,
        deliver: Callable[[EslEvent], None],
    ) -> None:
        super().__init__(host, port, password, timeout_s)
        self.sock: Any = None
        self.sock_file: Any = None
        self.stall_s = stall_s
        self.lost_reason: str | None = None
        self.closed = gevent.event.Event()  # set once the reader has ended and closed the socket
        self._deliver = deliver
        self._send_lock = gevent.lock.Semaphore()
        self._finished = False

    # connecting

    def open(self) -> None:
        """TCP connect, wait for auth/request, authenticate; raises EslError."""
        try:
            sock = gevent.socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise EslError(f"cannot reach FreeSWITCH at {self.host}:{self.port}: {exc}") from None
        _tune(sock)
        sock.settimeout(None)  # reads block; every request has its own timeout instead
        self.sock = sock
        self.sock_file = sock.makefile("rb")
        self.connected = True
        self._receive_events_greenlet = gevent.spawn(self.receive_events)
        if not self._auth_request_event.wait(self.timeout):
            raise EslError(f"FreeSWITCH at {self.host}:{self.port} sent no auth request")
        if not self.connected:
            raise EslError(self.lost_reason or "FreeSWITCH closed the event socket before auth")
        reply = self.request(f"auth {self.password}", self.timeout, "auth")
        if reply.reply_text != "+OK accepted":
            text = reply.reply_text or "no reply"
            raise EslError(f"FreeSWITCH rejected the event socket password ({text})")

    # requests

    def request(self, line: str, timeout_s: float, label: str) -> _Reply:
        """Send one command and wait for its reply, at most `timeout_s` seconds."""
        if not self.connected:
            raise EslNotConnected(LOST)
        deadline = time.monotonic() + timeout_s
        pending = _Pending(line, label)
        if not self._send_lock.acquire(timeout=timeout_s):
            raise EslTimeout(f"could not send `{label}` within {timeout_s:g} s")
        try:
            if not self.connected:
                raise EslNotConnected(LOST)
            # Appended and written under one lock: FIFO order is wire order.
            self._commands_sent.append(pending)
            timer = gevent.Timeout(max(deadline - time.monotonic(), 0.01))
            timer.start()
            try:
                self.sock.sendall(f"{line}\n\n".encode())
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                self.drop("FreeSWITCH stopped reading commands")  # a half-written command
                raise EslNotConnected(LOST) from None
            except OSError as exc:
                self.drop(f"writing to the event socket failed: {exc}")
                raise EslNotConnected(LOST) from None
            finally:
                timer.close()
        finally:
            self._send_lock.release()
        try:
            reply = pending.get(timeout=max(deadline - time.monotonic(), 0.0))
        except gevent.Timeout:
            # The slot stays in the FIFO: the late reply will pop it, not the next request's.
            self._check_stalled()
            raise EslTimeout(
                f"FreeSWITCH did not answer `{label}` within {timeout_s:g} s"
            ) from None
        assert isinstance(reply, _Reply)
        return reply

    def send(self, data: str) -> _Reply:  # greenswitch's own API, made safe
        return self.request(data, self.timeout, data.split(" ", 1)[0])

    def stop(self) -> None:  # greenswitch's stop() can hang forever: never use it
        self.drop(STOPPED)

    def heartbeat(self, interval_s: float) -> None:
        """`api status` every `interval_s`: no answer, or not status's, within it drops us."""
        while not self.closed.wait(interval_s):
            try:
                reply = self.request("api status", interval_s, "api status (heartbeat)")
            except EslTimeout:
                self.drop(f"FreeSWITCH did not answer the heartbeat within {interval_s:g} s")
                return
            except EslNotConnected:
                return
            if not (reply.body or "").startswith("UP "):  # another command's reply: shifted
                self.drop("the heartbeat got another command's reply: replies are out of step")
                return

    def _check_stalled(self) -> None:
        # FreeSWITCH answers in order: if the oldest request is this old, nothing will come.
        if self._commands_sent and self.connected:
            oldest = self._commands_sent[0]
            waited = time.monotonic() - oldest.sent_at
            if waited > self.stall_s:
                self.drop(f"FreeSWITCH has not answered `{oldest.label}` for {waited:.0f} s")

    # closing

    def drop(self, reason: str) -> None:
        """Close from our side: fail every waiting request now, wake the reader with EOF."""
        self._note_lost(reason)
        self.connected = False
        self._run = False
        self._fail_pending()
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)  # the reader sees EOF and closes the rest
        reader = self._receive_events_greenlet
        if reader is None or reader.dead:
            self._close_socket()
            self._finish()

    def _note_lost(self, reason: str) -> None:
        if self.lost_reason is None:
            self.lost_reason = reason

    def _fail_pending(self) -> None:
        pending, self._commands_sent = self._commands_sent, []
        for slot in pending:
            if not slot.ready():
                slot.set_exception(EslNotConnected(LOST))

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self.connected = False
        self._run = False
        self._note_lost("FreeSWITCH closed the event socket")
        self._fail_pending()
        self._auth_request_event.set()  # an open() still waiting for the greeting wakes up
        self.closed.set()

    def _close_socket(self) -> None:
        # Only the reader greenlet (or nobody) uses the file: closing it elsewhere would fail.
        for thing in (self.sock_file, self.sock):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()

    # reading: our own framing, not greenswitch's (see the module docstring)

    def receive_events(self) -> None:
        # Replaces greenswitch's loop: its unbounded readline and lenient parse cannot be guarded.
        try:
            while self._run:
                message = self._read_message()
                if message is None:
                    break
                self._handle(*message)
        except _Desync as exc:
            self._note_lost(f"the event socket is out of step: {exc}")
        except Exception as exc:
            self._note_lost(f"event socket read failed: {exc}")
        finally:
            self._close_socket()
            self._finish()

    def _read_message(self) -> tuple[dict[str, str], str | None] | None:
        """One message: a header block and its Content-Length body; None at EOF between two."""
        headers = self._read_headers()
        if headers is None:
            return None
        if "Content-Type" not in headers:
            raise _Desync(f"a header block without Content-Type ({', '.join(headers)[:200]})")
        return headers, self._read_body(headers)

    def _read_headers(self) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        size = 0
        while True:
            line = self.sock_file.readline(MAX_HEADER + 1 - size)  # never buffers past the cap
            size += len(line)
            if size > MAX_HEADER:
                raise _Desync(f"a header block longer than {MAX_HEADER} bytes")
            if not line.endswith(b"\n"):
                if size == 0:
                    return None
                raise ConnectionError("connection closed in the middle of a message")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text:
                if headers:
                    return headers
                continue  # blank lines between messages
            name, sep, value = text.partition(":")
            if not sep or not _HEADER_NAME.fullmatch(name):
                raise _Desync(f"a header line that does not parse ({len(text)} bytes)")
            headers[name] = value.lstrip(" ")

    def _read_body(self, headers: Mapping[str, str]) -> str | None:
        raw = headers.get("Content-Length")
        if raw is None:
            return None
        if not (raw.isascii() and raw.isdigit() and len(raw) < 10) or int(raw) > MAX_BODY:
            raise _Desync(f"a bad Content-Length ({raw[:20]!r}, at most {MAX_BODY})")
        length = int(raw)
        data = self.sock_file.read(length) if length else b""
        if len(data) < length:
            raise ConnectionError("connection closed in the middle of a message")
        return data.decode("utf-8", "replace")

    def _handle(self, headers: dict[str, str], body: str | None) -> None:
        kind = headers["Content-Type"]
        if kind == "auth/request":
            self._auth_request_event.set()
        elif kind in ("command/reply", "api/response"):
            self._reply(_Reply(headers, body))
        elif kind == "text/event-json":
            self._event_json(body or "")
        elif kind == "text/disconnect-notice":
            if headers.get("Content-Disposition") == "linger":
                return
            self._note_lost("FreeSWITCH closed the event socket (disconnect-notice)")
            self.connected = False
            self._run = False  # the reader ends after this message
            self._fail_pending()
        elif kind == "text/rude-rejection":
            text = (body or "").strip() or "rude rejection"
            self._note_lost(f"FreeSWITCH refused the connection ({text}); check its ACL")
            self.connected = False
            self._run = False
            self._auth_request_event.set()
        else:
            log.debug("esl: ignoring a %s message", kind)

    def _reply(self, reply: _Reply) -> None:
        # FreeSWITCH answers in order, one reply per command: anything else is a shifted stream.
        if not self._commands_sent:
            raise _Desync(f"a {reply.content_type} that no command is waiting for")
        slot = self._commands_sent[0]
        if reply.content_type != slot.expect:
            raise _Desync(f"`{slot.label}` got a {reply.content_type} (expected {slot.expect})")
        job = reply.headers.get("Job-UUID")
        if slot.job is not None and job is not None and job != slot.job:
            raise _Desync(f"`{slot.label}` got the reply of another job")
        self._commands_sent.pop(0).set(reply)

    def _event_json(self, body: str) -> None:
        try:
            data = json.loads(body)
        except ValueError:
            raise _Desync(f"an event that is not JSON ({len(body)} bytes)") from None
        if not isinstance(data, dict):
            raise _Desync("an event that is not a JSON object")
        event = EslEvent.from_json(data)
        if event is not None:
            self._deliver(event)


def _tune(sock: Any) -> None:
    # Small commands must not wait for delayed ACKs; keepalive notices a vanished host.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


# --- the asyncio facade --------------------------------------------------------------------


@dataclass
class _Job:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]


_STOP: Final = object()  # ends the event dispatcher


class EslClient:
    """An always-reconnecting inbound ESL client for asyncio code.

    `start()` never fails because FreeSWITCH is down: it connects in the background, retrying
    with exponential backoff up to `reconnect_max_s`. Requests fail at once with
    EslNotConnected while it is down. A connection whose replies fall out of step, or that
    stops answering the `heartbeat_s` heartbeat, is dropped and made anew. Event and state
    handlers run on the event loop, one item at a time in arrival order, so keep them short
    (hand work to per-call queues).
    """

    def __init__(
        self,
        host: str,
        port: int,
        password: str,
        *,
        events: Sequence[str] = (),
        custom: Sequence[str] = (),
        reconnect_max_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        stall_s: float = 30.0,
        heartbeat_s: float = 5.0,
    ) -> None:
        one_line(password, "the event socket password")
        if min(reconnect_max_s, connect_timeout_s, stall_s, heartbeat_s) <= 0:
            raise ValueError(
                "reconnect_max_s, connect_timeout_s, stall_s and heartbeat_s must be positive"
            )
        self.host = host
        self.port = port
        self._password = password
        self._subscription = subscription(events, custom)
        self._deliver_jobs = any(e.strip().upper() in ("BACKGROUND_JOB", "ALL") for e in events)
        self.reconnect_max_s = reconnect_max_s
        self.connect_timeout_s = connect_timeout_s
        self.stall_s = stall_s
        self.heartbeat_s = heartbeat_s  # a silent FreeSWITCH is dropped within twice this
        self.state = "disconnected"  # connecting | connected | disconnected
        self.last_error: str | None = None
        self._event_handlers: list[EventHandler] = []
        self._state_handlers: list[StateHandler] = []
        self._connected = asyncio.Event()
        self._job_results: dict[str, asyncio.Future[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Shared with the hub thread: the job queue and its wakeup (guarded by _submit_lock).
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._submit_lock = threading.Lock()
        self._watcher: Any = None
        # Hub-thread only.
        self._conn: _Connection | None = None
        self._attempt: _Connection | None = None
        self._stopping: gevent.event.Event | None = None
        self._supervisor: gevent.Greenlet | None = None
        self._group: gevent.pool.Group | None = None
        self._logged_error: str | None = None

    # --- public API -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    def on_event(self, handler: EventHandler) -> None:
        self._event_handlers.append(handler)

    def on_state(self, handler: StateHandler) -> None:
        """Called with "connecting" | "connected" | "disconnected" on every change."""
        self._state_handlers.append(handler)

    async def start(self) -> None:
        """Start the hub thread and connect in the background (never raises if FS is down)."""
        if self._thread is not None:
            raise RuntimeError("EslClient.start() was already called")
        self._loop = asyncio.get_running_loop()
        self._dispatcher = asyncio.create_task(self._dispatch(), name="esl-events")
        self._set_state("connecting", None)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._hub_main, args=(ready,), name="esl-gevent", daemon=True
        )
        self._thread.start()
        await ready

    async def stop(self) -> None:
        """Close the connection, fail whatever is waiting, end the thread. Never hangs."""
        if self._thread is None or self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with contextlib.suppress(EslError):
            self._submit(self._hub_stop, done)
            with contextlib.suppress(EslError, TimeoutError):
                await asyncio.wait_for(done, HUB_GRACE_S + 1.0)
        await asyncio.to_thread(self._thread.join, 5.0)
        if self._thread.is_alive():
            log.error("esl: the gevent thread did not stop")
        self._fail_job_results(EslNotConnected(STOPPED))
        self._set_state("disconnected", None)
        self._inbox.put_nowait(_STOP)
        if self._dispatcher is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._dispatcher), 5.0)
            except TimeoutError:
                self._dispatcher.cancel()

    async def wait_connected(self, timeout_s: float) -> bool:
        """True once connected (at once if already), False after `timeout_s` seconds."""
        if self.connected:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        return self.connected

    async def api(self, command: str, timeout_s: float = 5.0) -> str:
        """`api <command>` → the response body as FreeSWITCH wrote it (`-ERR ...` included)."""
        one_line(command, "an api command")
        label = f"api {command.split(' ', 1)[0]}"
        reply = await self._request(f"api {command}", timeout_s, label)
        if reply.content_type != "api/response":
            raise EslError(f"FreeSWITCH refused `{label}`: {reply.reply_text or 'no reply'}")
        return reply.body or ""

    async def bgapi(self, command: str, timeout_s: float = 30.0) -> str:
        """`bgapi <command>`: runs without blocking the socket; returns the job's result body.

        Use it for slow commands (originate waits for an answer): a plain `api` holds every
        other command on this connection until it finishes.
        """
        one_line(command, "a bgapi command")
        label = f"bgapi {command.split(' ', 1)[0]}"
        loop = asyncio.get_running_loop()
        job = str(uuid4())
        result: asyncio.Future[str] = loop.create_future()
        self._job_results[job] = result  # before sending: the event may beat the reply
        deadline = loop.time() + timeout_s
        try:
            reply = await self._request(
                f"bgapi {command}\nJob-UUID: {job}", min(timeout_s, self.connect_timeout_s), label
            )
            if not reply.reply_text.startswith("+OK"):
                raise EslError(f"FreeSWITCH refused `{label}`: {reply.reply_text or 'no reply'}")
            try:
                return await asyncio.wait_for(result, max(deadline - loop.time(), 0.0))
            except TimeoutError:
                raise EslTimeout(f"`{label}` did not finish within {timeout_s:g} s") from None
        finally:
            self._job_results.pop(job, None)

    async def sendmsg(self, uuid: str, headers: Mapping[str, str], timeout_s: float = 5.0) -> str:
        """`sendmsg <uuid>` with these headers → FreeSWITCH's Reply-Text (`+OK` or `-ERR ...`)."""
        if not _TOKEN.fullmatch(uuid):
            raise ValueError(f"not a channel uuid: {uuid!r}")
        lines = [f"sendmsg {uuid}"]
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"not a header name: {name!r}")
            lines.append(f"{name}: {one_line(value, f'header {name}')}")
        reply = await self._request("\n".join(lines), timeout_s, "sendmsg")
        return reply.reply_text

    # --- asyncio side internals -------------------------------------------------------------

    async def _request(self, line: str, timeout_s: float, label: str) -> _Reply:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if not self.connected:
            raise EslNotConnected(self._down_message())
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Reply] = loop.create_future()
        self._submit(lambda: self._hub_request(line, timeout_s, label), future)
        try:
            return await asyncio.wait_for(future, timeout_s + HUB_GRACE_S)
        except TimeoutError:
            raise EslTimeout(
                f"FreeSWITCH did not answer `{label}` within {timeout_s:g} s"
            ) from None

    def _down_message(self) -> str:
        if self._stopped:
            return STOPPED
        why = f" ({self.last_error})" if self.last_error else ""
        return f"FreeSWITCH event socket is not connected{why}"

    def _submit(self, fn: Callable[[], Any], future: asyncio.Future[Any]) -> None:
        with self._submit_lock:
            if self._watcher is None:
                raise EslNotConnected(STOPPED if self._stopped else "ESL client is not running")
            self._jobs.put(_Job(fn, future))
            self._watcher.send()  # thread-safe: wakes the hub, which runs _drain

    def _set_state(self, state: str, error: str | None) -> None:
        self.last_error = error
        if state == "connected":
            self._connected.set()
        else:
            self._connected.clear()
            if state == "disconnected":
                self._fail_job_results(EslNotConnected(LOST))
        if state != self.state:
            self.state = state
            self._inbox.put_nowait(state)

    def _set_error(self, error: str) -> None:
        self.last_error = error
        if self.state == "connecting":
            self._set_state("disconnected", error)

    def _accept_event(self, event: EslEvent) -> None:
        if event.name == "BACKGROUND_JOB":
            result = self._job_results.get(event.headers.get("Job-UUID", ""))
            if result is not None and not result.done():
                result.set_result(event.body or "")
            if not self._deliver_jobs:
                return
        self._inbox.put_nowait(event)

    def _fail_job_results(self, error: EslError) -> None:
        for result in self._job_results.values():
            if not result.done():
                result.set_exception(EslNotConnected(str(error)))

    async def _dispatch(self) -> None:
        while True:
            item = await self._inbox.get()
            if item is _STOP:
                return
            handlers: list[Any] = (
                list(self._event_handlers)
                if isinstance(item, EslEvent)
                else list(self._state_handlers)
            )
            for handler in handlers:
                try:
                    result = handler(item)
                    if inspect.isawaitable(result):
                        await result
                except Exception:  # one broken handler must not stop the others
                    log.exception("esl: handler %r failed", handler)

    # --- hub thread -------------------------------------------------------------------------

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    def _hub_main(self, ready: asyncio.Future[None]) -> None:
        hub = gevent.get_hub()  # a new hub of this thread's own
        self._stopping = gevent.event.Event()
        self._group = gevent.pool.Group()
        watcher = hub.loop.async_()
        watcher.start(self._drain)
        with self._submit_lock:
            self._watcher = watcher
        self._post(_settle, ready, None, None)
        try:
            self._supervisor = gevent.spawn(self._supervise)
            self._supervisor.join()
            self._group.join(timeout=1.0)  # failed requests still posting their errors
            self._group.kill(block=True, timeout=1.0)
        except BaseException:
            log.exception("esl: the gevent thread failed")
        finally:
            with self._submit_lock:
                self._watcher = None
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                self._post(_settle, job.future, None, EslNotConnected(STOPPED))
            watcher.close()
            hub.destroy(destroy_loop=True)

    def _drain(self) -> None:
        # Runs in the hub itself, where nothing may block: one greenlet per job.
        assert self._group is not None
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            self._group.spawn(self._run_job, job)

    def _run_job(self, job: _Job) -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = job.fn()
        except gevent.GreenletExit:
            error = EslNotConnected(STOPPED)
        except EslError as exc:
            error = exc
        except BaseException as exc:  # gevent.Timeout is a BaseException too
            log.exception("esl: request failed unexpectedly")
            error = EslError(self._redact(f"ESL request failed: {exc!r}"))
        self._post(_settle, job.future, value, error)

    def _hub_request(self, line: str, timeout_s: float, label: str) -> _Reply:
        conn = self._conn
        if conn is None or not conn.connected:
            raise EslNotConnected(LOST)
        return conn.request(line, timeout_s, label)

    def _hub_stop(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        for conn in (self._conn, self._attempt):
            if conn is not None:
                conn.drop(STOPPED)
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.join(timeout=1.0)
            if not supervisor.dead:  # stuck in a TCP connect to an unreachable host
                supervisor.kill(block=False)

    def _supervise(self) -> None:
        assert self._stopping is not None
        delay = INITIAL_BACKOFF_S
        while not self._stopping.is_set():
            conn = _Connection(
                self.host,
                self.port,
                self._password,
                timeout_s=self.connect_timeout_s,
                stall_s=self.stall_s,
                deliver=lambda event: self._post(self._accept_event, event),
            )
            self._attempt = conn
            try:
                try:
                    conn.open()
                    reply = conn.request(self._subscription, self.connect_timeout_s, "event")
                    if not reply.reply_text.startswith("+OK"):
                        text = reply.reply_text or "no reply"
                        raise EslError(f"FreeSWITCH refused the event subscription ({text})")
                except EslError:
                    raise
                except Exception as exc:
                    raise EslError(f"connecting to FreeSWITCH failed: {exc!r}") from None
            except EslError as exc:
                conn.drop(str(exc))
                conn.closed.wait(1.0)
                self._connect_failed(self._redact(str(exc)))
            else:
                self._attempt = None
                self._conn = conn
                delay = INITIAL_BACKOFF_S
                self._logged_error = None
                log.info("esl: connected to FreeSWITCH at %s:%s", self.host, self.port)
                self._post(self._set_state, "connected", None)
                beat = gevent.spawn(conn.heartbeat, self.heartbeat_s)
                conn.closed.wait()
                beat.kill(block=False)
                self._conn = None
                if self._stopping.is_set():
                    break
                reason = self._redact(conn.lost_reason or LOST)
                log.warning("esl: %s (%s); reconnecting", LOST, reason)
                self._post(self._set_state, "disconnected", reason)
            finally:
                self._attempt = None
            if self._stopping.wait(delay):
                break
            delay = min(delay * 2, self.reconnect_max_s)

    def _connect_failed(self, error: str) -> None:
        if error != self._logged_error:  # one line per distinct problem, not one per retry
            log.error("esl: %s; retrying with backoff up to %g s", error, self.reconnect_max_s)
            self._logged_error = error
        else:
            log.debug("esl: still failing: %s", error)
        self._post(self._set_error, error)

    def _redact(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the asyncio side stopped waiting (timeout, cancel)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
