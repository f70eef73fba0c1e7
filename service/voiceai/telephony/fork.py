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
import math
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
CALL_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: "$" lets a trailing newline in
# A FreeSWITCH's switchname (hostnames are these characters; FS_SWITCHNAME is checked to them).
SWITCH_NAME = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")

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
    """ "8k", "16k", 8000, "16000", 8000.0 → Hz; None when it is not a whole, finite number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        scale = 1000 if text.endswith("k") else 1
        try:
            number = float(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            return None
    else:
        return None
    # "1e999k" is infinity, which int() refuses with OverflowError: not a rate at all.
    if not math.isfinite(number) or not number.is_integer():
        return None
    return int(number)


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
    rate: int | None = None  # None: the query's ?rate=, or DEFAULT_RATE
    language: str | None = None
    channels: int = 1
    switch: str | None = None  # the FreeSWITCH the call is on (its switchname); None: unnamed
    extra: dict[str, Any] = field(default_factory=dict)  # the rest, "switch" kept for the record

    @classmethod
    def parse(cls, text: str) -> tuple[ForkMetadata, str | None]:
        """Metadata from the first TEXT frame, and a warning when some or all of it was unusable.

        Never raises: whatever the frame holds, the call goes on (with defaults) and is recorded.
        """
        try:
            raw = _decode(text)
        except MetadataError as exc:
            return cls(), f"metadata ignored, using defaults: {exc}"
        if not isinstance(raw, dict):
            return cls(extra={"value": raw}), "metadata is not a JSON object; using defaults"
        known = dict(raw)
        warnings: list[str] = []

        def take(*names: str) -> Any:
            for name in names:
                if name in known:
                    return known.pop(name)
            return None

        mix = take("mix", "channels")
        rate_value = take("rate", "sampleRate")
        rate = parse_rate(rate_value) if rate_value is not None else None
        if rate_value is not None and rate is None:
            warnings.append(f"rate {_shown(rate_value)} is not a sample rate; using the default")
        language_value = _text(take("language", "lang"))
        language = _language(language_value)
        if language is None and language_value not in (None, "auto"):
            warnings.append(f"language {_shown(language_value)} is not en or ru; using the default")
        switch_value = known.get("switch")  # kept in extra too: the record shows what was sent
        switch = switch_value if isinstance(switch_value, str) else None
        if switch_value is not None and (switch is None or not SWITCH_NAME.match(switch)):
            warnings.append(
                f"switch {_shown(switch_value)} is not a FreeSWITCH name (letters, digits, . _ -);"
                " using the default switch"
            )
            switch = None
        meta = cls(
            caller=_text(take("caller", "callerNumber", "from")),
            caller_name=_text(take("callerName")),
            callee=_text(take("callee", "did", "to")),
            direction=_text(take("direction")) or "inbound",
            rate=rate,
            language=language,
            channels=2 if mix in ("stereo", 2, "2") else 1,
            switch=switch,
        )
        meta.extra = known
        return meta, "; ".join(warnings) or None


MAX_METADATA_DEPTH = 32  # dialplans send flat objects; the event serializer stops at 255


class MetadataError(ValueError):
    """The metadata frame is not JSON the service can keep and pass on."""


def _decode(text: str) -> Any:
    """JSON that every later step (records, /ws/live) can encode again, or MetadataError."""
    size = len(text.encode(errors="replace"))
    if size > MAX_TEXT_BYTES:  # mod_audio_fork itself sends no more
        raise MetadataError(f"{size} bytes, over the {MAX_TEXT_BYTES} mod_audio_fork sends")
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"not JSON ({exc.msg} at {exc.pos})") from None
    except RecursionError:
        raise MetadataError("nested too deeply") from None
    except ValueError as exc:  # an integer over Python's 4,300-digit limit, a non-finite number
        raise MetadataError(f"a number out of range ({str(exc).split(':')[0][:80]})") from None
    if _depth(value) > MAX_METADATA_DEPTH:
        raise MetadataError(f"nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:  # a lone surrogate (\ud800) is not UTF-8
        raise MetadataError(f"text that cannot be encoded ({type(exc).__name__})") from None
    return value


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text[:20]} is not a finite number")
    return number


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest (without recursion: the value may be deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _language(value: str | None) -> str | None:
    """The language code of "en", "EN", "en-US", "ru_RU"...; None for one the bot cannot speak."""
    if value is None:
        return None
    code = value.strip().lower().replace("_", "-").split("-")[0]
    return code if code in ("en", "ru") else None


def _shown(value: object) -> str:
    """A bad value, quoted and short, for a log line (repr escapes control characters)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
    MAX_FRAME_BYTES, a text frame over MAX_TEXT_BYTES (except the first, the metadata, which
    ForkMetadata.parse ignores with a warning), or text frames faster than TEXT_FRAMES_PER_S
    (beyond a burst): nothing one client sends grows without bound.
    """
    text_budget, refilled = float(TEXT_BURST), time.monotonic()
    first = True
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
        first_frame, first = first, False
        if data is not None:
            if not data:
                return  # zero-length binary: FreeSWITCH's graceful end of audio
            yield Audio(data)
        elif text is not None:
            if size > MAX_TEXT_BYTES and not first_frame:
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
