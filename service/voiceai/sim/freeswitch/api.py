"""The emulated switch's API: what `api` and `bgapi` run (mod_commands, mod_audio_fork).

Each command answers the text the real one writes, usage lines, missing channels and empty
replies included. `api_command` registers one; every new EslServer copies the table into its
`api_handlers`, which a test may change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from websockets.exceptions import ConnectionClosed

from voiceai.sim.freeswitch.fork import (
    FORK_BUG_NAME,
    FORK_FAILED,
    FORK_MAX_METADATA,
    FORK_MIXES,
    FORK_OK,
    FORK_SYNTAX,
)
from voiceai.sim.freeswitch.protocol import atoi, fs_split

if TYPE_CHECKING:
    from voiceai.sim.freeswitch.server import EslServer

ApiHandler = Callable[["EslServer", str], Awaitable[str]]

# mod_commands usage lines, as the real API answers them.
BREAK_SYNTAX: Final = "<uuid> [all]"
BROADCAST_SYNTAX: Final = "<uuid> <path> [aleg|bleg|holdb|both]"
TRANSFER_SYNTAX: Final = "<uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]"
SEND_DTMF_SYNTAX: Final = "<uuid> <dtmf_data>"
ORIGINATE_SYNTAX: Final = (
    "<call url> <exten>|&<application_name>(<app_args>) [<dialplan>] [<context>] [<cid_name>] "
    "[<cid_num>] [<timeout_sec>]"
)
NO_SUCH_CHANNEL: Final = "-ERR No Such Channel!\n"  # uuid_break, uuid_transfer (capitalised)


class ServerCrashed(Exception):
    """Raised inside the emulator when a command kills it, the way a segfault would."""


BUILTIN_API: dict[str, ApiHandler] = {}


def api_command(name: str) -> Callable[[ApiHandler], ApiHandler]:
    """Register a built-in api command (every new EslServer copies the table)."""

    def register(handler: ApiHandler) -> ApiHandler:
        BUILTIN_API[name] = handler
        return handler

    return register


# --- built-in api commands ---------------------------------------------------------------


@api_command("status")
async def _api_status(server: EslServer, args: str) -> str:
    return server.status_text()


@api_command("hostname")
async def _api_hostname(server: EslServer, args: str) -> str:
    return server.hostname


@api_command("sched_del")
async def _api_sched_del(server: EslServer, args: str) -> str:
    # The dialplan files its "service never took the call" transfer under the call's uuid.
    group = args.strip()
    channel = server.channels.get(group)
    deleted = 0
    if channel is not None:
        deleted = len(channel.scheduled)
        channel.scheduled.clear()
    return f"+OK Deleted: {deleted}\n"


@api_command("uuid_exists")
async def _api_uuid_exists(server: EslServer, args: str) -> str:
    return "true" if server.live_channel(args.strip()) is not None else "false"


@api_command("uuid_record")
async def _api_uuid_record(server: EslServer, args: str) -> str:
    argv = args.split()
    if len(argv) < 3 or argv[1] not in ("start", "stop"):
        return "-USAGE: <uuid> [start|stop|mask|unmask] <path> [<limit>]\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR Cannot locate session!\n"
    if argv[1] == "start":
        channel.recordings.append(argv[2])
    elif argv[2] in channel.recordings:
        channel.recordings.remove(argv[2])
    return "+OK Success\n"


@api_command("uuid_kill")
async def _api_uuid_kill(server: EslServer, args: str) -> str:
    argv = args.split()
    if not argv:
        return "-USAGE: <uuid> [cause]\n"
    if server.live_channel(argv[0]) is None:
        return "-ERR No such channel!\n"
    await server.hangup(argv[0], argv[1].upper() if len(argv) > 1 else "NORMAL_CLEARING")
    return "+OK\n"


@api_command("uuid_getvar")
async def _api_uuid_getvar(server: EslServer, args: str) -> str:
    argv = args.split()
    if len(argv) < 2:
        return "-USAGE: <uuid> <var>\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR No such channel!\n"
    return channel.variables.get(argv[1], "_undef_")


@api_command("uuid_setvar")
async def _api_uuid_setvar(server: EslServer, args: str) -> str:
    argv = args.split(" ", 2)
    if len(argv) < 2:
        return "-USAGE: <uuid> <var> [value]\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR No such channel!\n"
    if len(argv) > 2:
        channel.variables[argv[1]] = argv[2]
    else:
        channel.variables.pop(argv[1], None)
    return "+OK\n"


@api_command("uuid_audio_fork")
async def _api_uuid_audio_fork(server: EslServer, args: str) -> str:
    """mod_audio_fork's API, argument quirks and crash included (docs/design.md)."""
    argv = fs_split(args)
    if len(argv) < 2 or (argv[1] == "start" and len(argv) < 4):
        return f"-USAGE: {FORK_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return FORK_FAILED
    action = argv[1].lower()
    if action == "start":
        if len(argv) < 4:  # `START` skips the usage check, then reads a missing argument
            server.crash("uuid_audio_fork start without a mix type")
            raise ServerCrashed
        if argv[3] not in FORK_MIXES:
            return ""  # the module logs "invalid mix type" and writes nothing
        if len(argv) < 5:  # measured: without 8k|16k the real FreeSWITCH segfaults
            server.crash("uuid_audio_fork start without a sample rate")
            raise ServerCrashed
        rate = {"16k": 16000, "8k": 8000}.get(argv[4]) or atoi(argv[4])
        url = argv[2]
        if not url.startswith(("ws://", "wss://")) or rate <= 0 or rate % 8000:
            return FORK_FAILED
        bugname, metadata = FORK_BUG_NAME, None
        if len(argv) > 5:
            if argv[5].startswith(("{", "[")):
                metadata = argv[5]
            else:
                bugname = argv[5]
        if len(argv) > 6 and metadata is None and argv[6].startswith(("{", "[")):
            metadata = argv[6]
        if metadata is not None and len(metadata.encode()) > FORK_MAX_METADATA:
            return FORK_FAILED
        started = server.start_fork(
            channel, url, mix=argv[3], rate=rate, bugname=bugname, metadata=metadata
        )
        return FORK_OK if started else FORK_FAILED  # before the websocket connects
    rest = argv[2:]
    if action == "stop":
        if len(rest) == 1 and rest[0].startswith(("{", "[")):
            bugname, text = FORK_BUG_NAME, rest[0]
        else:
            bugname = rest[0] if rest else FORK_BUG_NAME
            text = rest[1] if len(rest) > 1 else None
        return FORK_OK if await server.stop_fork(channel, bugname, text) else FORK_FAILED
    if action == "send_text":
        if not rest:
            return ""
        bugname, text = (rest[0], rest[1]) if len(rest) > 1 else (FORK_BUG_NAME, rest[0])
        return FORK_OK if await server.send_fork_text(channel, bugname, text) else FORK_FAILED
    if action in ("pause", "resume", "graceful-shutdown"):
        fork = channel.forks.get(rest[0] if rest else FORK_BUG_NAME)
        if fork is None or not fork.active:
            return FORK_FAILED
        if action == "graceful-shutdown":
            if fork.sender is not None:
                fork.sender.cancel()
            if fork.client is not None and fork.state == "connected":
                with contextlib.suppress(ConnectionClosed):
                    await fork.client.end_audio()  # zero-length binary frame: no more audio
        else:
            fork.paused = action == "pause"
        return FORK_OK
    return FORK_FAILED


@api_command("uuid_break")
async def _api_uuid_break(server: EslServer, args: str) -> str:
    uuid, _, flag = args.strip().partition(" ")
    if not uuid:
        return f"-USAGE: {BREAK_SYNTAX}\n"
    channel = server.live_channel(uuid)
    if channel is None:
        return NO_SUCH_CHANNEL
    server.break_playback(channel, flush="all" in flag)
    return ""  # mod_commands writes nothing on success: the ESL reply is "-ERR no reply"


@api_command("uuid_broadcast")
async def _api_uuid_broadcast(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if len(argv) < 2:
        return f"-USAGE: {BROADCAST_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is not None:
        server.broadcast(channel, argv[1], argv[2] if len(argv) > 2 else "aleg")
    return "+OK Message Sent\n"  # even for a uuid that matches nothing, like FreeSWITCH


@api_command("uuid_transfer")
async def _api_uuid_transfer(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if not 2 <= len(argv) <= 5:
        return f"-USAGE: {TRANSFER_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return NO_SUCH_CHANNEL
    rest = argv[1:]
    if rest[0].startswith("-"):  # -bleg | -both: this emulator's calls have no B leg
        rest = rest[1:]
    if not rest:
        return f"-USAGE: {TRANSFER_SYNTAX}\n"
    dialplan = rest[1] if len(rest) > 1 else "XML"
    context = rest[2] if len(rest) > 2 else "default"
    server.transfer(channel, rest[0], dialplan, context)
    return "+OK\n"


@api_command("uuid_send_dtmf")
async def _api_uuid_send_dtmf(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if len(argv) < 2:
        return f"-USAGE: {SEND_DTMF_SYNTAX}\n"
    channel = server.live_channel(argv[0])
    if channel is None:
        return "-ERR Cannot locate session!\n"
    channel.dtmf_sent.append(argv[1])
    return ""  # nothing on success, like uuid_break: the ESL reply is "-ERR no reply"


@api_command("originate")
async def _api_originate(server: EslServer, args: str) -> str:
    argv = fs_split(args)
    if not 2 <= len(argv) <= 7:
        return f"-USAGE: {ORIGINATE_SYNTAX}\n"
    # [dialplan] [context] [cid_name] [cid_num] [timeout]; `undef` skips one.
    extra: list[str | None] = [None if a.lower() == "undef" else a for a in argv[2:]]
    extra += [None] * (5 - len(extra))
    return await server.originate(argv[0], argv[1], cid_name=extra[2], cid_num=extra[3])
