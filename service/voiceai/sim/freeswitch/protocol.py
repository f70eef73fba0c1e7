"""FreeSWITCH's text formats: the event socket's wire format and the string rules of its commands.

A client's command is a first line, header lines and an optional body (`read_packet`); an event
leaves as a `text/event-plain|json|xml` frame (`Event.frame`). The string helpers copy the C
functions they name, quirks included: clients depend on them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape as xml_escape

DISCONNECT_MESSAGE: Final = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"

MAX_PACKET: Final = 10 * 1024 * 1024  # mod_event_socket's limit for one command
MAX_LINE: Final = 1024 * 1024  # a longer header line is garbage: drop that client

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

_URL_UNSAFE: Final = frozenset(b'\r\n #%&+:;<=>?@[\\]^`{|}"')  # SWITCH_URL_UNSAFE
_UNESCAPES: Final = {"n": "\n", "r": "\r", "t": "\t", "s": " "}


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


def atoi(text: str) -> int:
    """C's atoi: the leading integer, 0 if there is none."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def get_header(headers: Mapping[str, str], name: str) -> str | None:
    """Header lookup, case-insensitive like switch_event_get_header."""
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def switch_true(value: str | None) -> bool:
    """switch_true: the words FreeSWITCH reads as yes (e.g. for `event-lock`)."""
    return (value or "").strip().lower() in ("true", "yes", "on", "1", "enabled", "active", "allow")


def parse_dial_vars(text: str) -> tuple[dict[str, str], str]:
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


# --- events and commands -----------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One FreeSWITCH event: ordered headers (Event-Name first) and an optional body."""

    name: str
    headers: dict[str, str]
    body: str | None = None
    subclass: str | None = None

    def header(self, name: str) -> str | None:
        return get_header(self.headers, name)

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
        return get_header(self.headers, name)


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
    length = atoi(get_header(headers, "content-length") or "")
    if length > MAX_PACKET:
        raise ValueError("body too long")
    if length > 0:
        body = (await reader.readexactly(length)).decode("utf-8", "replace")
    return Packet(lines[0], headers, body)
