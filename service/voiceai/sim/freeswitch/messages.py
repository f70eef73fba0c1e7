"""A channel's message queue: what `sendmsg` (and `uuid_broadcast`, `originate`) put on the
session's private event queue, run the way FreeSWITCH 1.10 runs it.

With event-lock, messages run strictly in order, and a file queued behind another starts where
that one ends (gapless). Without it, a message arriving while an app runs executes inside that
app: the file playing now waits, so quick messages are heard in reverse order. `hangup` acts at
once; `uuid_break all` drops what is queued; each lead frame delays the start by 20 ms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from voiceai.sim.freeswitch.channel import PACKET_SECONDS, Channel
from voiceai.sim.freeswitch.playback import APP_START
from voiceai.sim.freeswitch.protocol import atoi, get_header, switch_true

if TYPE_CHECKING:
    from voiceai.sim.freeswitch.server import EslServer

GAPLESS_SLACK: Final = 0.1  # real seconds a queued file may start late and still follow gaplessly


def enqueue_message(server: EslServer, channel: Channel, message: dict[str, str]) -> None:
    """Queue a message on the channel as sendmsg does (the session's private event queue)."""
    queued_at, flushes = server.clock(), channel.flushes
    server.spawn(_run_message(server, channel, message, queued_at, flushes), "sendmsg")


async def _run_message(
    server: EslServer, channel: Channel, message: dict[str, str], queued_at: float, flushes: int
) -> None:
    """Act on a sendmsg: `execute` runs an app from app_handlers, `hangup` hangs up."""
    command = (get_header(message, "call-command") or "").lower()
    if command == "hangup":  # acted on at once, even during a running app
        await server.hangup(channel.uuid, get_header(message, "hangup-cause") or "NORMAL_CLEARING")
        return
    if command != "execute":
        return
    app = get_header(message, "execute-app-name") or ""
    arg = get_header(message, "execute-app-arg") or message.get("_body", "")
    loops = max(atoi(get_header(message, "loops") or "1"), 1)
    lead = max(atoi(get_header(message, "lead-frames") or "0"), 0) * PACKET_SECONDS
    app_uuid = get_header(message, "Event-UUID")
    if not switch_true(get_header(message, "event-lock")) and channel.app_lock.locked():
        # Measured: without event-lock the running app's loop executes the message inside
        # itself; the file playing now waits, so quick messages are heard in reverse order.
        outer = channel.media[-1] if channel.media else None
        if outer is not None and outer.run_start is not None:
            outer.close_piece(outer.position(server.clock()))
            outer.wake.set()
        try:
            for _ in range(loops):
                if channel.hung_up:
                    return
                await server.execute_app(channel, app, arg, app_uuid)
        finally:
            if outer is not None and outer.status is None and outer.run_start is None:
                outer.run_start = server.clock()
                outer.wake.set()
        return
    # event-lock (and anything arriving while the channel is idle): strictly in order.
    async with channel.app_lock:
        for _ in range(loops):
            if channel.hung_up or channel.flushes != flushes:
                return  # uuid_break all flushed the queue: no events at all
            start = _app_start(server, channel, queued_at) + lead
            if lead and (
                await server.wait_until(start, channel.gone) or channel.flushes != flushes
            ):
                return
            token = APP_START.set(start)
            try:
                await server.execute_app(channel, app, arg, app_uuid)
            finally:
                APP_START.reset(token)
            if app != "playback":
                channel.media_free_at = server.clock()


def _app_start(server: EslServer, channel: Channel, queued_at: float) -> float:
    """Now, or the end of the last file when this message waited behind it (gapless)."""
    now = server.clock()
    free = channel.media_free_at
    slack = GAPLESS_SLACK * max(server.speed, 0.0)
    if free is not None and queued_at <= free <= now and now - free <= slack:
        return free
    return now
