"""mod_audio_fork on the emulated switch: the websocket a call opens to the service.

`start_fork` connects in the background (CUSTOM mod_audio_fork::connect, or ::connect_failed),
sends the metadata first, then the caller's audio in 20 ms frames on the call clock (`mono`: the
caller alone; `mixed` and `stereo` add what the caller hears). JSON text frames from the service
become CUSTOM events; a close by the service fires ::disconnect, a close from the switch's side
(stop, hangup, shutdown) fires nothing, like FreeSWITCH.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np
from websockets.exceptions import ConnectionClosed

from voiceai.sim.fork_client import ForkClient
from voiceai.sim.freeswitch.channel import PACKET_SECONDS, Channel, bot_track, record_caller

if TYPE_CHECKING:
    from voiceai.sim.freeswitch.server import EslServer

log = logging.getLogger(__name__)

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

CLOSE_WAIT: Final = 2.0  # seconds to wait for a websocket or a task to finish closing


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


def start_fork(
    server: EslServer,
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
    fork.task = server.spawn(_run_fork(server, channel, fork), f"fork-{channel.uuid}-{bugname}")
    return fork


async def stop_fork(channel: Channel, bugname: str, text: str | None = None) -> bool:
    fork = channel.forks.get(bugname)
    if fork is None or not fork.active:
        return False
    await close_fork(fork, text)
    return True


async def send_fork_text(channel: Channel, bugname: str, text: str) -> bool:
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


async def _run_fork(server: EslServer, channel: Channel, fork: Fork) -> None:
    client = ForkClient(fork.url, metadata=fork.metadata, auth=fork.auth)
    try:
        await client.__aenter__()  # connects, then sends the metadata as the first frame
    except Exception as exc:  # refused, unreachable, bad handshake, bad URI
        log.info("esl emulator: fork to %s failed: %s", fork.url, exc)
        if client.ws is not None:  # connected, but the metadata could not be sent
            client.ws.transport.abort()
        fork.state = "failed"
        body = json.dumps({"reason": "Unable to connect"}, separators=(",", ":"))
        server.emit_channel(channel, "CUSTOM", body=body, subclass=FORK_CONNECT_FAILED)
        return
    ws = client.ws
    assert ws is not None
    fork.client = client
    fork.state = "connected"
    if fork.metadata is not None:
        fork.texts_sent.append(fork.metadata)
    server.emit_channel(channel, "CUSTOM", subclass=FORK_CONNECT)
    fork.sender = server.spawn(_send_audio(server, channel, fork), f"fork-audio-{channel.uuid}")
    try:
        async for message in ws:
            _on_fork_message(server, channel, fork, message)
    except ConnectionClosed:
        pass
    finally:
        fork.sender.cancel()
        fork.close_code = ws.close_code
        fork.state = "closed"
    if not fork.stopping and not server.crashed:
        server.emit_channel(channel, "CUSTOM", subclass=FORK_DISCONNECT)  # the service hung up


async def _send_audio(server: EslServer, channel: Channel, fork: Fork) -> None:
    """The caller's audio, then silence while the call lives: 20 ms frames on the call clock.

    Frames go out on an absolute schedule (start + n x 20 ms), so the caller's audio and
    the files played to the caller stay aligned however long the call runs.
    """
    ws = fork.client.ws if fork.client is not None else None
    assert ws is not None
    samples = int(fork.rate * PACKET_SECONDS)
    frame = samples * 2
    offset = 0  # caller_audio bytes this fork has sent
    start = server.clock()
    count = 0
    try:
        while True:
            at = start + count * PACKET_SECONDS
            take = min(frame, (len(channel.caller_audio) - offset) // 2 * 2)
            if take > 0:
                pcm = channel.caller_audio[offset : offset + take].ljust(frame, b"\0")
                record_caller(channel, offset, take, at, fork.rate, pcm)
                offset += take
            else:
                pcm = bytes(frame)  # an open line keeps sending frames
            if fork.mix != "mono":  # mono is the caller only: the bot never hears itself
                bot = bot_track(channel, at, samples, fork.rate)
                pcm = _mix_frame(pcm, bot, fork.mix)
            if not fork.paused:  # mod_audio_fork drops the audio while paused
                await ws.send(pcm)
                fork.bytes_sent += len(pcm)
            count += 1
            if server.speed > 0:
                await server.wait_until(start + count * PACKET_SECONDS)
            else:  # no clock: caller audio as fast as the socket takes it, never flood silence
                await asyncio.sleep(0 if take > 0 else PACKET_SECONDS)
    except ConnectionClosed:
        pass


def _on_fork_message(server: EslServer, channel: Channel, fork: Fork, message: str | bytes) -> None:
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
        None if payload is None else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    )
    server.emit_channel(channel, "CUSTOM", body=body, subclass=subclass)


async def close_fork(fork: Fork, text: str | None = None) -> None:
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
