"""An emulator of FreeSWITCH's inbound event socket, with mod_audio_fork behind it.

It speaks the wire protocol of mod_event_socket (FreeSWITCH 1.10) closely enough for
greenswitch and for our own ESL client: `auth/request`, `command/reply`, `api/response`,
`text/event-plain|json|xml`, `text/disconnect-notice`. The facts measured on a real
FreeSWITCH (design.md) are reproduced on purpose, including its failures: `uuid_audio_fork
<uuid> start <url> <mix>` without a sample rate kills the whole switch.

Extend it through two tables: `EslServer.api_handlers` (name -> async handler for `api` and
`bgapi`) and `EslServer.app_handlers` (dialplan applications that `sendmsg` with
`call-command: execute` runs). Everything runs on one asyncio loop: call the methods from it.

A talking bot is served the way FreeSWITCH 1.10 serves it (design.md, "Measured on..."):
`playback` through `sendmsg` (event-lock: in order, gapless; without it: nested, reverse order),
`uuid_broadcast` (5 lead frames), `uuid_break [all]`, `uuid_transfer`, `uuid_send_dtmf`,
`originate`, caller DTMF (`press_dtmf`). Time is the call clock (`EslServer.clock`): the loop's
clock run `speed` times faster. Every channel keeps both sides of the call on that clock
(`write_call_wav`, `played_audio`, `Channel.played`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import re
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final, NamedTuple
from uuid import uuid4
from xml.sax.saxutils import escape as xml_escape

import numpy as np
from websockets.exceptions import ConnectionClosed

from voiceai.audio.pcm import decode_file, resample
from voiceai.sim.fork_client import ForkClient

log = logging.getLogger(__name__)

ApiHandler = Callable[["EslServer", str], Awaitable[str]]
AppHandler = Callable[["EslServer", "Channel", str], Awaitable[str | None]]

DISCONNECT_MESSAGE: Final = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
FS_VERSION: Final = "1.10.12-release git a88d069 2024-08-02 21:02:27Z 64bit"

FORK_BUG_NAME: Final = "audio_fork"  # mod_audio_fork's bug name when none is given
FORK_CONNECT: Final = "mod_audio_fork::connect"
FORK_CONNECT_FAILED: Final = "mod_audio_fork::connect_failed"
FORK_DISCONNECT: Final = "mod_audio_fork::disconnect"
FORK_SYNTAX: Final = (
    "<uuid> [start | stop | send_text | pause | resume | graceful-shutdown ] [wss-url | path] "
    "[mono | mixed | stereo] [8k | 16k] [bugname] [metadata]"
)
FORK_OK: Final = "+OK Success\n"
FORK_FAILED: Final = "-ERR Operation Failed\n"
FORK_MIXES: Final = frozenset({"mono", "mixed", "stereo"})
FORK_MAX_METADATA: Final = 8192
# Text frames the service may send; mod_audio_fork only turns them into CUSTOM events.
FORK_MESSAGE_EVENTS: Final = {
    "playAudio": "mod_audio_fork::play_audio",
    "killAudio": "mod_audio_fork::kill_audio",
    "transcription": "mod_audio_fork::transcription",
    "transfer": "mod_audio_fork::transfer",
    "disconnect": "mod_audio_fork::disconnect",
    "error": "mod_audio_fork::error",
    "json": "mod_audio_fork::json",
}

# mod_commands usage lines, as the real API answers them.
BREAK_SYNTAX: Final = "<uuid> [all]"
BROADCAST_SYNTAX: Final = "<uuid> <path> [aleg|bleg|holdb|both]"
TRANSFER_SYNTAX: Final = "<uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]"
SEND_DTMF_SYNTAX: Final = "<uuid> <dtmf_data>"
ORIGINATE_SYNTAX: Final = (
    "<call url> <exten>|&<application_name>(<app_args>) [<dialplan>] [<context>] [<cid_name>] "
    "[<cid_num>] [<timeout_sec>]"
)
NO_SUCH_CHANNEL: Final = "-ERR No Such Channel!\n"  # uuid_break, uuid_transfer (capitalised)
GATEWAY_DIAL: Final = re.compile(r"^sofia/gateway/([^/]+)/(.+)$")
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
PACKET_SECONDS: Final = 0.02  # ptime: 20 ms frames on the fork and for lead-frames
BROADCAST_LEAD_FRAMES: Final = 5  # switch_ivr_broadcast's lead-frames: the measured ~0.1 s
GAPLESS_SLACK: Final = 0.1  # real seconds a queued file may start late and still follow gaplessly
WAIT_SLICE: Final = 0.25  # longest single sleep, so a new `speed` takes effect soon

MAX_PACKET: Final = 10 * 1024 * 1024  # mod_event_socket's limit for one command
MAX_LINE: Final = 1024 * 1024  # a longer header line is garbage: drop that client
MAX_BACKLOG: Final = 64 * 1024 * 1024  # unread output; FreeSWITCH drops stuck listeners too
CLOSE_WAIT: Final = 2.0  # seconds to wait for a websocket or a task to finish closing

# switch_event_types_t names (switch_event.c); `event` ignores any other word.
_EVENT_WORDS: Final = """CUSTOM CLONE CHANNEL_CREATE CHANNEL_DESTROY CHANNEL_STATE CHANNEL_CALLSTATE
    CHANNEL_ANSWER CHANNEL_HANGUP CHANNEL_HANGUP_COMPLETE CHANNEL_EXECUTE
    CHANNEL_EXECUTE_COMPLETE CHANNEL_HOLD CHANNEL_UNHOLD CHANNEL_BRIDGE CHANNEL_UNBRIDGE
    CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_OUTGOING CHANNEL_PARK CHANNEL_UNPARK
    CHANNEL_APPLICATION CHANNEL_ORIGINATE CHANNEL_UUID API LOG INBOUND_CHAN OUTBOUND_CHAN
    STARTUP SHUTDOWN PUBLISH UNPUBLISH TALK NOTALK SESSION_CRASH MODULE_LOAD MODULE_UNLOAD
    DTMF MESSAGE PRESENCE_IN NOTIFY_IN PRESENCE_OUT PRESENCE_PROBE MESSAGE_WAITING
    MESSAGE_QUERY ROSTER CODEC BACKGROUND_JOB DETECTED_SPEECH DETECTED_TONE PRIVATE_COMMAND
    HEARTBEAT TRAP ADD_SCHEDULE DEL_SCHEDULE EXE_SCHEDULE RE_SCHEDULE RELOADXML NOTIFY
    PHONE_FEATURE PHONE_FEATURE_SUBSCRIBE SEND_MESSAGE RECV_MESSAGE REQUEST_PARAMS
    CHANNEL_DATA GENERAL COMMAND SESSION_HEARTBEAT CLIENT_DISCONNECTED SERVER_DISCONNECTED
    SEND_INFO RECV_INFO RECV_RTCP_MESSAGE SEND_RTCP_MESSAGE CALL_SECURE NAT RECORD_START
    RECORD_STOP PLAYBACK_START PLAYBACK_STOP CALL_UPDATE FAILURE SOCKET_DATA MEDIA_BUG_START
    MEDIA_BUG_STOP CONFERENCE_DATA_QUERY CONFERENCE_DATA CALL_SETUP_REQ CALL_SETUP_RESULT
    CALL_DETAIL DEVICE_STATE TEXT SHUTDOWN_REQUESTED ALL"""
EVENT_NAMES: Final = frozenset(_EVENT_WORDS.split())
STATE_NUMBERS: Final = {
    "CS_NEW": 0, "CS_INIT": 1, "CS_ROUTING": 2, "CS_SOFT_EXECUTE": 3, "CS_EXECUTE": 4,
    "CS_EXCHANGE_MEDIA": 5, "CS_PARK": 6, "CS_CONSUME_MEDIA": 7, "CS_HIBERNATE": 8,
    "CS_RESET": 9, "CS_HANGUP": 10, "CS_REPORTING": 11, "CS_DESTROY": 12,
}  # fmt: skip

_URL_UNSAFE: Final = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')  # SWITCH_URL_UNSAFE
_UNESCAPES: Final = {"n": "\n", "r": "\r", "t": "\t", "s": " "}


class ServerCrashed(Exception):
    """Raised inside the emulator when a command kills it, the way a segfault would."""


# --- FreeSWITCH string helpers -----------------------------------------------------------


def fs_url_encode(value: str) -> str:
    """switch_url_encode: what `text/event-plain` does to every header value."""
    out = []
    for byte in value.encode():
        if byte < 0x20 or byte > 0x7E or byte in _URL_UNSAFE:
            out.append(f"%{byte:02X}")
        else:
            out.append(chr(byte))
    return "".join(out)


def fs_split(text: str) -> list[str]:
    """switch_separate_string(' '): how API modules such as mod_audio_fork split their args.

    Runs of spaces separate arguments, except inside a pair of single quotes; the quotes are
    then removed, and `\\n \\r \\t \\s \\' \\\\` are unescaped.
    """
    args: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] == " ":
            i += 1
        if i >= n:
            break
        start, inside = i, False
        while i < n:
            char = text[i]
            if char == "\\":
                i += 2  # an escaped character never ends an argument
                continue
            if char == "'" and (inside or "'" in text[i + 1 :]):
                inside = not inside
            elif char == " " and not inside:
                break
            i += 1
        args.append(_fs_cleanup(text[start:i]))
    return args


def _fs_cleanup(token: str) -> str:
    # cleanup_separated_string(): strip paired quotes and trailing spaces, unescape.
    out: list[str] = []
    end = 0
    inside = False
    i = 0
    while i < len(token):
        char = token[i]
        if char == "\\" and i + 1 < len(token):
            nxt = token[i + 1]
            plain = _UNESCAPES.get(nxt, nxt)
            if nxt in ("'", '"', "\\") or plain != nxt:
                out.append(plain)
                end = len(out)
                i += 2
                continue
        if char == "'" and (inside or "'" in token[i + 1 :]):
            inside = not inside
            if inside:
                end = len(out)
        else:
            out.append(char)
            if char != " " or inside:
                end = len(out)
        i += 1
    return "".join(out[:end])


def event_name(word: str) -> str | None:
    """switch_name_event: case-insensitive, with or without the SWITCH_EVENT_ prefix."""
    name = word.upper().removeprefix("SWITCH_EVENT_")
    return name if name in EVENT_NAMES else None


def _atoi(text: str) -> int:
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def _get(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup, case-insensitive like switch_event_get_header."""
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


# --- events and commands -----------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One FreeSWITCH event: ordered headers (Event-Name first) and an optional body."""

    name: str
    headers: dict[str, str]
    body: str | None = None
    subclass: str | None = None

    def header(self, name: str) -> str | None:
        return _get(self.headers, name)

    def to_plain(self) -> str:
        # switch_event_serialize(encode=TRUE)
        text = "".join(f"{k}: {fs_url_encode(v) or '_undef_'}\n" for k, v in self.headers.items())
        if self.body:
            return text + f"Content-Length: {len(self.body.encode())}\n\n{self.body}"
        return text + "\n"

    def to_json(self) -> str:
        # switch_event_serialize_json: an object of strings, the body under `_body`
        data: dict[str, str] = dict(self.headers)
        if self.body is not None:
            data["Content-Length"] = str(len(self.body.encode()))
            data["_body"] = self.body
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def to_xml(self) -> str:
        parts = ["<event>\n  <headers>\n"]
        parts += [f"    <{k}>{xml_escape(v)}</{k}>\n" for k, v in self.headers.items()]
        parts.append("  </headers>\n")
        if self.body is not None:
            parts.append(f"  <Content-Length>{len(self.body.encode())}</Content-Length>\n")
            parts.append(f"  <body>{xml_escape(self.body)}</body>\n")
        parts.append("</event>")
        return "".join(parts)

    def frame(self, fmt: str) -> bytes:
        """The event as a listener in format `fmt` (plain | json | xml) receives it."""
        text = {"json": self.to_json, "xml": self.to_xml}.get(fmt, self.to_plain)()
        data = text.encode()
        return f"Content-Length: {len(data)}\nContent-Type: text/event-{fmt}\n\n".encode() + data


@dataclass
class Packet:
    """One command as read from a client: the first line, header lines, optional body."""

    command: str
    headers: dict[str, str]
    body: str | None = None

    def header(self, name: str) -> str | None:
        return _get(self.headers, name)


async def read_packet(reader: asyncio.StreamReader) -> Packet | None:
    """Read one command terminated by a blank line; None at end of stream."""
    lines: list[str] = []
    size = 0
    while True:
        raw = await reader.readline()
        if not raw:
            return None  # EOF, possibly mid-command: FreeSWITCH drops the partial command
        size += len(raw)
        if size > MAX_PACKET:
            raise ValueError("command too long")
        line = raw.decode("utf-8", "replace").rstrip("\n").split("\r", 1)[0]
        if not line:
            if lines:
                break
            continue  # FreeSWITCH skips blank lines before a command
        lines.append(line)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name] = value.lstrip(" ")
    body = None
    length = _atoi(_get(headers, "content-length") or "")
    if length > MAX_PACKET:
        raise ValueError("body too long")
    if length > 0:
        body = (await reader.readexactly(length)).decode("utf-8", "replace")
    return Packet(lines[0], headers, body)


# --- calls -------------------------------------------------------------------------------


@dataclass
class Fork:
    """One mod_audio_fork media bug: a websocket from the call to the service."""

    bugname: str
    url: str
    mix: str  # mono | mixed | stereo
    rate: int
    metadata: str | None = None
    auth: tuple[str, str] | None = None
    state: str = "connecting"  # connecting | connected | failed | closed
    paused: bool = False
    bytes_sent: int = 0  # audio bytes written to the websocket
    texts_sent: list[str] = field(default_factory=list)  # metadata, send_text, stop
    received: list[str | bytes] = field(default_factory=list)  # frames from the service
    close_code: int | None = None
    client: ForkClient | None = field(default=None, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    sender: asyncio.Task[None] | None = field(default=None, repr=False)
    stopping: bool = False  # we started the close: no fork event, like FreeSWITCH

    @property
    def active(self) -> bool:
        return self.state in ("connecting", "connected")


class Played(NamedTuple):
    """One file the caller heard. Times are call-clock seconds since the channel was created."""

    path: str
    started_at: float
    stopped_at: float
    status: str  # done | break | hangup
    offset_samples: int  # samples heard, at the channel's codec rate


@dataclass(eq=False)
class _Playback:
    """One file on a channel's media: the pieces of it the caller heard, on the call clock."""

    path: str
    audio: np.ndarray  # the whole file, mono int16 at the channel's codec rate
    rate: int
    pieces: list[tuple[float, int, int]] = field(default_factory=list)  # (start, from, to)
    run_start: float | None = None  # when the piece playing now began; None: not playing
    run_from: int = 0  # the sample that piece began at
    status: str | None = None  # set once finished
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # pause, resume, break, hangup
    by_rate: dict[int, np.ndarray] = field(default_factory=dict)

    def position(self, now: float) -> int:
        if self.run_start is None:
            return self.run_from
        return min(self.audio.size, self.run_from + max(int((now - self.run_start) * self.rate), 0))

    def end_time(self) -> float | None:
        if self.run_start is None:
            return None
        return self.run_start + (self.audio.size - self.run_from) / self.rate

    def close_piece(self, to: int) -> None:
        if self.run_start is not None:
            self.pieces.append((self.run_start, self.run_from, to))
        self.run_start, self.run_from = None, to

    def spans(self) -> list[tuple[float, int, int]]:
        """Every piece; the one playing now runs to the end of the file (callers cut it)."""
        if self.run_start is None:
            return self.pieces
        return [*self.pieces, (self.run_start, self.run_from, self.audio.size)]

    def at_rate(self, rate: int) -> np.ndarray:
        # Resampled once per rate: a clip cut into 20 ms frames would click at every edge.
        cached = self.by_rate.get(rate)
        if cached is None:
            cached = self.by_rate[rate] = resample(self.audio, self.rate, rate)
        return cached


@dataclass
class _CallerSegment:
    """A run of caller audio as a fork sent it: call-clock start, fork rate, L16 bytes."""

    start: float
    rate: int
    data: bytearray

    @property
    def end(self) -> float:
        return self.start + len(self.data) / 2 / self.rate


@dataclass
class Channel:
    """One call leg on the emulated switch."""

    uuid: str
    caller_id_name: str = "Caller"
    caller_id_number: str = "+15550100"
    destination_number: str = "+15550199"
    variables: dict[str, str] = field(default_factory=dict)
    # What the caller says: L16 little-endian PCM at the fork rate. Append to it while the
    # call runs and every fork streams the new audio next; silence fills the gaps.
    caller_audio: bytes = b""
    answered: bool = False
    hung_up: bool = False
    hangup_cause: str | None = None
    state: str = "CS_INIT"
    forks: dict[str, Fork] = field(default_factory=dict)  # by bug name
    messages: list[dict[str, str]] = field(default_factory=list)  # every sendmsg, as received
    gone: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set on hangup
    app_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    codec_rate: int = 8000  # the call's media rate: 8000 on PCMU; playback offsets count in it
    channel_name: str = ""  # overrides `name` (originated legs: the dial string)
    created_at: float = 0.0  # call clock (EslServer.clock) when the channel was created
    ended_at: float | None = None  # call clock at hangup
    played: list[Played] = field(default_factory=list)  # every file the caller heard
    errors: list[str] = field(default_factory=list)  # what FreeSWITCH would only log
    transfers: list[tuple[str, str, str]] = field(default_factory=list)  # (dest, dialplan, ctx)
    transferred: bool = False  # bridged to a gateway by uuid_transfer; the fork keeps streaming
    transfer_target: str | None = None  # e.g. sofia/gateway/ringcentral/+15551234
    dtmf_sent: list[str] = field(default_factory=list)  # uuid_send_dtmf data, to the caller
    dtmf_pressed: list[str] = field(default_factory=list)  # digits the caller pressed
    scheduled: list[str] = field(default_factory=list)  # sched_transfer destinations pending
    recordings: list[str] = field(default_factory=list)  # uuid_record paths, written at hangup
    media: list[_Playback] = field(default_factory=list, init=False, repr=False)  # playing now
    clips: list[_Playback] = field(default_factory=list, init=False, repr=False)  # ever started
    caller_segments: list[_CallerSegment] = field(default_factory=list, init=False, repr=False)
    caller_recorded: int = field(default=0, init=False, repr=False)  # caller_audio bytes kept
    media_free_at: float | None = field(default=None, init=False, repr=False)
    flushes: int = field(default=0, init=False, repr=False)  # uuid_break all count

    @property
    def fork(self) -> Fork | None:
        """The most recently started fork, if any."""
        return next(reversed(self.forks.values()), None)

    @property
    def name(self) -> str:
        return self.channel_name or f"sofia/external/{self.caller_id_number}@sip.ringcentral.com"

    @property
    def playing(self) -> str | None:
        """The file the caller hears right now, if any."""
        top = self.media[-1] if self.media else None
        return top.path if top is not None and top.run_start is not None else None


# --- one client connection ---------------------------------------------------------------


class _Listener:
    """One ESL client: its socket and what it subscribed to (a mod_event_socket listener)."""

    def __init__(self, writer: asyncio.StreamWriter, task: asyncio.Task[Any] | None) -> None:
        self.writer = writer
        self.task = task
        self.authed = False
        self.running = True
        self.closed = False
        self.format = "plain"
        self.events_on = False
        self.all_events = False
        self.names: set[str] = set()
        self.subclasses: set[str] = set()
        self.filters: list[tuple[str, str]] = []
        # FreeSWITCH sends events between commands only: hold them while one runs.
        self.busy = False
        self.held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.closed or self.writer.is_closing():
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            log.warning("esl: client does not read, dropping it")
            self.abort()

    def reply(self, text: str, extra: Mapping[str, str] | None = None) -> None:
        more = "".join(f"{k}: {v}\n" for k, v in (extra or {}).items())
        self.write(f"Content-Type: command/reply\nReply-Text: {text}\n{more}\n".encode())

    def api_response(self, body: str) -> None:
        data = body.encode()
        self.write(f"Content-Type: api/response\nContent-Length: {len(data)}\n\n".encode() + data)

    def deliver(self, event: Event, cache: dict[str, bytes]) -> None:
        if not self.wants(event):
            return
        data = cache.get(self.format)
        if data is None:
            data = cache[self.format] = event.frame(self.format)
        if self.busy:
            self.held.append(data)
        else:
            self.write(data)

    def release(self) -> None:
        self.busy = False
        held, self.held = self.held, []
        for data in held:
            self.write(data)

    def wants(self, event: Event) -> bool:
        # event_handler() in mod_event_socket.c
        if not self.events_on:
            return False
        if self.all_events:
            send = True
        elif event.name in self.names:
            send = event.name != "CUSTOM" or not event.subclass or event.subclass in self.subclasses
        else:
            send = False
        return send and (not self.filters or self._passes_filters(event))

    def _passes_filters(self, event: Event) -> bool:
        # `filter Header value`: any match lets an event through; a `-value` match blocks it.
        send = False
        for name, value in self.filters:
            actual = event.header(name)
            if actual is None:
                continue
            wanted = value.lstrip("+- ")
            positive = True
            for char in value[: len(value) - len(wanted)]:
                if char in "+-":
                    positive = char == "+"
            if send and positive:
                continue
            if value.startswith("/"):
                matched = _regex_match(wanted, actual)
            else:
                matched = actual.lower() == wanted.lower()
            if matched:
                if not positive:
                    return False
                send = True
        return send

    def close(self, notice: bool) -> None:
        if self.closed:
            return
        if notice:
            data = DISCONNECT_MESSAGE.encode()
            self.write(
                f"Content-Type: text/disconnect-notice\nContent-Length: {len(data)}\n\n".encode()
                + data
            )
        self.closed = True
        self.running = False
        self.writer.close()

    def abort(self) -> None:
        """Drop the TCP connection at once, with no goodbye (a crash, a stuck reader)."""
        self.closed = True
        self.running = False
        self.writer.transport.abort()


def _regex_match(pattern: str, value: str) -> bool:
    # switch_regex_perform accepts /pattern/flags
    flags = 0
    if pattern.startswith("/") and "/" in pattern[1:]:
        pattern, _, options = pattern[1:].rpartition("/")
        flags = re.IGNORECASE if "i" in options else 0
    try:
        return re.search(pattern, value, flags) is not None
    except re.error:
        return False


# --- the server --------------------------------------------------------------------------


CommandHandler = Callable[[_Listener, Packet], Awaitable[None]]

BUILTIN_API: dict[str, ApiHandler] = {}
BUILTIN_APPS: dict[str, AppHandler] = {}


def api_command(name: str) -> Callable[[ApiHandler], ApiHandler]:
    """Register a built-in api command (every new EslServer copies the table)."""

    def register(handler: ApiHandler) -> ApiHandler:
        BUILTIN_API[name] = handler
        return handler

    return register


def app_command(name: str) -> Callable[[AppHandler], AppHandler]:
    """Register a built-in dialplan application for `sendmsg` execute."""

    def register(handler: AppHandler) -> AppHandler:
        BUILTIN_APPS[name] = handler
        return handler

    return register


class EslServer:
    """FreeSWITCH as the service sees it: an inbound ESL server plus calls and their forks."""

    def __init__(
        self,
        password: str = "ClueCon",
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        hostname: str = "freeswitch-sim",
    ) -> None:
        self.password = password
        self.host = host
        self.hostname = hostname
        self.core_uuid = str(uuid4())
        # The call clock: the loop's clock times `speed` (set through the property, which
        # rebases it, so a change of pace never makes the clock jump).
        self._speed = 1.0
        self._clock_base = 0.0
        self._clock_mark = _loop_time()
        self.crashed = False
        self.missing_file_events = False  # True: START+STOP for a missing file (FS: none at all)
        self.originate_answer_delay = 0.5  # call seconds an originated call rings
        self.unreachable_numbers: set[str] = set()  # originate fails with `unreachable_cause`
        self.unreachable_cause = "NO_ANSWER"
        self.busy_numbers: set[str] = set()  # originate fails with USER_BUSY
        self.commands: list[str] = []  # every api/bgapi command line received
        self.channels: dict[str, Channel] = {}  # every call, hung up ones too
        self.events: deque[Event] = deque(maxlen=10_000)  # recent events, for assertions
        self.api_handlers: dict[str, ApiHandler] = dict(BUILTIN_API)
        self.app_handlers: dict[str, AppHandler] = dict(BUILTIN_APPS)
        self._port = port
        self._server: asyncio.Server | None = None
        self._listeners: set[_Listener] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sequence = itertools.count(1)
        self._started = time.monotonic()
        self._sessions = 0
        self._peak = 0
        self._stopped = False
        # Connection commands, checked in order by prefix like parse_command() does.
        self._commands: tuple[tuple[str, CommandHandler], ...] = (
            ("filter ", self._cmd_filter),
            ("sendmsg", self._cmd_sendmsg),
            ("sendevent", self._cmd_sendevent),
            ("api ", self._cmd_api),
            ("bgapi ", self._cmd_bgapi),
            ("event", self._cmd_event),
            ("nixevent", self._cmd_nixevent),
            ("noevents", self._cmd_noevents),
        )

    # lifecycle

    @property
    def port(self) -> int:
        return self._port

    @property
    def speed(self) -> float:
        """Pace of the call clock: 1 = real time, 10 = ten times faster, <= 0 = frozen."""
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        self._clock_base = self.clock()
        self._clock_mark = _loop_time()
        self._speed = float(value)

    def clock(self) -> float:
        """Call-clock seconds: what fork audio, playback and recordings are timed on."""
        return self._clock_base + (_loop_time() - self._clock_mark) * max(self._speed, 0.0)

    async def _wait_until(self, target: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep until the call clock reaches `target`; True if `wake` was set first."""
        while True:
            if wake is not None and wake.is_set():
                return True
            remaining = target - self.clock()
            if remaining <= 0 or self._speed <= 0:
                return False
            delay = min(remaining / self._speed, WAIT_SLICE)
            if wake is None:
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self._port, limit=MAX_LINE
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._started = time.monotonic()

    async def stop(self) -> None:
        """Shut down like FreeSWITCH: forks closed, every client gets a disconnect-notice."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.close()
        if not self.crashed:
            for channel in self.channels.values():
                for fork in list(channel.forks.values()):
                    await self._close_fork(fork)
        handlers = [c.task for c in self._listeners if c.task is not None]
        for listener in list(self._listeners):
            listener.close(notice=not self.crashed)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        waiting = [t for t in (*tasks, *handlers) if t is not current]
        if waiting:
            _, pending = await asyncio.wait(waiting, timeout=CLOSE_WAIT)
            for task in pending:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> EslServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def drop_event_sockets(self) -> None:
        """Cut every ESL client's TCP connection (a network blip); calls and forks go on."""
        for listener in list(self._listeners):
            listener.abort()
        self._listeners.clear()

    def crash(self, reason: str = "segmentation fault") -> None:
        """Die like a segfaulting FreeSWITCH: every socket dropped, no goodbye, no listener."""
        if self.crashed:
            return
        log.error("esl emulator: FreeSWITCH crashed (%s)", reason)
        self.crashed = True
        if self._server is not None:
            self._server.close()
        for listener in list(self._listeners):
            listener.abort()
        self._listeners.clear()
        for channel in self.channels.values():
            for fork in channel.forks.values():
                fork.stopping = True
                ws = fork.client.ws if fork.client else None
                if ws is not None:
                    ws.transport.abort()
                if fork.active:
                    fork.state = "closed"
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()

    # events

    def emit(
        self,
        name: str,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        subclass: str | None = None,
    ) -> Event:
        """Fire an event to every subscribed client (headers override the standard ones)."""
        now = time.time()
        base: dict[str, str] = {"Event-Subclass": subclass} if subclass else {}
        base.update(
            {
                "Event-Name": name,
                "Core-UUID": self.core_uuid,
                "FreeSWITCH-Hostname": self.hostname,
                "FreeSWITCH-Switchname": self.hostname,
                "FreeSWITCH-IPv4": "127.0.0.1",
                "FreeSWITCH-IPv6": "::1",
                "Event-Date-Local": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
                "Event-Date-GMT": formatdate(now, usegmt=True),
                "Event-Date-Timestamp": str(int(now * 1_000_000)),
                "Event-Calling-File": "esl_server.py",
                "Event-Calling-Function": "emit",
                "Event-Calling-Line-Number": "0",
                "Event-Sequence": str(next(self._sequence)),
            }
        )
        base.update({k: str(v) for k, v in (headers or {}).items()})
        event = Event(name, base, body, subclass)
        self.events.append(event)
        cache: dict[str, bytes] = {}
        for listener in list(self._listeners):
            try:
                listener.deliver(event, cache)
            except Exception:  # one broken client must not stop the others
                log.exception("esl: delivering an event failed")
                listener.abort()
        return event

    def channel_headers(self, channel: Channel) -> dict[str, str]:
        """switch_channel_event_set_data: the headers every channel event carries."""
        call_state = "HANGUP" if channel.hung_up else "ACTIVE" if channel.answered else "RINGING"
        answer_state = (
            "hangup" if channel.hung_up else "answered" if channel.answered else "ringing"
        )
        direction = channel.variables.get("direction", "inbound")
        headers = {
            "Channel-State": channel.state,
            "Channel-Call-State": call_state,
            "Channel-State-Number": str(STATE_NUMBERS.get(channel.state, 0)),
            "Channel-Name": channel.name,
            "Unique-ID": channel.uuid,
            "Call-Direction": direction,
            "Presence-Call-Direction": direction,
            "Channel-HIT-Dialplan": "true",
            "Channel-Call-UUID": channel.uuid,
            "Answer-State": answer_state,
            "Caller-Direction": direction,
            "Caller-Username": channel.caller_id_number,
            "Caller-Dialplan": "XML",
            "Caller-Caller-ID-Name": channel.caller_id_name,
            "Caller-Caller-ID-Number": channel.caller_id_number,
            "Caller-Network-Addr": "127.0.0.1",
            "Caller-ANI": channel.caller_id_number,
            "Caller-Destination-Number": channel.destination_number,
            "Caller-Unique-ID": channel.uuid,
            "Caller-Source": "mod_sofia",
            "Caller-Context": "public",
            "Caller-Channel-Name": channel.name,
        }
        headers.update({f"variable_{k}": str(v) for k, v in channel.variables.items()})
        return headers

    def emit_channel(
        self,
        channel: Channel,
        name: str,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        subclass: str | None = None,
    ) -> Event:
        return self.emit(name, {**self.channel_headers(channel), **(headers or {})}, body, subclass)

    # calls

    def add_channel(
        self,
        *,
        uuid: str | None = None,
        caller_id_name: str = "Caller",
        caller_id_number: str = "+15550100",
        destination_number: str = "+15550199",
        variables: Mapping[str, str] | None = None,
        caller_audio: bytes = b"",
        codec_rate: int = 8000,
        channel_name: str = "",
    ) -> Channel:
        """A new inbound call (not answered yet); fires CHANNEL_CREATE."""
        channel = Channel(
            uuid=uuid or str(uuid4()),
            caller_id_name=caller_id_name,
            caller_id_number=caller_id_number,
            destination_number=destination_number,
            caller_audio=caller_audio,
            codec_rate=codec_rate,
            channel_name=channel_name,
            created_at=self.clock(),
        )
        channel.variables = {
            "uuid": channel.uuid,
            "call_uuid": channel.uuid,
            "direction": "inbound",
            "caller_id_name": caller_id_name,
            "caller_id_number": caller_id_number,
            "destination_number": destination_number,
            "read_codec": "PCMU" if codec_rate == 8000 else "L16",
            "read_rate": str(codec_rate),
            "write_codec": "PCMU" if codec_rate == 8000 else "L16",
            "write_rate": str(codec_rate),
            **{k: str(v) for k, v in (variables or {}).items()},
        }
        self.channels[channel.uuid] = channel
        self._sessions += 1
        self._peak = max(self._peak, len(self.live_channels()))
        self.emit_channel(channel, "CHANNEL_CREATE")
        channel.state = "CS_EXECUTE"  # the dialplan runs: answer, start the fork, park
        return channel

    def live_channel(self, uuid: str) -> Channel | None:
        channel = self.channels.get(uuid)
        return channel if channel is not None and not channel.hung_up else None

    def live_channels(self) -> list[Channel]:
        return [c for c in self.channels.values() if not c.hung_up]

    async def answer(self, uuid: str) -> None:
        """Answer a ringing call; fires CHANNEL_ANSWER. KeyError for no such live call."""
        channel = self.live_channel(uuid)
        if channel is None:
            raise KeyError(uuid)
        if channel.answered:
            return
        channel.answered = True
        channel.variables["answer_epoch"] = str(int(time.time()))
        self.emit_channel(channel, "CHANNEL_ANSWER")

    async def hangup(self, uuid: str, cause: str = "NORMAL_CLEARING") -> bool:
        """Hang up; closes its forks (1000, no fork event). False if no such live call."""
        channel = self.live_channel(uuid)
        if channel is None:
            return False
        channel.hung_up = True
        channel.hangup_cause = cause
        channel.ended_at = self.clock()
        channel.variables["hangup_cause"] = cause
        channel.state = "CS_HANGUP"
        self.emit_channel(channel, "CHANNEL_HANGUP", {"Hangup-Cause": cause})
        for playback in reversed(channel.media):  # the play loop sees the channel go: "done"
            self._finish_playback(channel, playback, "hangup")
        channel.gone.set()
        for fork in list(channel.forks.values()):
            await self._close_fork(fork)
        for path in channel.recordings:  # like uuid_record: the file is complete at hangup
            try:
                self.write_call_wav(uuid, path)
            except OSError as exc:
                log.error("esl emulator: could not write recording %s: %s", path, exc)
        channel.state = "CS_REPORTING"
        self.emit_channel(channel, "CHANNEL_HANGUP_COMPLETE", {"Hangup-Cause": cause})
        channel.state = "CS_DESTROY"
        self.emit_channel(channel, "CHANNEL_DESTROY")
        return True

    async def execute_app(
        self, channel: Channel, app: str, arg: str = "", app_uuid: str | None = None
    ) -> str | None:
        """Run a dialplan application on a channel with its EXECUTE/EXECUTE_COMPLETE events."""
        handler = self.app_handlers.get(app)
        if handler is None:
            log.warning("esl emulator: no application %r (message kept on the channel)", app)
            return None
        headers = {
            "Application": app,
            "Application-Data": arg,
            "Application-UUID": app_uuid or str(uuid4()),
        }
        self.emit_channel(channel, "CHANNEL_EXECUTE", headers)
        response = await handler(self, channel, arg)
        complete = {**headers, "Application-Response": response or "_none_"}
        self.emit_channel(channel, "CHANNEL_EXECUTE_COMPLETE", complete)
        return response

    async def api(self, line: str) -> str:
        """Run an api command line (`uuid_kill <uuid>`) as a client's `api` would."""
        name, _, args = line.partition(" ")
        return await self.execute_api(name, args)

    async def execute_api(self, name: str, args: str) -> str:
        handler = self.api_handlers.get(name) or self.api_handlers.get(name.lower())
        if handler is None:
            return f"-ERR {name} Command not found!\n"
        try:
            return await handler(self, args)
        except ServerCrashed:
            raise
        except Exception as exc:  # a broken handler answers like a failed command
            log.exception("esl emulator: api %s failed", name)
            return f"-ERR {type(exc).__name__}: {exc}\n"

    def status_text(self) -> str:
        up = time.monotonic() - self._started
        micros = int(up * 1_000_000)
        seconds, micro = divmod(micros, 1_000_000)
        minutes, sec = divmod(seconds, 60)
        hours, minute = divmod(minutes, 60)
        days, hour = divmod(hours, 24)
        years, day = divmod(days, 365)
        live = len(self.live_channels())
        return (
            f"UP {years} years, {day} days, {hour} hours, {minute} minutes, {sec} seconds, "
            f"{micro // 1000} milliseconds, {micro % 1000} microseconds\n"
            f"FreeSWITCH (Version {FS_VERSION}) is ready\n"
            f"{self._sessions} session(s) since startup\n"
            f"{live} session(s) - peak {self._peak}, last 5min {self._peak} \n"
            "0 session(s) per Sec out of max 30, peak 1, last 5min 1 \n"
            "1000 session(s) max\n"
            "min idle cpu 0.00/98.50\n"
            "Current Stack Size/Max 240K/8192K\n"
        )

    # media: playback, break, DTMF, transfer, originate

    async def play_file(self, channel: Channel, arg: str) -> str:
        """The `playback` application: the file's real length on the call clock, then done.

        Like switch_ivr_play_file: a file that cannot be opened fires no PLAYBACK event at all
        (only logged; `missing_file_events` makes it START+STOP for tests that want it).
        """
        _, path = _parse_dial_vars(arg)
        try:
            # Decoded inline (a few ms): the file must start before a message sent right
            # after it can run, exactly as FreeSWITCH opens it before looking at its queue.
            audio = decode_file(path, channel.codec_rate)
        except Exception as exc:  # missing, unreadable, not audio
            log.warning("esl emulator: playback cannot open %s: %s", path, exc)
            channel.errors.append(f"playback: cannot open {path}: {exc}")
            channel.media_free_at = self.clock()
            if self.missing_file_events:
                self.emit_channel(channel, "PLAYBACK_START", {"Playback-File-Path": path})
                stop = {"Playback-File-Path": path, "Playback-Status": "done"}
                self.emit_channel(channel, "PLAYBACK_STOP", stop)
            return "FILE NOT FOUND"
        playback = _Playback(path, audio, channel.codec_rate)
        now = self.clock()
        start = _APP_START.get()
        if start is None or start > now:
            start = now
        if channel.hung_up:
            return "FILE PLAYED"
        playback.run_start = start
        channel.media.append(playback)
        channel.clips.append(playback)
        self.emit_channel(channel, "PLAYBACK_START", {"Playback-File-Path": path})
        while playback.status is None:
            end = playback.end_time()
            if end is None:  # a message without event-lock plays inside this one
                await playback.wake.wait()
                playback.wake.clear()
                continue
            if not await self._wait_until(end, playback.wake):
                self._finish_playback(channel, playback, "done")
                break
            playback.wake.clear()
        return "FILE PLAYED"  # mod_dptools answers this for done and for break alike

    def _finish_playback(self, channel: Channel, playback: _Playback, status: str) -> None:
        """Stop a file: its variables, then PLAYBACK_STOP, then a `played` record."""
        if playback.status is not None:
            return
        end = playback.end_time()
        if status == "done" and end is not None:
            stopped, heard = end, playback.audio.size
        else:
            stopped = self.clock()
            heard = playback.position(stopped)
        playback.close_piece(heard)
        playback.status = status
        playback.wake.set()
        if playback in channel.media:
            channel.media.remove(playback)
        if not playback.pieces:
            return
        rate = channel.codec_rate
        channel.variables["playback_last_offset_pos"] = str(heard)  # at the CHANNEL rate
        # FreeSWITCH counts read-ahead here, so after a break these overstate what was heard.
        channel.variables["playback_samples"] = str(playback.audio.size)
        channel.variables["playback_ms"] = str(playback.audio.size * 1000 // rate)
        channel.variables["playback_seconds"] = str(playback.audio.size // rate)
        wire_status = "break" if status == "break" else "done"
        headers = {"Playback-File-Path": playback.path, "Playback-Status": wire_status}
        self.emit_channel(channel, "PLAYBACK_STOP", headers)
        started = playback.pieces[0][0]
        channel.played.append(
            Played(
                playback.path,
                started - channel.created_at,
                stopped - channel.created_at,
                status,
                heard,
            )
        )
        channel.media_free_at = stopped

    def break_playback(self, channel: Channel, *, flush: bool = False) -> bool:
        """uuid_break: stop the file playing now; `flush` (all) also drops every queued message.

        Only the stopped file gets an event (PLAYBACK_STOP, break); flushed files get none.
        False if nothing was playing.
        """
        if flush:
            channel.flushes += 1
        targets = list(reversed(channel.media)) if flush else channel.media[-1:]
        for playback in targets:
            self._finish_playback(channel, playback, "break")
        return bool(targets)

    def broadcast(self, channel: Channel, path: str, legs: str = "aleg") -> None:
        """uuid_broadcast: a queued message like sendmsg, 5 lead frames (~0.1 s) before it."""
        app, sep, arg = path.partition("::")
        message = {
            "call-command": "execute",
            "execute-app-name": app if sep else "playback",
            "execute-app-arg": arg if sep else path,
            "event-lock": "true",
            "lead-frames": str(BROADCAST_LEAD_FRAMES),
            "legs": legs,
        }
        self.enqueue_message(channel, message)

    def transfer(
        self, channel: Channel, dest: str, dialplan: str = "XML", context: str = "default"
    ) -> None:
        """uuid_transfer: recorded; an inline bridge to a gateway marks the call transferred.

        The bot's leg stays in the call and its forks keep streaming (measured), so nothing
        else changes here: a bot that keeps talking is the bot's bug to find.
        """
        channel.transfers.append((dest, dialplan, context))
        if dialplan.lower() != "inline":
            return
        for step in dest.split(","):
            app, _, data = step.partition(":")
            _, dial = _parse_dial_vars(data)
            if app.strip() == "bridge" and GATEWAY_DIAL.match(dial):
                channel.transferred = True
                channel.transfer_target = dial

    def schedule_transfer(self, channel: Channel, seconds: float, dest: str) -> None:
        """The dialplan's `sched_transfer +N dest`: runs unless `sched_del <uuid>` drops it."""
        channel.scheduled.append(dest)

        async def later() -> None:
            await asyncio.sleep(seconds / (self._speed if self._speed > 0 else 1.0))
            if dest in channel.scheduled and not channel.hung_up:
                channel.scheduled.remove(dest)
                self.transfer(channel, dest)

        self._spawn(later(), f"sched-{channel.uuid}")

    def press_dtmf(self, uuid: str, digits: str, duration_ms: int = 100) -> None:
        """The caller presses keys: one DTMF event per digit (never on the fork websocket).

        Like mod_dptools' playback, a digit in `playback_terminators` (default `*`) stops the
        file playing now (PLAYBACK_STOP, break); the queue goes on.
        """
        channel = self.live_channel(uuid)
        if channel is None:
            raise KeyError(uuid)
        for digit in digits.upper():
            if digit not in DTMF_DIGITS:
                raise ValueError(f"not a DTMF digit: {digit!r}")
            channel.dtmf_pressed.append(digit)
            headers = {
                "DTMF-Digit": digit,
                "DTMF-Duration": str(duration_ms * 8),  # RFC 2833 timestamp units: 8 kHz
                "DTMF-Source": "RTP",
            }
            self.emit_channel(channel, "DTMF", headers)
            top = channel.media[-1] if channel.media else None
            if top is None or top.run_start is None:
                continue
            terminators = channel.variables.get("playback_terminators", "*")
            terminators = {"any": "1234567890*#", "none": ""}.get(terminators.lower(), terminators)
            if digit in terminators:
                channel.variables["playback_terminator_used"] = digit
                self._finish_playback(channel, top, "break")

    async def originate(
        self,
        url: str,
        exten: str,
        *,
        cid_name: str | None = None,
        cid_num: str | None = None,
    ) -> str:
        """`originate {vars}sofia/gateway/<gw>/<number> &park()`: rings, then answers or fails.

        Blocks while it rings, like the real API. Answers `+OK <uuid>` or `-ERR <CAUSE>`.
        """
        variables, dial = _parse_dial_vars(url)
        match = GATEWAY_DIAL.match(dial)
        number = match.group(2) if match else dial.rsplit("/", 1)[-1]
        uuid = variables.get("origination_uuid") or str(uuid4())
        if uuid in self.channels:
            return "-ERR INVALID_PROFILE\n"  # switch_ivr_originate refuses a uuid in use
        channel = self.add_channel(
            uuid=uuid,
            caller_id_name=variables.get("origination_caller_id_name", cid_name or "Voice AI"),
            caller_id_number=variables.get("origination_caller_id_number", cid_num or "0000000000"),
            destination_number=number,
            variables={**variables, "direction": "outbound"},
            channel_name=dial,
        )
        cause = None
        if number in self.busy_numbers:
            cause = "USER_BUSY"
        elif number in self.unreachable_numbers:
            cause = self.unreachable_cause
        await self._wait_until(self.clock() + self.originate_answer_delay, channel.gone)
        if channel.hung_up:
            return f"-ERR {channel.hangup_cause or 'ORIGINATOR_CANCEL'}\n"
        if cause is not None:
            await self.hangup(uuid, cause)
            return f"-ERR {cause}\n"
        await self.answer(uuid)
        if exten.startswith("&") and len(exten) > 1:
            app, _, rest = exten[1:].partition("(")
            message = {
                "call-command": "execute",
                "execute-app-name": app,
                "execute-app-arg": rest.rsplit(")", 1)[0],
                "event-lock": "true",
            }
            self.enqueue_message(channel, message)
        else:
            channel.transfers.append((exten, "XML", "default"))  # no dialplan to route it here
        return f"+OK {uuid}\n"

    # the call on one timeline

    def _bot_track(self, channel: Channel, start: float, count: int, rate: int) -> np.ndarray:
        """What the caller heard from the switch in [start, start + count/rate), int16 at rate."""
        out = np.zeros(count, dtype=np.int32)
        end = start + count / rate
        for playback in channel.clips:
            for begin, first, last in playback.spans():
                length = (last - first) / playback.rate
                if last <= first or begin >= end or begin + length <= start:
                    continue
                audio = playback.at_rate(rate)
                lo = first * rate // playback.rate
                hi = min(last * rate // playback.rate, audio.size)
                _place(out, audio[lo:hi], round((begin - start) * rate))
        return np.clip(out, -32768, 32767).astype(np.int16)

    def _caller_track(self, channel: Channel, start: float, count: int, rate: int) -> np.ndarray:
        out = np.zeros(count, dtype=np.int32)
        for segment in channel.caller_segments:
            samples = resample(np.frombuffer(segment.data, dtype="<i2"), segment.rate, rate)
            _place(out, samples, round((segment.start - start) * rate))
        return np.clip(out, -32768, 32767).astype(np.int16)

    def _call_span(self, uuid: str, rate: int) -> tuple[Channel, int]:
        channel = self.channels[uuid]
        end = channel.ended_at if channel.ended_at is not None else self.clock()
        for segment in channel.caller_segments:
            end = max(end, segment.end)
        return channel, max(math.ceil((end - channel.created_at) * rate), 0)

    def played_audio(self, uuid: str, rate: int = 16000) -> np.ndarray:
        """The bot side alone, from the channel's creation: int16 mono at `rate`."""
        channel, count = self._call_span(uuid, rate)
        return self._bot_track(channel, channel.created_at, count, rate)

    def write_call_wav(self, uuid: str, path: str | Path, rate: int = 16000) -> Path:
        """The whole call as a stereo WAV: left = the caller, right = what the caller heard."""
        channel, count = self._call_span(uuid, rate)
        left = self._caller_track(channel, channel.created_at, count, rate)
        right = self._bot_track(channel, channel.created_at, count, rate)
        frames = np.column_stack([left, right]).astype("<i2")
        out = Path(path)
        with wave.open(str(out), "wb") as wav:
            wav.setnchannels(2)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(frames.tobytes())
        return out

    # mod_audio_fork

    def start_fork(
        self,
        channel: Channel,
        url: str,
        *,
        mix: str = "mono",
        rate: int = 16000,
        bugname: str = FORK_BUG_NAME,
        metadata: str | None = None,
    ) -> Fork | None:
        """Attach a fork and connect it in the background (None if the bug is taken)."""
        existing = channel.forks.get(bugname)
        if existing is not None and existing.active:
            return None  # "bug already attached"
        user = channel.variables.get("MOD_AUDIO_BASIC_AUTH_USERNAME")
        password = channel.variables.get("MOD_AUDIO_BASIC_AUTH_PASSWORD", "")
        fork = Fork(bugname, url, mix, rate, metadata, (user, password) if user else None)
        channel.forks.pop(bugname, None)  # keep insertion order = start order
        channel.forks[bugname] = fork
        fork.task = self._spawn(self._run_fork(channel, fork), f"fork-{channel.uuid}-{bugname}")
        return fork

    async def stop_fork(self, channel: Channel, bugname: str, text: str | None = None) -> bool:
        fork = channel.forks.get(bugname)
        if fork is None or not fork.active:
            return False
        await self._close_fork(fork, text)
        return True

    async def send_fork_text(self, channel: Channel, bugname: str, text: str) -> bool:
        fork = channel.forks.get(bugname)
        ws = fork.client.ws if fork is not None and fork.client is not None else None
        if fork is None or fork.state != "connected" or ws is None:
            return False
        try:
            await ws.send(text)
        except ConnectionClosed:
            return False
        fork.texts_sent.append(text)
        return True

    async def _run_fork(self, channel: Channel, fork: Fork) -> None:
        client = ForkClient(fork.url, metadata=fork.metadata, auth=fork.auth)
        try:
            await client.__aenter__()  # connects, then sends the metadata as the first frame
        except Exception as exc:  # refused, unreachable, bad handshake, bad URI
            log.info("esl emulator: fork to %s failed: %s", fork.url, exc)
            if client.ws is not None:  # connected, but the metadata could not be sent
                client.ws.transport.abort()
            fork.state = "failed"
            body = json.dumps({"reason": "Unable to connect"}, separators=(",", ":"))
            self.emit_channel(channel, "CUSTOM", body=body, subclass=FORK_CONNECT_FAILED)
            return
        ws = client.ws
        assert ws is not None
        fork.client = client
        fork.state = "connected"
        if fork.metadata is not None:
            fork.texts_sent.append(fork.metadata)
        self.emit_channel(channel, "CUSTOM", subclass=FORK_CONNECT)
        fork.sender = self._spawn(self._send_audio(channel, fork), f"fork-audio-{channel.uuid}")
        try:
            async for message in ws:
                self._on_fork_message(channel, fork, message)
        except ConnectionClosed:
            pass
        finally:
            fork.sender.cancel()
            fork.close_code = ws.close_code
            fork.state = "closed"
        if not fork.stopping and not self.crashed:
            self.emit_channel(channel, "CUSTOM", subclass=FORK_DISCONNECT)  # the service hung up

    async def _send_audio(self, channel: Channel, fork: Fork) -> None:
        """The caller's audio, then silence while the call lives: 20 ms frames on the call clock.

        Frames go out on an absolute schedule (start + n x 20 ms), so the caller's audio and
        the files played to the caller stay aligned however long the call runs.
        """
        ws = fork.client.ws if fork.client is not None else None
        assert ws is not None
        samples = int(fork.rate * PACKET_SECONDS)
        frame = samples * 2
        offset = 0  # caller_audio bytes this fork has sent
        start = self.clock()
        count = 0
        try:
            while True:
                at = start + count * PACKET_SECONDS
                take = min(frame, (len(channel.caller_audio) - offset) // 2 * 2)
                if take > 0:
                    pcm = channel.caller_audio[offset : offset + take].ljust(frame, b"\0")
                    self._record_caller(channel, offset, take, at, fork.rate, pcm)
                    offset += take
                else:
                    pcm = bytes(frame)  # an open line keeps sending frames
                if fork.mix != "mono":  # mono is the caller only: the bot never hears itself
                    bot = self._bot_track(channel, at, samples, fork.rate)
                    pcm = _mix_frame(pcm, bot, fork.mix)
                if not fork.paused:  # mod_audio_fork drops the audio while paused
                    await ws.send(pcm)
                    fork.bytes_sent += len(pcm)
                count += 1
                if self._speed > 0:
                    await self._wait_until(start + count * PACKET_SECONDS)
                else:  # no clock: caller audio as fast as the socket takes it, never flood silence
                    await asyncio.sleep(0 if take > 0 else PACKET_SECONDS)
        except ConnectionClosed:
            pass

    def _record_caller(
        self, channel: Channel, offset: int, take: int, at: float, rate: int, pcm: bytes
    ) -> None:
        """Keep caller audio on the call timeline, once even when several forks stream it."""
        if offset < channel.caller_recorded:
            return
        channel.caller_recorded = offset + take
        segments = channel.caller_segments
        last = segments[-1] if segments else None
        if last is not None and last.rate == rate and abs(last.end - at) < 1e-6:
            last.data += pcm
        else:
            segments.append(_CallerSegment(at, rate, bytearray(pcm)))

    def _on_fork_message(self, channel: Channel, fork: Fork, message: str | bytes) -> None:
        fork.received.append(message)
        if isinstance(message, bytes):
            return
        try:
            data = json.loads(message)
        except ValueError:
            log.warning("esl emulator: fork got a text frame that is not JSON: %.80r", message)
            return
        kind = data.get("type") if isinstance(data, dict) else None
        subclass = FORK_MESSAGE_EVENTS.get(kind) if isinstance(kind, str) else None
        if subclass is None:
            log.warning("esl emulator: fork got an unknown message: %.80r", message)
            return
        payload = data.get("data")
        body = (
            None
            if payload is None
            else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        )
        self.emit_channel(channel, "CUSTOM", body=body, subclass=subclass)

    async def _close_fork(self, fork: Fork, text: str | None = None) -> None:
        """Close a fork from our side: optional text, then close 1000; no fork event."""
        if not fork.active or fork.stopping:
            return
        fork.stopping = True
        if fork.sender is not None:
            fork.sender.cancel()
            await asyncio.wait([fork.sender], timeout=CLOSE_WAIT)
        ws = fork.client.ws if fork.client is not None and fork.state == "connected" else None
        if ws is not None:
            try:
                if text is not None:
                    await ws.send(text)
                    fork.texts_sent.append(text)
                await asyncio.wait_for(ws.close(1000), CLOSE_WAIT)
            except (ConnectionClosed, TimeoutError, OSError):
                ws.transport.abort()
        if fork.task is not None and not fork.task.done():
            if ws is None:
                fork.task.cancel()  # still connecting
            _, pending = await asyncio.wait([fork.task], timeout=CLOSE_WAIT)
            for task in pending:
                task.cancel()
        fork.state = "closed"

    # connections

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("esl emulator: task %s failed", task.get_name(), exc_info=task.exception())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener = _Listener(writer, asyncio.current_task())
        if self.crashed or self._stopped:
            writer.transport.abort()
            return
        self._listeners.add(listener)
        notice = True
        try:
            listener.write(b"Content-Type: auth/request\n\n")
            while listener.running:
                packet = await read_packet(reader)
                if packet is None:
                    break
                listener.busy = True
                try:
                    await self._dispatch(listener, packet)
                finally:
                    listener.release()
        except ServerCrashed:
            notice = False
        except (ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
            log.debug("esl emulator: client dropped: %s", exc)  # garbage or a cut connection
        except Exception:
            log.exception("esl emulator: connection failed")
        finally:
            self._listeners.discard(listener)
            listener.close(notice=notice and not self.crashed)

    async def _dispatch(self, listener: _Listener, packet: Packet) -> None:
        command = packet.command
        lowered = command.lower()
        if lowered.startswith("exit") or command.startswith("..."):
            listener.reply("+OK bye")
            listener.running = False
            return
        if not listener.authed:
            if lowered.startswith("auth "):
                if command[5:] == self.password:
                    listener.authed = True
                    listener.reply("+OK accepted")
                else:
                    listener.reply("-ERR invalid")
                    listener.running = False
            elif lowered.startswith("userauth "):  # no user directory here: never valid
                listener.reply("-ERR invalid")
                listener.running = False
            else:
                listener.reply("-ERR command not found")  # FreeSWITCH keeps the socket open
            return
        for prefix, handler in self._commands:
            if lowered.startswith(prefix):
                await handler(listener, packet)
                return
        listener.reply("-ERR command not found")

    async def _cmd_api(self, listener: _Listener, packet: Packet) -> None:
        line = packet.command[4:]
        self.commands.append(line)
        body = await self.api(line)
        listener.api_response(body or "-ERR no reply\n")

    async def _cmd_bgapi(self, listener: _Listener, packet: Packet) -> None:
        line = packet.command[6:]
        self.commands.append(line)
        job = packet.header("Job-UUID") or str(uuid4())
        listener.reply(f"+OK Job-UUID: {job}", {"Job-UUID": job})
        self._spawn(self._background_job(job, line), f"bgapi-{job}")

    async def _background_job(self, job: str, line: str) -> None:
        name, sep, args = line.partition(" ")
        try:
            body = await self.execute_api(name, args)
        except ServerCrashed:
            return
        headers = {"Job-UUID": job, "Job-Command": name}
        if sep:
            headers["Job-Command-Arg"] = args
        self.emit("BACKGROUND_JOB", headers, body=body)

    async def _cmd_event(self, listener: _Listener, packet: Packet) -> None:
        words = packet.command.split(" ")[1:]
        custom = False
        keys = 0
        for index, word in enumerate(words):
            if index == 0 and word.lower() in ("plain", "json", "xml"):
                listener.format = word.lower()
                continue
            if custom:  # every word after CUSTOM is a subclass (design.md)
                listener.subclasses.add(word)
                continue
            name = event_name(word)
            if name is None:
                continue
            keys += 1
            if name == "ALL":
                listener.all_events = True
            listener.names.add(name)
            custom = name == "CUSTOM"
        if not keys:
            listener.reply("-ERR no keywords supplied")
            return
        listener.events_on = True
        listener.reply(f"+OK event listener enabled {listener.format}")

    async def _cmd_nixevent(self, listener: _Listener, packet: Packet) -> None:
        custom = False
        keys = 0
        for word in packet.command.split(" ")[1:]:
            if custom:
                listener.subclasses.discard(word)
                continue
            name = event_name(word)
            if name is None:
                continue
            keys += 1
            if name == "CUSTOM":
                custom = True
            elif name == "ALL":
                listener.all_events = False
                listener.names.clear()
            else:
                if listener.all_events:
                    listener.all_events = False
                    listener.names = set(EVENT_NAMES) - {"ALL"}
                listener.names.discard(name)
        if not keys:
            listener.reply("-ERR no keywords supplied")
            return
        listener.events_on = True
        listener.reply("+OK events nixed")

    async def _cmd_noevents(self, listener: _Listener, packet: Packet) -> None:
        listener.held.clear()
        if not listener.events_on:
            listener.reply("-ERR not listening for events")
            return
        listener.events_on = listener.all_events = False
        listener.names.clear()
        listener.subclasses.clear()
        listener.reply("+OK no longer listening for events")

    async def _cmd_filter(self, listener: _Listener, packet: Packet) -> None:
        name, sep, value = packet.command[7:].lstrip(" ").partition(" ")
        if name.lower() == "delete" and sep:
            name, has_value, value = value.partition(" ")
            if name.lower() == "all":
                listener.filters.clear()
            else:
                listener.filters = [
                    (n, v)
                    for n, v in listener.filters
                    if n.lower() != name.lower() or (has_value and v != value)
                ]
            listener.reply(f"+OK filter deleted. [{name}][{value}]")
        elif sep:
            if name.lower() == "add":
                name, _, value = value.partition(" ")
            listener.filters.append((name, value))
            listener.reply(f"+OK filter added. [{name}]=[{value}]")
        else:
            listener.reply("-ERR invalid syntax")

    async def _cmd_sendevent(self, listener: _Listener, packet: Packet) -> None:
        name = event_name(packet.command[9:].strip()) or "CUSTOM"
        headers = {k: v for k, v in packet.headers.items() if k.lower() != "content-length"}
        subclass = _get(headers, "Event-Subclass") if name == "CUSTOM" else None
        event_uuid = str(uuid4())
        headers["Event-UUID"] = event_uuid
        self.emit(name, headers, packet.body, subclass)
        listener.reply(f"+OK {event_uuid}")

    async def _cmd_sendmsg(self, listener: _Listener, packet: Packet) -> None:
        uuid = packet.command[7:].strip() or packet.header("session-id") or ""
        channel = self.live_channel(uuid)
        if channel is None:
            listener.reply(f"-ERR invalid session id [{uuid}]")
            return
        message = dict(packet.headers)
        if packet.body is not None:
            message["_body"] = packet.body
        channel.messages.append(message)
        self.enqueue_message(channel, message)
        listener.reply("+OK")

    def enqueue_message(self, channel: Channel, message: dict[str, str]) -> None:
        """Queue a message on the channel as sendmsg does (the session's private event queue)."""
        queued_at, flushes = self.clock(), channel.flushes
        self._spawn(self._run_message(channel, message, queued_at, flushes), "sendmsg")

    async def _run_message(
        self, channel: Channel, message: dict[str, str], queued_at: float, flushes: int
    ) -> None:
        """Act on a sendmsg: `execute` runs an app from app_handlers, `hangup` hangs up."""
        command = (_get(message, "call-command") or "").lower()
        if command == "hangup":  # acted on at once, even during a running app
            await self.hangup(channel.uuid, _get(message, "hangup-cause") or "NORMAL_CLEARING")
            return
        if command != "execute":
            return
        app = _get(message, "execute-app-name") or ""
        arg = _get(message, "execute-app-arg") or message.get("_body", "")
        loops = max(_atoi(_get(message, "loops") or "1"), 1)
        lead = max(_atoi(_get(message, "lead-frames") or "0"), 0) * PACKET_SECONDS
        app_uuid = _get(message, "Event-UUID")
        if not _switch_true(_get(message, "event-lock")) and channel.app_lock.locked():
            # Measured: without event-lock the running app's loop executes the message inside
            # itself; the file playing now waits, so quick messages are heard in reverse order.
            outer = channel.media[-1] if channel.media else None
            if outer is not None and outer.run_start is not None:
                outer.close_piece(outer.position(self.clock()))
                outer.wake.set()
            try:
                for _ in range(loops):
                    if channel.hung_up:
                        return
                    await self.execute_app(channel, app, arg, app_uuid)
            finally:
                if outer is not None and outer.status is None and outer.run_start is None:
                    outer.run_start = self.clock()
                    outer.wake.set()
            return
        # event-lock (and anything arriving while the channel is idle): strictly in order.
        async with channel.app_lock:
            for _ in range(loops):
                if channel.hung_up or channel.flushes != flushes:
                    return  # uuid_break all flushed the queue: no events at all
                start = self._app_start(channel, queued_at) + lead
                if lead and (
                    await self._wait_until(start, channel.gone) or channel.flushes != flushes
                ):
                    return
                token = _APP_START.set(start)
                try:
                    await self.execute_app(channel, app, arg, app_uuid)
                finally:
                    _APP_START.reset(token)
                if app != "playback":
                    channel.media_free_at = self.clock()

    def _app_start(self, channel: Channel, queued_at: float) -> float:
        """Now, or the end of the last file when this message waited behind it (gapless)."""
        now = self.clock()
        free = channel.media_free_at
        slack = GAPLESS_SLACK * max(self._speed, 0.0)
        if free is not None and queued_at <= free <= now and now - free <= slack:
            return free
        return now


def _loop_time() -> float:
    # The running loop's clock; outside a loop the same monotonic clock asyncio uses.
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _switch_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "yes", "on", "1", "enabled", "active", "allow")


def _parse_dial_vars(text: str) -> tuple[dict[str, str], str]:
    """`{a=1,b=2}[c=3]sofia/...` -> ({a, b, c}, `sofia/...`): FreeSWITCH's variable prefixes."""
    variables: dict[str, str] = {}
    rest = text.strip()
    closers = {"{": "}", "[": "]", "<": ">"}
    while rest[:1] in closers:
        end = rest.find(closers[rest[0]])
        if end < 0:
            break
        for item in rest[1:end].split(","):
            name, sep, value = item.partition("=")
            if sep and name.strip():
                variables[name.strip()] = value.strip()
        rest = rest[end + 1 :].lstrip()
    return variables, rest


def _mix_frame(caller: bytes, bot: np.ndarray, mix: str) -> bytes:
    """A fork frame: `stereo` = L caller, R bot, interleaved; `mixed` = their sum."""
    left = np.frombuffer(caller, dtype="<i2")
    if mix == "stereo":
        stereo = np.empty(left.size * 2, dtype="<i2")
        stereo[0::2] = left
        stereo[1::2] = bot[: left.size]
        return stereo.tobytes()
    total = left.astype(np.int32) + bot[: left.size]
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


def _place(out: np.ndarray, samples: np.ndarray, at: int) -> None:
    """Add `samples` into `out` starting at index `at` (may start before 0 or run past the end)."""
    lo, hi = max(at, 0), min(at + samples.size, out.size)
    if lo < hi:
        out[lo:hi] += samples[lo - at : hi - at]


# Where the app a queued message runs starts on the call clock (gapless after the last file).
_APP_START: ContextVar[float | None] = ContextVar("esl_app_start", default=None)


# --- built-in api commands ---------------------------------------------------------------


@api_command("status")
async def _api_status(server: EslServer, args: str) -> str:
    return server.status_text()


@api_command("hostname")
async def _api_hostname(server: EslServer, args: str) -> str:
    return server.hostname


@api_command("sched_del")
async def _api_sched_del(server: EslServer, args: str) -> str:
    # The dialplan files its "service never took the call" transfer under the call's uuid.
    group = args.strip()
    channel = server.channels.get(group)
    deleted = 0
    if channel is not None:
        deleted = len(channel.scheduled)
        channel.scheduled.clear()
    return f"+OK Deleted: {deleted}\n"


@api_command("uuid_exists")
async def _api_uuid_exists(server: EslServer, args: str) -> str:
    return "true" if server.live_channel(args.strip()) is not None else "false"


@api_command("uuid_record")
async def _api_uuid_record(server: EslServer, args: str) -> str:
    argv = args.split()
    if len(argv) < 3 or argv[1] not in ("start", "stop"):
        return "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>]\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR Cannot locate session!\n"
    if argv[1] == "start":
        channel.recordings.append(argv[2])
    elif argv[2] in channel.recordings:
        channel.recordings.remove(argv[2])
    return "+OK Success\n"


@api_command("uuid_kill")
async def _api_uuid_kill(server: EslServer, args: str) -> str:
    argv = args.split()
    if not argv:
        return "-USAGE: <uuid> [cause]\n"
    if server.live_channel(argv[0]) is None:
        return "-ERR No such channel!\n"
    await server.hangup(argv[0], argv[1].upper() if len(argv) > 1 else "NORMAL_CLEARING")
    return "+OK\n"


@api_command("uuid_getvar")
async def _api_uuid_getvar(server: EslServer, args: str) -> str:
    argv = args.split()
    if len(argv) < 2:
        return "-USAGE: <uuid> <var>\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR No such channel!\n"
    return channel.variables.get(argv[1], "_undef_")


@api_command("uuid_setvar")
async def _api_uuid_setvar(server: EslServer, args: str) -> str:
    argv = args.split(" ", 2)
    if len(argv) < 2:
        return "-USAGE: <uuid> <var> [value]\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR No such channel!\n"
    if len(argv) > 2:
        channel.variables[argv[1]] = argv[2]
    else:
        channel.variables.pop(argv[1], None)
    return "+OK\n"


@api_command("uuid_audio_fork")
async def _api_uuid_audio_fork(server: EslServer, args: str) -> str:
    """mod_audio_fork's API, argument quirks and crash included (design.md)."""
    argv = fs_split(args)
    if len(argv) < 2 or (argv[1] == "start" and len(argv) < 4):
        return f"-USAGE: {FORK_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return FORK_FAILED
    action = argv[1].lower()
    if action == "start":
        if len(argv) < 4:  # `START` skips the usage check, then reads a missing argument
            server.crash("uuid_audio_fork start without a mix type")
            raise ServerCrashed
        if argv[3] not in FORK_MIXES:
            return ""  # the module logs "invalid mix type" and writes nothing
        if len(argv) < 5:  # measured: without 8k|16k the real FreeSWITCH segfaults
            server.crash("uuid_audio_fork start without a sample rate")
            raise ServerCrashed
        rate = {"16k": 16000, "8k": 8000}.get(argv[4]) or _atoi(argv[4])
        url = argv[2]
        if not url.startswith(("ws://", "wss://")) or rate <= 0 or rate % 8000:
            return FORK_FAILED
        bugname, metadata = FORK_BUG_NAME, None
        if len(argv) > 5:
            if argv[5].startswith(("{", "[")):
                metadata = argv[5]
            else:
                bugname = argv[5]
        if len(argv) > 6 and metadata is None and argv[6].startswith(("{", "[")):
            metadata = argv[6]
        if metadata is not None and len(metadata.encode()) > FORK_MAX_METADATA:
            return FORK_FAILED
        started = server.start_fork(
            channel, url, mix=argv[3], rate=rate, bugname=bugname, metadata=metadata
        )
        return FORK_OK if started else FORK_FAILED  # before the websocket connects
    rest = argv[2:]
    if action == "stop":
        if len(rest) == 1 and rest[0].startswith(("{", "[")):
            bugname, text = FORK_BUG_NAME, rest[0]
        else:
            bugname = rest[0] if rest else FORK_BUG_NAME
            text = rest[1] if len(rest) > 1 else None
        return FORK_OK if await server.stop_fork(channel, bugname, text) else FORK_FAILED
    if action == "send_text":
        if not rest:
            return ""
        bugname, text = (rest[0], rest[1]) if len(rest) > 1 else (FORK_BUG_NAME, rest[0])
        return FORK_OK if await server.send_fork_text(channel, bugname, text) else FORK_FAILED
    if action in ("pause", "resume", "graceful-shutdown"):
        fork = channel.forks.get(rest[0] if rest else FORK_BUG_NAME)
        if fork is None or not fork.active:
            return FORK_FAILED
        if action == "graceful-shutdown":
            if fork.sender is not None:
                fork.sender.cancel()
            if fork.client is not None and fork.state == "connected":
                with contextlib.suppress(ConnectionClosed):
                    await fork.client.end_audio()  # zero-length binary frame: no more audio
        else:
            fork.paused = action == "pause"
        return FORK_OK
    return FORK_FAILED


@api_command("uuid_break")
async def _api_uuid_break(server: EslServer, args: str) -> str:
    uuid, _, flag = args.strip().partition(" ")
    if not uuid:
        return f"-USAGE: {BREAK_SYNTAX}\n"
    channel = server.live_channel(uuid)
    if channel is None:
        return NO_SUCH_CHANNEL
    server.break_playback(channel, flush="all" in flag)
    return ""  # mod_commands writes nothing on success: the ESL reply is "-ERR no reply"


@api_command("uuid_broadcast")
async def _api_uuid_broadcast(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if len(argv) < 2:
        return f"-USAGE: {BROADCAST_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is not None:
        server.broadcast(channel, argv[1], argv[2] if len(argv) > 2 else "aleg")
    return "+OK Message Sent\n"  # even for a uuid that matches nothing, like FreeSWITCH


@api_command("uuid_transfer")
async def _api_uuid_transfer(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if not 2 <= len(argv) <= 5:
        return f"-USAGE: {TRANSFER_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return NO_SUCH_CHANNEL
    rest = argv[1:]
    if rest[0].startswith("-"):  # -bleg | -both: this emulator's calls have no B leg
        rest = rest[1:]
    if not rest:
        return f"-USAGE: {TRANSFER_SYNTAX}\n"
    dialplan = rest[1] if len(rest) > 1 else "XML"
    context = rest[2] if len(rest) > 2 else "default"
    server.transfer(channel, rest[0], dialplan, context)
    return "+OK\n"


@api_command("uuid_send_dtmf")
async def _api_uuid_send_dtmf(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if len(argv) < 2:
        return f"-USAGE: {SEND_DTMF_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR Cannot locate session!\n"
    channel.dtmf_sent.append(argv[1])
    return ""  # nothing on success, like uuid_break: the ESL reply is "-ERR no reply"


@api_command("originate")
async def _api_originate(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if not 2 <= len(argv) <= 7:
        return f"-USAGE: {ORIGINATE_SYNTAX}\n"
    # [dialplan] [context] [cid_name] [cid_num] [timeout]; `undef` skips one.
    extra: list[str | None] = [None if a.lower() == "undef" else a for a in argv[2:]]
    extra += [None] * (5 - len(extra))
    return await server.originate(argv[0], argv[1], cid_name=extra[2], cid_num=extra[3])


# --- built-in dialplan applications ------------------------------------------------------


@app_command("playback")
async def _app_playback(server: EslServer, channel: Channel, arg: str) -> str | None:
    return await server.play_file(channel, arg.strip())


@app_command("answer")
async def _app_answer(server: EslServer, channel: Channel, arg: str) -> str | None:
    await server.answer(channel.uuid)
    return None


@app_command("hangup")
async def _app_hangup(server: EslServer, channel: Channel, arg: str) -> str | None:
    await server.hangup(channel.uuid, arg.strip().upper() or "NORMAL_CLEARING")
    return None


@app_command("set")
async def _app_set(server: EslServer, channel: Channel, arg: str) -> str | None:
    name, _, value = arg.partition("=")
    channel.variables[name.strip()] = value
    return None


@app_command("park")
async def _app_park(server: EslServer, channel: Channel, arg: str) -> str | None:
    return None


@app_command("sleep")
async def _app_sleep(server: EslServer, channel: Channel, arg: str) -> str | None:
    seconds = _atoi(arg) / 1000 / server.speed if server.speed > 0 else 0.0
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(channel.gone.wait(), seconds)  # a hangup ends the sleep
    return None
