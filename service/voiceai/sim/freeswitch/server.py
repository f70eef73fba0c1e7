"""EslServer: the emulated FreeSWITCH as the service and the tests see it.

It listens for ESL clients, authenticates them and dispatches their commands, fires events, and
owns the calls (channels), the call clock, and the background tasks (forks, queued messages,
bgapi jobs). The work itself lives next to it: fork.py (mod_audio_fork), playback.py and
messages.py (what the caller hears), listener.py (one client), api.py and apps.py (commands).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import time
import wave
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final
from uuid import uuid4

import numpy as np

from voiceai.sim.freeswitch import fork as audio_fork
from voiceai.sim.freeswitch import messages
from voiceai.sim.freeswitch import playback as file_playback
from voiceai.sim.freeswitch.api import BUILTIN_API, ApiHandler, ServerCrashed
from voiceai.sim.freeswitch.apps import BUILTIN_APPS, AppHandler
from voiceai.sim.freeswitch.channel import STATE_NUMBERS, Channel, bot_track, caller_track
from voiceai.sim.freeswitch.fork import CLOSE_WAIT, FORK_BUG_NAME, Fork, close_fork
from voiceai.sim.freeswitch.listener import (
    Listener,
    cmd_event,
    cmd_filter,
    cmd_nixevent,
    cmd_noevents,
)
from voiceai.sim.freeswitch.playback import finish_playback
from voiceai.sim.freeswitch.protocol import (
    MAX_LINE,
    Event,
    Packet,
    event_name,
    get_header,
    parse_dial_vars,
    read_packet,
)

log = logging.getLogger(__name__)

FS_VERSION: Final = "1.10.12-release git a88d069 2024-08-02 21:02:27Z 64bit"
GATEWAY_DIAL: Final = re.compile(r"^sofia/gateway/([^/]+)/(.+)$")
DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
BROADCAST_LEAD_FRAMES: Final = 5  # switch_ivr_broadcast's lead-frames: the measured ~0.1 s
WAIT_SLICE: Final = 0.25  # longest single sleep, so a new `speed` takes effect soon
# Fault injection, set in EslServer.faults: api command name -> long_reply | extra_reply | mute
# | huge_header, event name -> truncated; each is used once, by the next command or event.
FAULT_OVERSTATE: Final = 64  # long_reply: the Content-Length is this many bytes too large
FAULT_CUT: Final = 32  # truncated: the event frame's last bytes that are never sent
GARBAGE_CHUNK: Final = b"X" * 65536  # huge_header streams this, with no newline, back-pressured

CommandHandler = Callable[[Listener, Packet], Awaitable[None]]


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
        self.faults: dict[str, str] = {}  # fault injection (see FAULT_OVERSTATE): used once
        self.huge_header_bytes = 200 * 1024 * 1024  # how long huge_header's line would be
        self.garbage_sent: list[int] = []  # bytes each huge_header got out before it ended
        self.channels: dict[str, Channel] = {}  # every call, hung up ones too
        self.events: deque[Event] = deque(maxlen=10_000)  # recent events, for assertions
        self.api_handlers: dict[str, ApiHandler] = dict(BUILTIN_API)
        self.app_handlers: dict[str, AppHandler] = dict(BUILTIN_APPS)
        self._port = port
        self._server: asyncio.Server | None = None
        self._listeners: set[Listener] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sequence = itertools.count(1)
        self._started = time.monotonic()
        self._sessions = 0
        self._peak = 0
        self._stopped = False
        # Connection commands, checked in order by prefix like parse_command() does.
        self._commands: tuple[tuple[str, CommandHandler], ...] = (
            ("filter ", cmd_filter),
            ("sendmsg", self._cmd_sendmsg),
            ("sendevent", self._cmd_sendevent),
            ("api ", self._cmd_api),
            ("bgapi ", self._cmd_bgapi),
            ("event", cmd_event),
            ("nixevent", cmd_nixevent),
            ("noevents", cmd_noevents),
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

    async def wait_until(self, target: float, wake: asyncio.Event | None = None) -> bool:
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
                    await close_fork(fork)
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
                "Event-Calling-File": "esl_server.py",  # the emulator's old one-file name
                "Event-Calling-Function": "emit",
                "Event-Calling-Line-Number": "0",
                "Event-Sequence": str(next(self._sequence)),
            }
        )
        base.update({k: str(v) for k, v in (headers or {}).items()})
        event = Event(name, base, body, subclass)
        self.events.append(event)
        cache: dict[str, bytes] = {}
        cut = FAULT_CUT if self.faults.pop(name, None) == "truncated" else 0
        for listener in list(self._listeners):
            try:
                listener.deliver(event, cache, cut)
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
            finish_playback(self, channel, playback, "hangup")
        channel.gone.set()
        for fork in list(channel.forks.values()):
            await close_fork(fork)
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
        return await file_playback.play_file(self, channel, arg)

    def break_playback(self, channel: Channel, *, flush: bool = False) -> bool:
        """uuid_break: stop the file playing now; `flush` (all) also drops every queued message.

        Only the stopped file gets an event (PLAYBACK_STOP, break); flushed files get none.
        False if nothing was playing.
        """
        return file_playback.break_playback(self, channel, flush=flush)

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
            _, dial = parse_dial_vars(data)
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

        self.spawn(later(), f"sched-{channel.uuid}")

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
                finish_playback(self, channel, top, "break")

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
        variables, dial = parse_dial_vars(url)
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
        await self.wait_until(self.clock() + self.originate_answer_delay, channel.gone)
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

    def _call_span(self, uuid: str, rate: int) -> tuple[Channel, int]:
        channel = self.channels[uuid]
        end = channel.ended_at if channel.ended_at is not None else self.clock()
        for segment in channel.caller_segments:
            end = max(end, segment.end)
        return channel, max(math.ceil((end - channel.created_at) * rate), 0)

    def played_audio(self, uuid: str, rate: int = 16000) -> np.ndarray:
        """The bot side alone, from the channel's creation: int16 mono at `rate`."""
        channel, count = self._call_span(uuid, rate)
        return bot_track(channel, channel.created_at, count, rate)

    def write_call_wav(self, uuid: str, path: str | Path, rate: int = 16000) -> Path:
        """The whole call as a stereo WAV: left = the caller, right = what the caller heard."""
        channel, count = self._call_span(uuid, rate)
        left = caller_track(channel, channel.created_at, count, rate)
        right = bot_track(channel, channel.created_at, count, rate)
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
        return audio_fork.start_fork(
            self, channel, url, mix=mix, rate=rate, bugname=bugname, metadata=metadata
        )

    async def stop_fork(self, channel: Channel, bugname: str, text: str | None = None) -> bool:
        return await audio_fork.stop_fork(channel, bugname, text)

    async def send_fork_text(self, channel: Channel, bugname: str, text: str) -> bool:
        return await audio_fork.send_fork_text(channel, bugname, text)

    # connections

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task of the server's: cancelled by stop and crash, failures logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("esl emulator: task %s failed", task.get_name(), exc_info=task.exception())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        listener = Listener(writer, asyncio.current_task())
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

    async def _dispatch(self, listener: Listener, packet: Packet) -> None:
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

    async def _cmd_api(self, listener: Listener, packet: Packet) -> None:
        line = packet.command[4:]
        self.commands.append(line)
        fault = self.faults.pop(line.partition(" ")[0], None)
        if fault == "huge_header":
            await self._stream_garbage(listener)
            return
        listener.muted = listener.muted or fault == "mute"
        body = await self.api(line)
        if fault == "extra_reply":  # one reply too many: every later one answers the wrong command
            listener.reply("+OK")
        overstate = FAULT_OVERSTATE if fault == "long_reply" else 0
        listener.api_response(body or "-ERR no reply\n", overstate)

    async def _stream_garbage(self, listener: Listener) -> None:
        """Fault injection: one endless header line, sent only as fast as the client reads it."""
        sent = 0
        try:
            while sent < self.huge_header_bytes and not listener.writer.is_closing():
                listener.writer.write(GARBAGE_CHUNK)
                sent += len(GARBAGE_CHUNK)
                await listener.writer.drain()
        except (ConnectionError, OSError):
            pass  # the client hung up on it: what we want
        finally:
            self.garbage_sent.append(sent)
            listener.abort()

    async def _cmd_bgapi(self, listener: Listener, packet: Packet) -> None:
        line = packet.command[6:]
        self.commands.append(line)
        job = packet.header("Job-UUID") or str(uuid4())
        listener.reply(f"+OK Job-UUID: {job}", {"Job-UUID": job})
        self.spawn(self._background_job(job, line), f"bgapi-{job}")

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

    async def _cmd_sendevent(self, listener: Listener, packet: Packet) -> None:
        name = event_name(packet.command[9:].strip()) or "CUSTOM"
        headers = {k: v for k, v in packet.headers.items() if k.lower() != "content-length"}
        subclass = get_header(headers, "Event-Subclass") if name == "CUSTOM" else None
        event_uuid = str(uuid4())
        headers["Event-UUID"] = event_uuid
        self.emit(name, headers, packet.body, subclass)
        listener.reply(f"+OK {event_uuid}")

    async def _cmd_sendmsg(self, listener: Listener, packet: Packet) -> None:
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
        messages.enqueue_message(self, channel, message)


def _loop_time() -> float:
    # The running loop's clock; outside a loop the same monotonic clock asyncio uses.
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()
