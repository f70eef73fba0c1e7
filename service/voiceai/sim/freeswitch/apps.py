"""The emulated switch's dialplan applications: what `sendmsg` with `call-command: execute`
runs (mod_dptools' playback, answer, hangup, set, park, sleep).

`app_command` registers one; every new EslServer copies the table into its `app_handlers`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from voiceai.sim.freeswitch.channel import Channel
from voiceai.sim.freeswitch.protocol import atoi

if TYPE_CHECKING:
    from voiceai.sim.freeswitch.server import EslServer

AppHandler = Callable[["EslServer", Channel, str], Awaitable[str | None]]

BUILTIN_APPS: dict[str, AppHandler] = {}


def app_command(name: str) -> Callable[[AppHandler], AppHandler]:
    """Register a built-in dialplan application for `sendmsg` execute."""

    def register(handler: AppHandler) -> AppHandler:
        BUILTIN_APPS[name] = handler
        return handler

    return register


# --- built-in dialplan applications ------------------------------------------------------


@app_command("playback")
async def _app_playback(server: EslServer, channel: Channel, arg: str) -> str | None:
    return await server.play_file(channel, arg.strip())


@app_command("answer")
async def _app_answer(server: EslServer, channel: Channel, arg: str) -> str | None:
    await server.answer(channel.uuid)
    return None


@app_command("hangup")
async def _app_hangup(server: EslServer, channel: Channel, arg: str) -> str | None:
    await server.hangup(channel.uuid, arg.strip().upper() or "NORMAL_CLEARING")
    return None


@app_command("set")
async def _app_set(server: EslServer, channel: Channel, arg: str) -> str | None:
    name, _, value = arg.partition("=")
    channel.variables[name.strip()] = value
    return None


@app_command("park")
async def _app_park(server: EslServer, channel: Channel, arg: str) -> str | None:
    return None


@app_command("sleep")
async def _app_sleep(server: EslServer, channel: Channel, arg: str) -> str | None:
    seconds = atoi(arg) / 1000 / server.speed if server.speed > 0 else 0.0
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(channel.gone.wait(), seconds)  # a hangup ends the sleep
    return None
