"""One ESL client of the emulated switch (a mod_event_socket listener): its socket, what it
subscribed to, its filters, and the connection commands that change them (`event`, `nixevent`,
`noevents`, `filter`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any, Final

from voiceai.sim.freeswitch.protocol import (
    DISCONNECT_MESSAGE,
    EVENT_NAMES,
    Event,
    Packet,
    event_name,
)

log = logging.getLogger(__name__)

MAX_BACKLOG: Final = 64 * 1024 * 1024  # unread output; FreeSWITCH drops stuck listeners too


class Listener:
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
        self.muted = False  # fault injection: a hung switch reads commands, writes nothing

    def write(self, data: bytes) -> None:
        if self.closed or self.muted or self.writer.is_closing():
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            log.warning("esl: client does not read, dropping it")
            self.abort()

    def reply(self, text: str, extra: Mapping[str, str] | None = None) -> None:
        more = "".join(f"{k}: {v}\n" for k, v in (extra or {}).items())
        self.write(f"Content-Type: command/reply\nReply-Text: {text}\n{more}\n".encode())

    def api_response(self, body: str, overstate: int = 0) -> None:
        """`overstate` > 0 (fault injection): a Content-Length that many bytes over the body."""
        data = body.encode()
        length = len(data) + overstate
        self.write(f"Content-Type: api/response\nContent-Length: {length}\n\n".encode() + data)

    def deliver(self, event: Event, cache: dict[str, bytes], cut: int = 0) -> None:
        """`cut` > 0 (fault injection): the frame's last `cut` bytes are never sent."""
        if not self.wants(event):
            return
        data = cache.get(self.format)
        if data is None:
            data = cache[self.format] = event.frame(self.format)
        if cut:
            data = data[:-cut]
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


# --- connection commands that change the subscription -----------------------------------


async def cmd_event(listener: Listener, packet: Packet) -> None:
    """`event [plain|json|xml] NAME... [CUSTOM subclass...]`: subscribe to more events."""
    words = packet.command.split(" ")[1:]
    custom = False
    keys = 0
    for index, word in enumerate(words):
        if index == 0 and word.lower() in ("plain", "json", "xml"):
            listener.format = word.lower()
            continue
        if custom:  # every word after CUSTOM is a subclass (docs/design.md)
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


async def cmd_nixevent(listener: Listener, packet: Packet) -> None:
    """`nixevent NAME... [CUSTOM subclass...]`: unsubscribe from some events."""
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


async def cmd_noevents(listener: Listener, packet: Packet) -> None:
    """`noevents`: no events at all, and drop those held back."""
    listener.held.clear()
    if not listener.events_on:
        listener.reply("-ERR not listening for events")
        return
    listener.events_on = listener.all_events = False
    listener.names.clear()
    listener.subclasses.clear()
    listener.reply("+OK no longer listening for events")


async def cmd_filter(listener: Listener, packet: Packet) -> None:
    """`filter [add] Header value`, `filter delete Header [value]`, `filter delete all`."""
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
