"""Typed FreeSWITCH commands over EslClient: each returns or raises clearly.

Arguments are validated before anything is sent: FreeSWITCH splits api arguments on spaces
and strips quotes, so a caller-supplied number with a space or quote could add arguments, and
a newline would add a whole ESL command. Failures FreeSWITCH reports (`-ERR ...`, `-USAGE`)
raise CommandError with FreeSWITCH's own text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final
from uuid import uuid4

from voiceai.telephony.esl import EslClient, EslError

FORK_RATES: Final = {8000: "8k", 16000: "16k"}
FORK_MIXES: Final = frozenset({"mono", "mixed", "stereo"})
FORK_MAX_METADATA: Final = 8192  # mod_audio_fork ignores longer metadata

_UUID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_NUMBER = re.compile(r"\+?[0-9]{1,20}")  # E.164-ish or an extension (digits only)
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # gateways, bug names
_CAUSE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
_DTMF = re.compile(r"[0-9*#ABCD]{1,64}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")
_VAR_VALUE = re.compile(r"[A-Za-z0-9_.:@+/=%#*~-]{0,512}")  # no , } { [ ] quotes or spaces
_APP = re.compile(r"[a-z_]{1,64}")
_WS_URL = re.compile(r"wss?://[^\s'\"\\]+")
_PATH = re.compile(r"[^\s'\"\\]+")  # one argument that FreeSWITCH's splitter leaves alone
_JSON_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|.)")
_JSON_SHORT = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


class CommandError(EslError):
    """FreeSWITCH ran the command and said no; `reply` is its text (`-ERR No such channel!`)."""

    def __init__(self, command: str, reply: str) -> None:
        self.command = command
        self.reply = reply.strip() or "(empty reply)"
        super().__init__(f"{command} failed: {self.reply}")


# --- validation ----------------------------------------------------------------------------


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"invalid {what}: {value!r}")
    return value


def check_uuid(uuid: str) -> str:
    return _check(_UUID, uuid, "channel uuid")


def check_number(number: str) -> str:
    """Digits with an optional leading +; nothing that could add arguments to a dial string."""
    return _check(_NUMBER, number, "phone number (digits, optional leading +)")


# mod_event_socket's body when a command succeeds silently (uuid_break, uuid_send_dtmf).
NO_REPLY: Final = "-ERR no reply"


def _ok(command: str, text: str, *, silent_ok: bool = False) -> str:
    if text.startswith("+OK") or (silent_ok and text.strip() == NO_REPLY):
        return text.strip()
    raise CommandError(command, text)


def encode_metadata(metadata: Mapping[str, Any]) -> str:
    """Compact JSON that survives mod_audio_fork's argument splitting unchanged.

    FreeSWITCH splits on spaces, strips single quotes and unescapes `\\n \\t \\" \\\\ ...`, so
    every JSON escape is rewritten as `\\uXXXX` (left alone by the splitter) and spaces and
    apostrophes inside strings become `\\u0020` / `\\u0027`; any JSON parser decodes them back.
    """
    text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    def unicode_escape(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u") and len(code) == 5:
            return match.group(0)
        return f"\\u{ord(_JSON_SHORT[code]):04x}"

    # Compact JSON has spaces and quotes only inside strings, so plain replacement is safe.
    text = _JSON_ESCAPE.sub(unicode_escape, text).replace(" ", "\\u0020").replace("'", "\\u0027")
    if not text.startswith(("{", "[")):
        raise ValueError("fork metadata must be a JSON object or array")
    if len(text.encode()) > FORK_MAX_METADATA:
        raise ValueError(f"fork metadata is longer than {FORK_MAX_METADATA} bytes once encoded")
    return text


# --- call control --------------------------------------------------------------------------


async def play(esl: EslClient, uuid: str, path: str, *, timeout_s: float = 5.0) -> str:
    """Queue a file on the call; returns the application uuid (CHANNEL_EXECUTE* events).

    Always `sendmsg` execute playback with `event-lock: true`: the only form measured to play
    sentences in order and gapless (without it FreeSWITCH nests them: reverse order).
    """
    check_uuid(uuid)
    if not path or any(c in path for c in "\r\n\0"):
        raise ValueError(f"invalid media path: {path!r}")
    app_uuid = str(uuid4())
    headers = {
        "call-command": "execute",
        "execute-app-name": "playback",
        "execute-app-arg": path,
        "event-lock": "true",
        "Event-UUID": app_uuid,
    }
    _ok("play", await esl.sendmsg(uuid, headers, timeout_s))
    return app_uuid


async def break_playback(esl: EslClient, uuid: str, *, timeout_s: float = 5.0) -> None:
    """Stop the current file and flush the queue (`all`; without it the queue goes on)."""
    body = await esl.api(f"uuid_break {check_uuid(uuid)} all", timeout_s)
    _ok("break_playback", body, silent_ok=True)


async def cancel_scheduled(esl: EslClient, uuid: str, *, timeout_s: float = 5.0) -> None:
    """`sched_del <uuid>`: drop the dialplan's "service never took the call" fallback."""
    _ok("sched_del", await esl.api(f"sched_del {check_uuid(uuid)}", timeout_s=timeout_s))


# The dialplan's apology and fallback (freeswitch/conf/dialplan/voiceai_public.xml).
SAFETY_NET: Final = "voiceai_unavailable XML voiceai_public"


async def to_safety_net(esl: EslClient, uuid: str, *, timeout_s: float = 5.0) -> None:
    """Hand a call the service will not take to the dialplan's apology and fallback now, so
    the caller does not wait out the take timeout in silence."""
    _ok("transfer", await esl.api(f"uuid_transfer {check_uuid(uuid)} {SAFETY_NET}", timeout_s))
    # Then drop the scheduled one, which would otherwise transfer the call again mid-fallback.
    await cancel_scheduled(esl, uuid, timeout_s=timeout_s)


async def hangup(
    esl: EslClient, uuid: str, cause: str = "NORMAL_CLEARING", *, timeout_s: float = 5.0
) -> None:
    cause = _check(_CAUSE, cause.upper() if isinstance(cause, str) else cause, "hangup cause")
    _ok("hangup", await esl.api(f"uuid_kill {check_uuid(uuid)} {cause}", timeout_s))


async def transfer(
    esl: EslClient,
    uuid: str,
    number: str,
    gateway: str = "ringcentral",
    *,
    timeout_s: float = 5.0,
) -> None:
    """Blind transfer through the registered gateway (the bot's leg stays bridged: go quiet)."""
    check_uuid(uuid)
    check_number(number)
    _check(_NAME, gateway, "gateway name")
    line = f"uuid_transfer {uuid} bridge:sofia/gateway/{gateway}/{number} inline"
    _ok("transfer", await esl.api(line, timeout_s))


async def send_dtmf(
    esl: EslClient,
    uuid: str,
    digits: str,
    *,
    duration_ms: int | None = None,
    timeout_s: float = 5.0,
) -> None:
    check_uuid(uuid)
    _check(_DTMF, digits.upper() if isinstance(digits, str) else digits, "DTMF digits")
    arg = digits.upper()
    if duration_ms is not None:
        if not 10 <= duration_ms <= 10_000:
            raise ValueError("DTMF duration must be 10..10000 ms")
        arg = f"{arg}@{duration_ms}"
    _ok("send_dtmf", await esl.api(f"uuid_send_dtmf {uuid} {arg}", timeout_s), silent_ok=True)


async def originate(
    esl: EslClient,
    number: str,
    *,
    gateway: str = "ringcentral",
    variables: Mapping[str, str] | None = None,
    app: str = "park",
    uuid: str | None = None,
    timeout_s: float = 60.0,
) -> str:
    """Call out through the gateway; returns the new channel's uuid once it is answered.

    Runs as bgapi: `api originate` would hold every other command on the event socket until
    the far end answers. FreeSWITCH's failure (`-ERR NO_ANSWER`, `-ERR USER_BUSY`) raises
    CommandError.
    """
    check_number(number)
    _check(_NAME, gateway, "gateway name")
    _check(_APP, app, "dialplan application")
    new_uuid = check_uuid(uuid) if uuid is not None else str(uuid4())
    pairs = {"origination_uuid": new_uuid}
    for name, value in (variables or {}).items():
        _check(_VAR_NAME, name, "channel variable name")
        if name == "origination_uuid":
            raise ValueError("pass the uuid as `uuid=`, not as a variable")
        pairs[name] = _check(
            _VAR_VALUE, str(value), f"value of {name} (no spaces, quotes, , {{ }})"
        )
    prefix = ",".join(f"{k}={v}" for k, v in pairs.items())
    line = f"originate {{{prefix}}}sofia/gateway/{gateway}/{number} &{app}()"
    _ok("originate", await esl.bgapi(line, timeout_s))
    return new_uuid


# --- mod_audio_fork and recording ----------------------------------------------------------


async def start_fork(
    esl: EslClient,
    uuid: str,
    url: str,
    rate: int,
    *,
    mix: str = "mono",
    bugname: str = "voiceai",
    metadata: Mapping[str, Any] | None = None,
    timeout_s: float = 5.0,
) -> None:
    """Stream the call's audio to `url`. `+OK` comes before the websocket connects: success or
    failure arrives later as CUSTOM mod_audio_fork::connect / ::connect_failed events.

    The rate and bug name are always passed: without the rate FreeSWITCH 1.10 segfaults.
    """
    check_uuid(uuid)
    _check(_WS_URL, url, "fork websocket url")
    if rate not in FORK_RATES:
        raise ValueError(f"fork rate must be 8000 or 16000, not {rate!r}")
    if mix not in FORK_MIXES:
        raise ValueError(f"fork mix must be one of {sorted(FORK_MIXES)}, not {mix!r}")
    _check(_NAME, bugname, "fork bug name")
    line = f"uuid_audio_fork {uuid} start {url} {mix} {FORK_RATES[rate]} {bugname}"
    if metadata is not None:
        line += f" {encode_metadata(metadata)}"
    _ok("start_fork", await esl.api(line, timeout_s))


async def stop_fork(
    esl: EslClient,
    uuid: str,
    bugname: str = "voiceai",
    text: str | Mapping[str, Any] | None = None,
    *,
    timeout_s: float = 5.0,
) -> None:
    """Close the fork (1000); `text` is sent as a last TEXT frame first (a dict as JSON)."""
    check_uuid(uuid)
    _check(_NAME, bugname, "fork bug name")
    line = f"uuid_audio_fork {uuid} stop {bugname}"
    if isinstance(text, Mapping):
        line += f" {encode_metadata(text)}"
    elif text is not None:
        line += f" {_check(_PATH, text, 'fork text (one word; pass a dict for JSON)')}"
    _ok("stop_fork", await esl.api(line, timeout_s))


async def record(
    esl: EslClient, uuid: str, path: str, *, start: bool = True, timeout_s: float = 5.0
) -> None:
    """`uuid_record <uuid> start|stop <path>` (the path must not contain spaces or quotes)."""
    check_uuid(uuid)
    _check(_PATH, path, "recording path")
    action = "start" if start else "stop"
    _ok("record", await esl.api(f"uuid_record {uuid} {action} {path}", timeout_s))
