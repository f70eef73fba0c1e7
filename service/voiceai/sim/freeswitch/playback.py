"""The `playback` application on the emulated switch, and `uuid_break`.

A file takes its real length on the call clock: PLAYBACK_START, then PLAYBACK_STOP (done or
break) and a `Played` record on the channel. A message run inside the playing file (no
event-lock, see messages.py) pauses it: the piece heard so far is closed, and the file goes on
from there once that message is done.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING

from voiceai.audio.pcm import decode_file
from voiceai.sim.freeswitch.channel import Channel, Playback, Played
from voiceai.sim.freeswitch.protocol import parse_dial_vars

if TYPE_CHECKING:
    from voiceai.sim.freeswitch.server import EslServer

log = logging.getLogger(__name__)

# Where the app a queued message runs starts on the call clock (gapless after the last file).
APP_START: ContextVar[float | None] = ContextVar("esl_app_start", default=None)


async def play_file(server: EslServer, channel: Channel, arg: str) -> str:
    """The `playback` application: the file's real length on the call clock, then done.

    Like switch_ivr_play_file: a file that cannot be opened fires no PLAYBACK event at all
    (only logged; `missing_file_events` makes it START+STOP for tests that want it).
    """
    _, path = parse_dial_vars(arg)
    try:
        # Decoded inline (a few ms): the file must start before a message sent right
        # after it can run, exactly as FreeSWITCH opens it before looking at its queue.
        audio = decode_file(path, channel.codec_rate)
    except Exception as exc:  # missing, unreadable, not audio
        log.warning("esl emulator: playback cannot open %s: %s", path, exc)
        channel.errors.append(f"playback: cannot open {path}: {exc}")
        channel.media_free_at = server.clock()
        if server.missing_file_events:
            server.emit_channel(channel, "PLAYBACK_START", {"Playback-File-Path": path})
            stop = {"Playback-File-Path": path, "Playback-Status": "done"}
            server.emit_channel(channel, "PLAYBACK_STOP", stop)
        return "FILE NOT FOUND"
    playback = Playback(path, audio, channel.codec_rate)
    now = server.clock()
    start = APP_START.get()
    if start is None or start > now:
        start = now
    if channel.hung_up:
        return "FILE PLAYED"
    playback.run_start = start
    channel.media.append(playback)
    channel.clips.append(playback)
    server.emit_channel(channel, "PLAYBACK_START", {"Playback-File-Path": path})
    while playback.status is None:
        end = playback.end_time()
        if end is None:  # a message without event-lock plays inside this one
            await playback.wake.wait()
            playback.wake.clear()
            continue
        if not await server.wait_until(end, playback.wake):
            finish_playback(server, channel, playback, "done")
            break
        playback.wake.clear()
    return "FILE PLAYED"  # mod_dptools answers this for done and for break alike


def finish_playback(server: EslServer, channel: Channel, playback: Playback, status: str) -> None:
    """Stop a file: its variables, then PLAYBACK_STOP, then a `played` record."""
    if playback.status is not None:
        return
    end = playback.end_time()
    if status == "done" and end is not None:
        stopped, heard = end, playback.audio.size
    else:
        stopped = server.clock()
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
    server.emit_channel(channel, "PLAYBACK_STOP", headers)
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


def break_playback(server: EslServer, channel: Channel, *, flush: bool = False) -> bool:
    """uuid_break: stop the file playing now; `flush` (all) also drops every queued message.

    Only the stopped file gets an event (PLAYBACK_STOP, break); flushed files get none.
    False if nothing was playing.
    """
    if flush:
        channel.flushes += 1
    targets = list(reversed(channel.media)) if flush else channel.media[-1:]
    for playback in targets:
        finish_playback(server, channel, playback, "break")
    return bool(targets)
