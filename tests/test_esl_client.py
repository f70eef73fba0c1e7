"""EslClient (greenswitch in its own gevent thread) and the typed commands, against the ESL
emulator on real sockets: replies, events, injection, drops, reconnects, timeouts."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import free_port
from voiceai.sim.freeswitch import EslServer, fs_split
from voiceai.telephony import commands
from voiceai.telephony.commands import CommandError, encode_metadata
from voiceai.telephony.esl import LOST, EslClient, EslEvent, EslNotConnected, EslTimeout
from voiceai.telephony.fork import SUBPROTOCOL

PASSWORD = "ClueCon"
WAIT = 5.0
EVENTS = ("CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE", "PLAYBACK_START", "PLAYBACK_STOP")
CUSTOM = ("mod_audio_fork::connect", "mod_audio_fork::connect_failed")


# --- helpers -----------------------------------------------------------------------------


class Inbox:
    """An event handler that keeps everything it is given, in order."""

    def __init__(self) -> None:
        self.events: list[EslEvent] = []
        self._queue: asyncio.Queue[EslEvent] = asyncio.Queue()

    async def handler(self, event: EslEvent) -> None:
        self.events.append(event)
        self._queue.put_nowait(event)

    async def next(self, name: str, uuid: str | None = None) -> EslEvent:
        """The next event called `name` (Event-Name or subclass), skipping others."""
        deadline = time.monotonic() + WAIT
        while True:
            remaining = deadline - time.monotonic()
            event = await asyncio.wait_for(self._queue.get(), max(remaining, 0.01))
            if name in (event.name, event.subclass) and (uuid is None or event.uuid == uuid):
                return event

    async def nothing_more(self, within: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            event = await asyncio.wait_for(self._queue.get(), within)
            pytest.fail(f"unexpected event {event.name} {event.subclass} {event.uuid}")


@asynccontextmanager
async def emulator(port: int = 0) -> AsyncIterator[EslServer]:
    server = EslServer(PASSWORD, port=port)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def esl_client(
    port: int,
    password: str = PASSWORD,
    *,
    inbox: Inbox | None = None,
    states: list[str] | None = None,
    **options: Any,
) -> AsyncIterator[EslClient]:
    """A started client; handlers are registered before start() so nothing is missed."""
    options.setdefault("reconnect_max_s", 0.5)
    options.setdefault("heartbeat_s", 30.0)  # no `api status` in `server.commands` by surprise
    client = EslClient("127.0.0.1", port, password, events=EVENTS, custom=CUSTOM, **options)
    if inbox is not None:
        client.on_event(inbox.handler)
    if states is not None:
        client.on_state(states.append)
    try:
        await client.start()
        yield client
    finally:
        started = time.monotonic()
        await client.stop()
        assert time.monotonic() - started < 3.0, "stop() must never hang"
        assert not [t for t in threading.enumerate() if t.name == "esl-gevent"]


async def until(predicate: Callable[[], bool], timeout_s: float = WAIT) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def held_handler(release: asyncio.Event, reply: str = "+OK late reply\n") -> Any:
    """An api command that answers only once `release` is set (a slow FreeSWITCH command)."""

    async def handler(server: EslServer, args: str) -> str:
        await release.wait()
        return reply

    return handler


@dataclass
class ForkEndpoint:
    """A tiny mod_audio_fork websocket endpoint: records the text frames it gets."""

    texts: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    subprotocol: str | None = None
    port: int = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.subprotocol = ws.subprotocol
        self.connected.set()
        try:
            async for message in ws:
                if isinstance(message, str):
                    self.texts.append(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.closed.set()


@asynccontextmanager
async def fork_endpoint() -> AsyncIterator[ForkEndpoint]:
    endpoint = ForkEndpoint()
    async with serve(endpoint.handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
        endpoint.port = next(iter(server.sockets)).getsockname()[1]
        yield endpoint


def broken_handler(event: EslEvent) -> None:
    raise RuntimeError("a buggy handler")


# --- requests ----------------------------------------------------------------------------


def test_api_returns_the_body_as_freeswitch_wrote_it() -> None:
    async def scenario() -> None:
        async with emulator() as server, esl_client(server.port) as client:
            assert await client.wait_connected(WAIT)
            assert client.state == "connected" and client.last_error is None
            status = await client.api("status")
            assert status.startswith("UP ") and "is ready" in status
            # An unknown command is FreeSWITCH's answer, not a transport error.
            assert (await client.api("foo bar")).startswith("-ERR foo Command not found")
            assert await client.api("hostname") == server.hostname
            with pytest.raises(ValueError, match="single line"):
                await client.api("status\n\napi uuid_kill everything")
            assert server.commands == ["status", "foo bar", "hostname"]
        with pytest.raises(EslNotConnected):  # after stop(): at once, never hangs
            await client.api("status")

    asyncio.run(scenario())


def test_wrong_password_is_reported_once_and_retried_without_leaking_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "Wr0ng-Secret-42"
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        async with emulator() as server:
            async with esl_client(server.port, secret, reconnect_max_s=0.1) as client:
                assert not await client.wait_connected(1.0)
                assert client.state == "disconnected"
                assert client.last_error is not None
                assert "rejected the event socket password" in client.last_error
                assert secret not in client.last_error
                started = time.monotonic()
                with pytest.raises(EslNotConnected) as caught:
                    await client.api("status")
                assert time.monotonic() - started < 0.1  # at once, not after a timeout
                assert "password" in str(caught.value) and secret not in str(caught.value)
            assert server.commands == []

    asyncio.run(scenario())
    esl_records = [r for r in caplog.records if r.name == "voiceai.telephony.esl"]
    retries = [r for r in esl_records if "still failing" in r.getMessage()]
    errors = [r for r in esl_records if r.levelno >= logging.ERROR]
    assert retries, "the client must keep retrying"
    assert len(errors) == 1 and "password" in errors[0].getMessage()
    assert all(secret not in r.getMessage() for r in caplog.records)


def test_start_never_fails_when_freeswitch_is_down_and_connects_once_it_is_up() -> None:
    async def scenario() -> None:
        port = free_port()
        states: list[str] = []
        async with esl_client(port, states=states) as client:
            await until(lambda: client.last_error is not None)
            assert client.state == "disconnected"
            assert f"cannot reach FreeSWITCH at 127.0.0.1:{port}" in (client.last_error or "")
            started = time.monotonic()
            with pytest.raises(EslNotConnected, match="not connected"):
                await client.api("status")
            assert time.monotonic() - started < 0.1
            async with emulator(port) as server:
                assert await client.wait_connected(WAIT)
                assert client.last_error is None
                assert "is ready" in await client.api("status")
                assert server.commands == ["status"]
        assert states == ["connecting", "disconnected", "connected", "disconnected"]

    asyncio.run(scenario())


def test_a_server_that_never_greets_is_an_error_and_stop_still_returns_at_once() -> None:
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # accepts TCP, never sends auth/request (a wedged FreeSWITCH)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            async with esl_client(port, connect_timeout_s=0.3) as client:
                await until(lambda: client.last_error is not None)
                assert "sent no auth request" in (client.last_error or "")
                assert client.state == "disconnected"
            async with esl_client(port, connect_timeout_s=30.0) as client:
                await asyncio.sleep(0.2)  # now inside the 30 s wait for the greeting
                assert client.state == "connecting"
            # esl_client() asserts that stop() returned in well under 30 s

    asyncio.run(scenario())


def test_a_timed_out_request_does_not_shift_the_replies_that_follow() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        async with emulator() as server, esl_client(server.port) as client:
            server.api_handlers["slow"] = held_handler(release)
            assert await client.wait_connected(WAIT)
            started = time.monotonic()
            with pytest.raises(EslTimeout, match=r"did not answer `api slow` within 0\.2 s"):
                await client.api("slow", timeout_s=0.2)
            assert time.monotonic() - started < 1.0
            # FreeSWITCH answers in order: `status` waits behind `slow`, whose late reply
            # must be thrown away rather than handed to `status`.
            status = asyncio.create_task(client.api("status"))
            await asyncio.sleep(0.2)
            release.set()
            body = await status
            assert "is ready" in body and "late reply" not in body
            assert await client.api("hostname") == server.hostname
            assert client.connected

    asyncio.run(scenario())


def test_a_stalled_connection_is_dropped_and_reconnected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        states: list[str] = []
        async with (
            emulator() as server,
            esl_client(server.port, states=states, stall_s=0.5) as client,
        ):
            server.api_handlers["hang"] = held_handler(release)
            assert await client.wait_connected(WAIT)
            with pytest.raises(EslTimeout):
                await client.api("hang", timeout_s=0.3)
            with pytest.raises(EslTimeout):  # `hang` has now waited > stall_s: give up on it
                await client.api("status", timeout_s=0.4)
            await until(lambda: states[-2:] == ["disconnected", "connected"])
            assert "is ready" in await client.api("status")
            release.set()

    asyncio.run(scenario())
    assert any("has not answered `api hang`" in r.getMessage() for r in caplog.records)


def test_a_crash_fails_the_request_in_flight_at_once_and_the_client_reconnects() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        states: list[str] = []
        inbox = Inbox()
        first = EslServer(PASSWORD)
        await first.start()
        port = first.port
        async with esl_client(port, inbox=inbox, states=states) as client:
            assert await client.wait_connected(WAIT)
            first.api_handlers["slow"] = held_handler(release)
            pending = asyncio.create_task(client.api("slow", timeout_s=8.0))
            await until(lambda: "slow" in first.commands)
            crashed_at = time.monotonic()
            first.crash()
            with pytest.raises(EslNotConnected) as caught:
                await pending
            assert time.monotonic() - crashed_at < 1.0  # not after the 8 s timeout
            assert str(caught.value) == LOST
            await until(lambda: client.state == "disconnected")
            with pytest.raises(EslNotConnected):
                await client.api("status")
            await asyncio.sleep(0.6)  # a few reconnect attempts against the dead port
            release.set()
            await first.stop()

            async with emulator(port) as second:
                assert await client.wait_connected(WAIT)
                channel = second.add_channel()
                await second.answer(channel.uuid)  # events flow: the client resubscribed
                event = await inbox.next("CHANNEL_ANSWER")
                assert event.uuid == channel.uuid
                assert "is ready" in await client.api("status")

                # A graceful shutdown (disconnect-notice) fails what is in flight too.
                release = asyncio.Event()
                second.api_handlers["slow"] = held_handler(release)
                pending = asyncio.create_task(client.api("slow", timeout_s=8.0))
                await until(lambda: "slow" in second.commands)
                stopping = asyncio.create_task(second.stop())
                stopped_at = time.monotonic()
                with pytest.raises(EslNotConnected):
                    await pending
                assert time.monotonic() - stopped_at < 1.0
                release.set()
                await stopping
                await until(lambda: client.state == "disconnected")
        assert states == ["connecting", "connected", "disconnected", "connected", "disconnected"]

    asyncio.run(scenario())


# --- events ------------------------------------------------------------------------------


def test_events_arrive_as_parsed_json_with_subclasses_for_custom_events() -> None:
    async def scenario() -> None:
        inbox = Inbox()
        seen_sync: list[str] = []
        async with emulator() as server, esl_client(server.port, inbox=inbox) as client:
            client.on_event(lambda event: seen_sync.append(event.name))  # plain functions too
            client.on_event(broken_handler)  # must not stop the other handlers
            assert await client.wait_connected(WAIT)
            channel = server.add_channel(caller_id_number="+15551234")  # CREATE: not asked
            await server.answer(channel.uuid)
            event = await inbox.next("CHANNEL_ANSWER")
            assert event.name == "CHANNEL_ANSWER" and event.subclass is None
            assert event.uuid == channel.uuid
            assert event.headers["Caller-Caller-ID-Number"] == "+15551234"
            assert event.body is None

            server.emit_channel(channel, "CUSTOM", subclass="mod_audio_fork::error")  # not asked
            server.emit_channel(
                channel, "CUSTOM", body='{"a":1}', subclass="mod_audio_fork::connect"
            )
            event = await inbox.next("CUSTOM")
            assert event.subclass == "mod_audio_fork::connect"
            assert event.uuid == channel.uuid
            assert json.loads(event.body or "") == {"a": 1}
            await inbox.nothing_more()
            assert [e.name for e in inbox.events] == ["CHANNEL_ANSWER", "CUSTOM"]
            assert seen_sync == ["CHANNEL_ANSWER", "CUSTOM"]

    asyncio.run(scenario())


def test_regression_a_caller_id_name_cannot_forge_another_calls_uuid() -> None:
    async def scenario() -> None:
        inbox = Inbox()
        by_uuid: dict[str | None, list[EslEvent]] = defaultdict(list)
        async with emulator() as server, esl_client(server.port, inbox=inbox) as client:
            client.on_event(lambda event: by_uuid[event.uuid].append(event))
            assert await client.wait_connected(WAIT)
            victim = server.add_channel(caller_id_name="Victim")
            forged = victim.uuid
            names = [
                f"x%0AUnique-ID: {forged}",  # greenswitch URL-decodes before splitting
                f"x%0A%0AUnique-ID%3A%20{forged}",
                f"x\nUnique-ID: {forged}",
                f"x\r\nUnique-ID: {forged}\r\n\r\n",
                f'x","Unique-ID":"{forged}',  # a JSON-shaped attempt
            ]
            for name in names:
                attacker = server.add_channel(caller_id_name=name)
                await server.answer(attacker.uuid)
                await server.hangup(attacker.uuid, "NORMAL_CLEARING")
                for kind in ("CHANNEL_ANSWER", "CHANNEL_HANGUP_COMPLETE"):
                    event = await inbox.next(kind)
                    assert event.uuid == attacker.uuid
                    assert event.headers["Caller-Caller-ID-Name"] == name
            assert by_uuid[forged] == []
            await server.answer(victim.uuid)  # the victim's own event still routes to it
            await inbox.next("CHANNEL_ANSWER", uuid=forged)
            assert [e.name for e in by_uuid[forged]] == ["CHANNEL_ANSWER"]

    asyncio.run(scenario())


# --- commands ----------------------------------------------------------------------------


def test_play_sends_an_event_locked_playback_sendmsg() -> None:
    async def scenario() -> None:
        async with emulator() as server, esl_client(server.port) as client:
            assert await client.wait_connected(WAIT)
            channel = server.add_channel()
            app_uuid = await commands.play(client, channel.uuid, "/media/call 1/s1.wav")
            assert channel.messages == [
                {
                    "call-command": "execute",
                    "execute-app-name": "playback",
                    "execute-app-arg": "/media/call 1/s1.wav",
                    "event-lock": "true",
                    "Event-UUID": app_uuid,
                }
            ]
            with pytest.raises(CommandError) as caught:
                await commands.play(client, "0000-gone", "/media/x.wav")
            assert caught.value.command == "play"
            assert caught.value.reply == "-ERR invalid session id [0000-gone]"
            with pytest.raises(ValueError):
                await commands.play(client, channel.uuid, "/a.wav\nexecute-app-name: hangup")
            assert len(channel.messages) == 1

    asyncio.run(scenario())


def test_call_control_commands_send_the_documented_command_lines() -> None:
    async def scenario() -> None:
        async with emulator() as server, esl_client(server.port) as client:
            assert await client.wait_connected(WAIT)
            channel = server.add_channel()
            uuid = channel.uuid

            # uuid_break and uuid_send_dtmf print nothing on success: "-ERR no reply".
            await commands.break_playback(client, uuid)
            assert server.commands[-1] == f"uuid_break {uuid} all"
            assert channel.flushes == 1
            await commands.send_dtmf(client, uuid, "12#*a")
            assert server.commands[-1] == f"uuid_send_dtmf {uuid} 12#*A"
            assert channel.dtmf_sent == ["12#*A"]
            await commands.transfer(client, uuid, "+15551234567")
            assert server.commands[-1] == (
                f"uuid_transfer {uuid} bridge:sofia/gateway/ringcentral/+15551234567 inline"
            )
            assert channel.transferred
            assert channel.transfer_target == "sofia/gateway/ringcentral/+15551234567"
            await commands.transfer(client, uuid, "101", gateway="office")
            assert server.commands[-1] == (
                f"uuid_transfer {uuid} bridge:sofia/gateway/office/101 inline"
            )

            await commands.hangup(client, uuid, "user_busy")
            assert server.commands[-1] == f"uuid_kill {uuid} USER_BUSY"
            assert channel.hung_up and channel.hangup_cause == "USER_BUSY"
            with pytest.raises(CommandError, match=r"hangup failed: -ERR No such channel!"):
                await commands.hangup(client, uuid)
            for call in (
                commands.break_playback(client, uuid),
                commands.send_dtmf(client, uuid, "1"),
                commands.transfer(client, uuid, "101"),
            ):
                with pytest.raises(CommandError) as caught:
                    await call
                assert caught.value.reply.startswith("-ERR ")
                assert caught.value.reply != "-ERR no reply"

    asyncio.run(scenario())


def test_injection_attempts_are_refused_before_anything_is_sent() -> None:
    async def scenario() -> None:
        async with emulator() as server, esl_client(server.port) as client:
            assert await client.wait_connected(WAIT)
            channel = server.add_channel()
            uuid = channel.uuid
            bad_numbers = [
                "+1555 1234", "1555'1234", '1555"1', "1555\n1234", "1555\r\napi x", "1555,1",
                "1555}x", "", "++1", "1;2", "101 inline", "sofia/gateway/x/1", "１２３",
            ]  # fmt: skip
            for number in bad_numbers:
                with pytest.raises(ValueError):
                    await commands.transfer(client, uuid, number)
                with pytest.raises(ValueError):
                    await commands.originate(client, number)
            for digits in ["1 2", "1'", "E", "1\n2", "", "1,2"]:
                with pytest.raises(ValueError):
                    await commands.send_dtmf(client, uuid, digits)
            for bad_uuid in ["abc def", f"{uuid}\napi uuid_kill x", f"{uuid} all", "'x'"]:
                with pytest.raises(ValueError):
                    await commands.hangup(client, bad_uuid)
                with pytest.raises(ValueError):
                    await commands.play(client, bad_uuid, "/a.wav")
            with pytest.raises(ValueError):
                await commands.transfer(client, uuid, "101", gateway="ring central")
            with pytest.raises(ValueError):
                await commands.hangup(client, uuid, "NORMAL CLEARING")
            for variables in (
                {"x": "a b"},
                {"x": "a,b"},
                {"x": "a}b"},
                {"x": "it's"},
                {"a b": "1"},
            ):
                with pytest.raises(ValueError):
                    await commands.originate(client, "101", variables=variables)
            url = "ws://127.0.0.1:1/fork"
            for args in [
                (f"{url} x", 8000, "voiceai"),
                (f"{url}'", 8000, "voiceai"),
                ("http://127.0.0.1/fork", 8000, "voiceai"),
                (url, 44100, "voiceai"),
                (url, 16000, "voice ai"),
                (url, 16000, "{json}"),
            ]:
                with pytest.raises(ValueError):
                    await commands.start_fork(client, uuid, args[0], args[1], bugname=args[2])
            with pytest.raises(ValueError):
                await commands.stop_fork(client, uuid, text="two words")
            assert server.commands == []
            assert channel.messages == []
            assert not channel.hung_up

    asyncio.run(scenario())


def test_originate_runs_in_the_background_and_returns_the_new_uuid() -> None:
    async def scenario() -> None:
        async with emulator() as server, esl_client(server.port) as client:
            server.originate_answer_delay = 1.0  # it rings for a second
            server.busy_numbers = {"+15550000"}
            assert await client.wait_connected(WAIT)
            started = time.monotonic()
            call = asyncio.create_task(
                commands.originate(client, "+15557654321", variables={"voiceai_call": "abc-1"})
            )
            await until(lambda: any(c.startswith("originate") for c in server.commands))
            # While it rings, the socket stays free for the other calls' commands.
            assert "is ready" in await client.api("status", timeout_s=0.5)
            assert not call.done()
            uuid = await call
            assert time.monotonic() - started >= 0.9
            assert server.commands[0] == (
                f"originate {{origination_uuid={uuid},voiceai_call=abc-1}}"
                "sofia/gateway/ringcentral/+15557654321 &park()"
            )
            channel = server.channels[uuid]
            assert channel.answered and channel.variables["voiceai_call"] == "abc-1"

            with pytest.raises(CommandError) as caught:
                await commands.originate(client, "+15550000")
            assert caught.value.command == "originate"
            assert caught.value.reply == "-ERR USER_BUSY"

    asyncio.run(scenario())


def test_start_fork_passes_rate_bugname_and_metadata_that_survives_splitting() -> None:
    async def scenario() -> None:
        inbox = Inbox()
        metadata = {
            "callId": "call-1",
            "caller": "Ann O'Neil Smith",
            "note": 'she said "hi"\\ then\n\tleft \\n',
            "ru": "Анна Иванова",
            "n": 3,
            "tags": ["a b", "c'd", None, True],
        }
        async with (
            fork_endpoint() as endpoint,
            emulator() as server,
            esl_client(server.port, inbox=inbox) as client,
        ):
            assert await client.wait_connected(WAIT)
            channel = server.add_channel()
            url = f"ws://127.0.0.1:{endpoint.port}/fork/call-1?tenant=a"
            await commands.start_fork(client, channel.uuid, url, 16000, metadata=metadata)
            line = server.commands[-1]
            assert line.startswith(
                f"uuid_audio_fork {channel.uuid} start {url} mono 16k voiceai {{"
            )
            event = await inbox.next("mod_audio_fork::connect")
            assert event.name == "CUSTOM" and event.uuid == channel.uuid
            await asyncio.wait_for(endpoint.connected.wait(), WAIT)
            assert endpoint.subprotocol == SUBPROTOCOL
            fork = channel.forks["voiceai"]
            assert (fork.rate, fork.mix, fork.bugname) == (16000, "mono", "voiceai")
            await until(lambda: bool(endpoint.texts))
            assert json.loads(endpoint.texts[0]) == metadata  # the first frame, round-tripped

            await commands.stop_fork(client, channel.uuid, text={"type": "bye", "why": "it's over"})
            await asyncio.wait_for(endpoint.closed.wait(), WAIT)
            assert endpoint.close_code == 1000
            assert json.loads(endpoint.texts[-1]) == {"type": "bye", "why": "it's over"}
            with pytest.raises(CommandError, match="stop_fork failed: -ERR"):
                await commands.stop_fork(client, channel.uuid)  # nothing left to stop
            assert not server.crashed

    asyncio.run(scenario())


def test_fork_metadata_is_one_argument_for_freeswitchs_splitter() -> None:
    samples: list[Any] = [
        {"caller": "Ann O'Neil Smith"},
        {"q": "'quoted' \"double\" back\\slash \\n \\s \\' tab\there"},
        {"nested": {"a b": ["x y", "z'"]}, "ctrl": "\x00\x1f\u2028"},
        [1, "two words", {"k": "v"}],
    ]
    for metadata in samples:
        encoded = encode_metadata(metadata)
        assert " " not in encoded and "'" not in encoded
        assert fs_split(f"uuid start ws://h/ mono 16k voiceai {encoded}")[-1] == encoded
        assert json.loads(encoded) == metadata
    with pytest.raises(ValueError):
        encode_metadata({"big": "x" * 9000})
