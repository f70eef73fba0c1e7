"""An emulator of FreeSWITCH's inbound event socket, with mod_audio_fork behind it.

It speaks the wire protocol of mod_event_socket (FreeSWITCH 1.10) closely enough for
greenswitch and for our own ESL client: `auth/request`, `command/reply`, `api/response`,
`text/event-plain|json|xml`, `text/disconnect-notice`. The facts measured on a real
FreeSWITCH (docs/design.md) are reproduced on purpose, including its failures:
`uuid_audio_fork <uuid> start <url> <mix>` without a sample rate kills the whole switch.

Extend it through two tables: `EslServer.api_handlers` (name -> async handler for `api` and
`bgapi`) and `EslServer.app_handlers` (dialplan applications that `sendmsg` with
`call-command: execute` runs). Everything runs on one asyncio loop: call the methods from it.

A talking bot is served the way FreeSWITCH 1.10 serves it (docs/design.md, "Measured on..."):
`playback` through `sendmsg` (event-lock: in order, gapless; without it: nested, reverse order),
`uuid_broadcast` (5 lead frames), `uuid_break [all]`, `uuid_transfer`, `uuid_send_dtmf`,
`originate`, caller DTMF (`press_dtmf`). Time is the call clock (`EslServer.clock`): the loop's
clock run `speed` times faster. Every channel keeps both sides of the call on that clock
(`write_call_wav`, `played_audio`, `Channel.played`).

One job per module:
    server     EslServer: the socket server, command dispatch, events, calls, the call clock
    protocol   the ESL wire format (packets, events, framing) and FreeSWITCH's string helpers
    listener   one connected ESL client: subscriptions, filters, event delivery
    channel    Channel and its playback bookkeeping; both sides of the call as audio tracks
    playback   the `playback` application and `uuid_break`
    messages   the channel's message queue (sendmsg, uuid_broadcast): event-lock, lead frames
    fork       mod_audio_fork: the websocket to the service, its audio and its events
    api        the `api`/`bgapi` commands (status, uuid_*, originate, ...)
    apps       the dialplan applications (playback, answer, hangup, set, park, sleep)
"""

from voiceai.sim.freeswitch.api import ApiHandler, ServerCrashed, api_command
from voiceai.sim.freeswitch.apps import AppHandler, app_command
from voiceai.sim.freeswitch.channel import Channel, Played
from voiceai.sim.freeswitch.fork import Fork
from voiceai.sim.freeswitch.protocol import (
    DISCONNECT_MESSAGE,
    Event,
    Packet,
    fs_split,
    fs_url_encode,
)
from voiceai.sim.freeswitch.server import EslServer

__all__ = [
    "DISCONNECT_MESSAGE",
    "ApiHandler",
    "AppHandler",
    "Channel",
    "EslServer",
    "Event",
    "Fork",
    "Packet",
    "Played",
    "ServerCrashed",
    "api_command",
    "app_command",
    "fs_split",
    "fs_url_encode",
]
