"""The mod_audio_fork websocket protocol, as FreeSWITCH 1.10 speaks it (see docs/design.md).

FreeSWITCH connects with subprotocol `audio.drachtio.org` (and basic auth when configured),
sends its metadata as the first TEXT frame, then raw L16 PCM as BINARY frames of any size.
Later TEXT frames come from `uuid_audio_fork send_text`; a zero-length BINARY frame or a
close ends the caller's audio.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger(__name__)

SUBPROTOCOL = "audio.drachtio.org"
MAX_FRAME_BYTES = 64 * 1024
MAX_TEXT_BYTES = 8 * 1024  # mod_audio_fork's own metadata limit; send_text frames are small
TEXT_FRAMES_PER_S, TEXT_BURST = 10.0, 30  # more is a flood, not FreeSWITCH
DEFAULT_RATE = 16000
SUPPORTED_RATES = (8000, 16000)
CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Close codes (RFC 6455) the fork endpoint uses.
CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009
CLOSE_ERROR = 1011
CLOSE_TRY_LATER = 1013  # over VOICEAI_MAX_CALLS: the dialplan's safety net takes the caller


class ForkProtocolError(Exception):
    """The far end broke the protocol; `code` is the websocket close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def parse_rate(value: object) -> int | None:
    """ "8k", "16k", 8000, "16000" → Hz; None when it is not a rate at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
        except ValueError:
            return None
    return None


def check_rate(value: object) -> int:
    rate = parse_rate(value)
    if rate not in SUPPORTED_RATES:
        raise ForkProtocolError(
            CLOSE_UNSUPPORTED, f"unsupported sample rate {value!r}; use 8k or 16k"
        )
    return rate


def basic_auth_ok(header: str | None, user: str, password: str) -> bool:
    """Constant-time check of an `Authorization: Basic ...` header."""
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        given = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    expected = f"{user}:{password}".encode()
    return hmac.compare_digest(given, expected)


@dataclass
class ForkMetadata:
    """What the dialplan tells about the call in the first TEXT frame."""

    caller: str | None = None
    caller_name: str | None = None
    callee: str | None = None
    direction: str = "inbound"
    rate: object = None
    language: str | None = None
    channels: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> tuple[ForkMetadata, str | None]:
        """Metadata from the first TEXT frame; bad JSON gives defaults and a warning."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            return cls(), f"metadata is not JSON ({exc.msg} at {exc.pos}); using defaults"
        if not isinstance(raw, dict):
            return cls(extra={"value": raw}), "metadata is not a JSON object; using defaults"
        known = dict(raw)

        def take(*names: str) -> Any:
            for name in names:
                if name in known:
                    return known.pop(name)
            return None

        mix = take("mix", "channels")
        meta = cls(
            caller=_text(take("caller", "callerNumber", "from")),
            caller_name=_text(take("callerName")),
            callee=_text(take("callee", "did", "to")),
            direction=_text(take("direction")) or "inbound",
            rate=take("rate", "sampleRate"),
            language=_text(take("language", "lang")),
            channels=2 if mix in ("stereo", 2, "2") else 1,
        )
        meta.extra = known
        return meta, None


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Audio:
    data: bytes


@dataclass(frozen=True)
class Text:
    text: str


ForkMessage = Audio | Text


async def receive_messages(ws: WebSocket) -> AsyncIterator[ForkMessage]:
    """Frames from an accepted fork socket until the caller's audio ends.

    Ends on close or on a zero-length binary frame; raises ForkProtocolError on a frame over
    MAX_FRAME_BYTES, a text frame over MAX_TEXT_BYTES, or text frames faster than
    TEXT_FRAMES_PER_S (beyond a burst): nothing one client sends grows without bound.
    """
    text_budget, refilled = float(TEXT_BURST), time.monotonic()
    while True:
        try:
            message = await ws.receive()
        except WebSocketDisconnect:
            return
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        text = message.get("text")
        size = len(data) if data is not None else len((text or "").encode())
        if size > MAX_FRAME_BYTES:
            raise ForkProtocolError(
                CLOSE_TOO_BIG, f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}"
            )
        if data is not None:
            if not data:
                return  # zero-length binary: FreeSWITCH's graceful end of audio
            yield Audio(data)
        elif text is not None:
            if size > MAX_TEXT_BYTES:
                raise ForkProtocolError(
                    CLOSE_TOO_BIG, f"text frame of {size} bytes exceeds {MAX_TEXT_BYTES}"
                )
            now = time.monotonic()
            text_budget = min(TEXT_BURST, text_budget + (now - refilled) * TEXT_FRAMES_PER_S)
            refilled = now
            if text_budget < 1:
                raise ForkProtocolError(CLOSE_POLICY, "text frame flood")
            text_budget -= 1
            yield Text(text)
