"""The FreeSWITCH event socket emulator speaks the real wire protocol, quirks included."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import gevent.event
import greenswitch
import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.conftest import free_port
from voiceai.sim.freeswitch import DISCONNECT_MESSAGE, EslServer, fs_split, fs_url_encode
from voiceai.telephony.fork import SUBPROTOCOL

PASSWORD = "ClueCon"
WAIT = 5.0
T = TypeVar("T")


# --- helpers -----------------------------------------------------------------------------


@dataclass
class Message:
    headers: dict[str, str]
    body: str = ""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    @property
    def reply_text(self) -> str:
        return self.headers.get("Reply-Text", "")

    def json(self) -> dict[str, str]:
        return json.loads(self.body)


class RawClient:
    """A bare ESL client on asyncio streams; sorts what arrives into replies/events/notices."""

    instances: ClassVar[list[RawClient]] = []  # closed by close_all() at the end of a test

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        RawClient.instances.append(self)
        self.reader = reader
        self.writer = writer
        self.replies: asyncio.Queue[Message] = asyncio.Queue()
        self.events: asyncio.Queue[Message] = asyncio.Queue()
        self.notices: asyncio.Queue[Message] = asyncio.Queue()
        self.eof = asyncio.Event()
        self.arrivals: list[str] = []  # content types in arrival order
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int, password: str | None = PASSWORD) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        greeting = await client.next_reply()
        assert greeting.content_type == "auth/request"
        if password is not None:
            assert (await client.send(f"auth {password}")).reply_text == "+OK accepted"
        return client

    async def _read(self) -> None:
        try:
            while True:
                headers: dict[str, str] = {}
                while True:
                    line = await self.reader.readline()
                    if not line:
                        return
                    text = line.decode().rstrip("\n")
                    if not text:
                        if headers:
                            break
                        continue
                    name, _, value = text.partition(": ")
                    headers[name] = value
                length = int(headers.get("Content-Length", "0"))
                body = (await self.reader.readexactly(length)).decode() if length else ""
                message = Message(headers, body)
                self.arrivals.append(message.content_type)
                if message.content_type.startswith("text/event-"):
                    self.events.put_nowait(message)
                elif message.content_type == "text/disconnect-notice":
                    self.notices.put_nowait(message)
                else:
                    self.replies.put_nowait(message)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.eof.set()

    async def next_reply(self) -> Message:
        return await asyncio.wait_for(self.replies.get(), WAIT)

    async def send(self, command: str) -> Message:
        self.writer.write(f"{command}\n\n".encode())
        return await self.next_reply()

    async def api(self, command: str) -> str:
        reply = await self.send(f"api {command}")
        assert reply.content_type == "api/response"
        return reply.body

    async def next_event(self) -> dict[str, str]:
        message = await asyncio.wait_for(self.events.get(), WAIT)
        assert message.content_type == "text/event-json"
        return message.json()

    async def event_named(self, name: str) -> dict[str, str]:
        """The next event with this Event-Name (or Event-Subclass), skipping others."""
        while True:
            event = await self.next_event()
            if name in (event.get("Event-Name"), event.get("Event-Subclass")):
                return event

    async def assert_no_event(self, within: float = 0.3) -> None:
        with pytest.raises(TimeoutError):
            message = await asyncio.wait_for(self.events.get(), within)
            pytest.fail(f"unexpected event: {message.headers} {message.body[:200]}")

    async def wait_closed(self) -> None:
        await asyncio.wait_for(self.eof.wait(), WAIT)

    def close(self) -> None:
        self.writer.close()
        self._task.cancel()

    @classmethod
    def close_all(cls) -> None:
        for client in cls.instances:
            client.close()
        cls.instances.clear()


@asynccontextmanager
async def running_server(password: str = PASSWORD) -> AsyncIterator[EslServer]:
    server = EslServer(password)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        RawClient.close_all()


def tone(seconds: float, rate: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()


@dataclass
class FakeService:
    """A tiny fork endpoint: records what mod_audio_fork delivers to it."""

    want_bytes: int = 1
    close_after_bytes: int | None = None  # the service hangs up first after this much audio
    greeting: str | None = None  # a text frame the service sends once connected
    subprotocol: str | None = None
    path: str | None = None
    authorization: str | None = None
    texts: list[str] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    frame_sizes: set[int] = field(default_factory=set)
    close_code: int | None = None
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    def url(self, path: str = "/fork/call-1?tenant=a") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    async def handler(self, ws: ServerConnection) -> None:
        self.subprotocol = ws.subprotocol
        self.path = ws.request.path if ws.request else None
        self.authorization = ws.request.headers.get("Authorization") if ws.request else None
        self.connected.set()
        try:
            if self.greeting is not None:
                await ws.send(self.greeting)
            async for message in ws:
                if isinstance(message, str):
                    self.texts.append(message)
                    continue
                self.audio += message
                self.frame_sizes.add(len(message))
                if len(self.audio) >= self.want_bytes:
                    self.enough.set()
                if self.close_after_bytes is not None and len(self.audio) >= self.close_after_bytes:
                    await ws.close(1000)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = ws.close_code
            self.closed.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeService]:
        async with serve(self.handler, "127.0.0.1", 0, subprotocols=[SUBPROTOCOL]) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            yield self


class LoopThread:
    """An asyncio loop in a thread, so gevent-based greenswitch can own the test thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="esl-emu", daemon=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def call(self, fn: Callable[[], T]) -> T:
        async def on_loop() -> T:
            return fn()

        return self.run(on_loop())


@pytest.fixture
def threaded_server() -> Iterator[tuple[LoopThread, EslServer]]:
    loop_thread = LoopThread()
    loop_thread.thread.start()
    server = EslServer(PASSWORD)
    try:
        loop_thread.run(server.start())
        yield loop_thread, server
    finally:
        loop_thread.run(server.stop())
        loop_thread.loop.call_soon_threadsafe(loop_thread.loop.stop)
        loop_thread.thread.join(WAIT)
        loop_thread.loop.close()


# --- greenswitch, the real client --------------------------------------------------------


def test_greenswitch_authenticates_runs_api_and_parses_plain_events(
    threaded_server: tuple[LoopThread, EslServer],
) -> None:
    loop_thread, server = threaded_server
    channel = loop_thread.call(lambda: server.add_channel(caller_id_name="Ann Lee: VIP"))
    esl = greenswitch.InboundESL(host="127.0.0.1", port=server.port, password=PASSWORD)
    esl.connect()
    try:
        status = esl.send("api status")
        assert status.headers["Content-Type"] == "api/response"
        assert status.data.startswith("UP ")
        assert "is ready" in status.data
        assert "1 session(s) since startup" in status.data
        assert esl.send(f"api uuid_exists {channel.uuid}").data == "true"

        # greenswitch's own parser reads our text/event-plain (URL-encoded values).
        answered: gevent.event.AsyncResult = gevent.event.AsyncResult()
        esl.register_handle("CHANNEL_ANSWER", answered.set)
        assert esl.send("event plain CHANNEL_ANSWER").data == "+OK event listener enabled plain"
        loop_thread.run(server.answer(channel.uuid))
        event = answered.get(timeout=WAIT)
        assert event.headers["Unique-ID"] == channel.uuid
        assert event.headers["Caller-Caller-ID-Name"] == "Ann Lee: VIP"
    finally:
        esl.stop()
    assert server.commands == ["status", f"uuid_exists {channel.uuid}"]


def test_greenswitch_rejects_a_wrong_password(
    threaded_server: tuple[LoopThread, EslServer],
) -> None:
    _, server = threaded_server
    esl = greenswitch.InboundESL(host="127.0.0.1", port=server.port, password="wrong")
    disconnected: gevent.event.AsyncResult = gevent.event.AsyncResult()
    esl.register_handle("DISCONNECT", disconnected.set)
    try:
        with pytest.raises(ValueError, match="Invalid password"):
            esl.connect()
        notice = disconnected.get(timeout=WAIT)  # greenswitch saw our text/disconnect-notice
        assert notice.headers["Content-Type"] == "text/disconnect-notice"
        assert not esl.connected
    finally:
        esl.stop()  # after the notice: no `exit` left waiting for a reply that never comes


# --- the wire protocol -------------------------------------------------------------------


def test_wrong_password_gets_err_invalid_then_disconnect_notice_and_eof() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            client = await RawClient.connect(server.port, password=None)
            assert (await client.send("auth nope")).reply_text == "-ERR invalid"
            notice = await asyncio.wait_for(client.notices.get(), WAIT)
            assert notice.body == DISCONNECT_MESSAGE
            assert notice.headers["Content-Length"] == str(len(DISCONNECT_MESSAGE))
            await client.wait_closed()

    asyncio.run(scenario())


def test_commands_before_auth_are_refused_but_the_socket_stays_open() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            client = await RawClient.connect(server.port, password=None)
            assert (await client.send("api status")).reply_text == "-ERR command not found"
            assert server.commands == []  # nothing ran
            assert (await client.send(f"auth {PASSWORD}")).reply_text == "+OK accepted"
            assert "is ready" in await client.api("status")
            exit_reply = await client.send("exit")
            assert exit_reply.reply_text == "+OK bye"
            notice = await asyncio.wait_for(client.notices.get(), WAIT)
            assert notice.body == DISCONNECT_MESSAGE
            await client.wait_closed()

    asyncio.run(scenario())


def test_event_json_delivers_subscribed_events_only() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            client = await RawClient.connect(server.port)
            reply = await client.send("event json CHANNEL_ANSWER CUSTOM mod_audio_fork::connect")
            assert reply.reply_text == "+OK event listener enabled json"
            channel = server.add_channel(caller_id_number="+15551234")  # CHANNEL_CREATE: no
            await server.answer(channel.uuid)
            event = await client.next_event()
            assert event["Event-Name"] == "CHANNEL_ANSWER"
            assert event["Unique-ID"] == channel.uuid
            assert event["Caller-Caller-ID-Number"] == "+15551234"
            assert event["Core-UUID"] == server.core_uuid
            assert int(event["Event-Date-Timestamp"]) > 0
            assert "_body" not in event

            # Every word after CUSTOM is a subclass; other subclasses stay out.
            server.emit("CUSTOM", {"Unique-ID": channel.uuid}, subclass="mod_audio_fork::error")
            server.emit("CUSTOM", {"Unique-ID": channel.uuid}, "{}", "mod_audio_fork::connect")
            event = await client.next_event()
            assert event["Event-Subclass"] == "mod_audio_fork::connect"
            assert event["_body"] == "{}"

            assert await server.hangup(channel.uuid, "USER_BUSY")  # HANGUP_COMPLETE: not asked
            await client.assert_no_event()
            assert server.events[-2].name == "CHANNEL_HANGUP_COMPLETE"
            assert server.events[-2].header("Hangup-Cause") == "USER_BUSY"

    asyncio.run(scenario())


def test_event_plain_is_url_encoded_and_all_means_everything() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            client = await RawClient.connect(server.port)
            reply = await client.send("event plain ALL")
            assert reply.reply_text == "+OK event listener enabled plain"
            server.add_channel(caller_id_name="x\nUnique-ID: forged")
            message = await asyncio.wait_for(client.events.get(), WAIT)
            assert message.content_type == "text/event-plain"
            assert "Event-Name: CHANNEL_CREATE\n" in message.body
            assert "Caller-Caller-ID-Name: x%0AUnique-ID%3A%20forged\n" in message.body
            assert message.body.endswith("\n\n")
            server.emit("CUSTOM", {"A": "b"}, body="hello", subclass="test::one")
            message = await asyncio.wait_for(client.events.get(), WAIT)
            assert message.body.endswith("Content-Length: 5\n\nhello")
            reply = await client.send("noevents")
            assert reply.reply_text == "+OK no longer listening for events"
            server.emit("HEARTBEAT")
            await client.assert_no_event()

    asyncio.run(scenario())


def test_unknown_api_command_and_bgapi_background_job() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            client = await RawClient.connect(server.port)
            assert (await client.api("foo bar")).startswith("-ERR foo Command not found")
            assert await client.api("hostname") == server.hostname
            assert (await client.send("bogus")).reply_text == "-ERR command not found"

            await client.send("event json BACKGROUND_JOB")
            reply = await client.send("bgapi uuid_kill 00000000-dead")
            job = reply.headers["Job-UUID"]
            assert reply.reply_text == f"+OK Job-UUID: {job}"
            event = await client.next_event()
            assert event["Event-Name"] == "BACKGROUND_JOB"
            assert event["Job-UUID"] == job
            assert event["Job-Command"] == "uuid_kill"
            assert event["Job-Command-Arg"] == "00000000-dead"
            assert event["_body"] == "-ERR No such channel!\n"
            assert server.commands == ["foo bar", "hostname", "uuid_kill 00000000-dead"]

    asyncio.run(scenario())


def test_api_handlers_are_an_extendable_dispatch_table() -> None:
    async def scenario() -> None:
        async with running_server() as server:

            async def uuid_break(srv: EslServer, args: str) -> str:
                return f"+OK broke {args}\n"

            server.api_handlers["uuid_break"] = uuid_break
            client = await RawClient.connect(server.port)
            assert await client.api("uuid_break abc all") == "+OK broke abc all\n"

    asyncio.run(scenario())


def test_uuid_kill_hangs_up_with_the_cause() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            client = await RawClient.connect(server.port)
            await client.send("event json CHANNEL_HANGUP_COMPLETE")
            channel = server.add_channel()
            assert await client.api("uuid_kill nope") == "-ERR No such channel!\n"
            assert await client.api(f"uuid_kill {channel.uuid} call_rejected") == "+OK\n"
            event = await client.next_event()
            assert event["Unique-ID"] == channel.uuid
            assert event["Hangup-Cause"] == "CALL_REJECTED"
            # Like FreeSWITCH, events raised by a command wait until its reply is out.
            assert client.arrivals[-2:] == ["api/response", "text/event-json"]
            assert channel.hung_up
            assert await client.api(f"uuid_exists {channel.uuid}") == "false"

    asyncio.run(scenario())


def test_sendmsg_is_recorded_and_runs_registered_apps_in_order() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            played: list[str] = []

            async def playback(srv: EslServer, channel: Any, arg: str) -> str:
                played.append(arg)
                return "FILE PLAYED"

            server.app_handlers["playback"] = playback
            client = await RawClient.connect(server.port)
            await client.send("event json CHANNEL_EXECUTE_COMPLETE")
            channel = server.add_channel()
            for name in ("one.wav", "two.wav"):
                reply = await client.send(
                    f"sendmsg {channel.uuid}\ncall-command: execute\nexecute-app-name: playback\n"
                    f"execute-app-arg: /media/{name}\nevent-lock: true"
                )
                assert reply.reply_text == "+OK"
            first, second = await client.next_event(), await client.next_event()
            assert [first["Application-Data"], second["Application-Data"]] == [
                "/media/one.wav",
                "/media/two.wav",
            ]
            assert first["Application-Response"] == "FILE PLAYED"
            assert played == ["/media/one.wav", "/media/two.wav"]
            assert channel.messages[0]["execute-app-name"] == "playback"
            assert channel.messages[1]["event-lock"] == "true"
            reply = await client.send("sendmsg nope\ncall-command: execute")
            assert reply.reply_text == "-ERR invalid session id [nope]"

    asyncio.run(scenario())


def test_filters_narrow_the_subscription() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            client = await RawClient.connect(server.port)
            await client.send("event json CHANNEL_ANSWER")
            a, b = server.add_channel(), server.add_channel()
            reply = await client.send(f"filter Unique-ID {b.uuid}")
            assert reply.reply_text == f"+OK filter added. [Unique-ID]=[{b.uuid}]"
            await server.answer(a.uuid)
            await server.answer(b.uuid)
            assert (await client.next_event())["Unique-ID"] == b.uuid
            await client.assert_no_event()

    asyncio.run(scenario())


def test_garbage_and_cut_connections_do_not_disturb_other_clients() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            good = await RawClient.connect(server.port)
            await good.send("event json CHANNEL_ANSWER")

            garbage = await RawClient.connect(server.port)
            garbage.writer.write(b"\x00\xff\xfe binary \x80 junk\n\n")
            assert (await garbage.next_reply()).reply_text == "-ERR command not found"
            garbage.writer.write(b"x" * (2 * 1024 * 1024))  # a line longer than any command
            await garbage.wait_closed()

            cut = await RawClient.connect(server.port)
            cut.writer.write(b"api stat")  # half a command, then gone
            await cut.writer.drain()
            cut.close()

            huge = await RawClient.connect(server.port)
            huge.writer.write(b"sendmsg x\nContent-Length: 99999999999\n\n")
            await huge.wait_closed()

            channel = server.add_channel()
            await server.answer(channel.uuid)
            assert (await good.next_event())["Unique-ID"] == channel.uuid
            assert "is ready" in await good.api("status")

    asyncio.run(scenario())


def test_stop_sends_every_client_a_disconnect_notice() -> None:
    async def scenario() -> None:
        server = EslServer(PASSWORD)
        await server.start()
        clients = [await RawClient.connect(server.port) for _ in range(2)]
        await server.stop()
        for client in clients:
            notice = await asyncio.wait_for(client.notices.get(), WAIT)
            assert notice.body == DISCONNECT_MESSAGE
            assert notice.body.startswith("Disconnected, goodbye.\nSee you at ClueCon!")
            await client.wait_closed()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", server.port)
        RawClient.close_all()

    asyncio.run(scenario())


# --- mod_audio_fork ----------------------------------------------------------------------


def test_fork_arguments_are_split_like_freeswitch_does() -> None:
    assert fs_split("u start  ws://h/p?a=1 mono 16k voiceai {'a':1}") == [
        "u",
        "start",
        "ws://h/p?a=1",
        "mono",
        "16k",
        "voiceai",
        "{a:1}",
    ]
    assert fs_split("a 'b c' it's") == ["a", "b c", "it's"]
    assert fs_url_encode("a b:c\n+") == "a%20b%3Ac%0A%2B"


def test_fork_start_without_sample_rate_crashes_the_switch() -> None:
    async def scenario() -> None:
        service = FakeService()
        async with service.running(), running_server() as server:
            streaming = server.add_channel(caller_audio=tone(0.2, 8000))
            victim = server.add_channel()
            a = await RawClient.connect(server.port)
            b = await RawClient.connect(server.port)
            body = await a.api(f"uuid_audio_fork {streaming.uuid} start {service.url()} mono 8k")
            assert body == "+OK Success\n"
            await asyncio.wait_for(service.connected.wait(), WAIT)

            fatal = f"api uuid_audio_fork {victim.uuid} start {service.url()} mono"
            a.writer.write(f"{fatal}\n\n".encode())
            await a.wait_closed()
            await b.wait_closed()
            assert server.crashed
            assert a.replies.empty()  # no answer to the fatal command
            assert a.notices.empty() and b.notices.empty()  # no goodbye from a segfault
            await asyncio.wait_for(service.closed.wait(), WAIT)
            assert service.close_code == 1006  # the fork socket dropped without a close frame
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", server.port)

    asyncio.run(scenario())


def test_fork_start_answers_ok_then_connects_and_streams_like_mod_audio_fork() -> None:
    async def scenario() -> None:
        rate = 16000
        speech = tone(0.5, rate)  # 16000 bytes = 25 frames of 640
        service = FakeService(want_bytes=len(speech) + 6400)  # speech, then silence
        async with service.running(), running_server() as server:
            server.speed = 5.0
            events = await RawClient.connect(server.port)
            await events.send(
                "event json CUSTOM mod_audio_fork::connect mod_audio_fork::disconnect"
            )
            channel = server.add_channel(
                caller_audio=speech,
                variables={
                    "MOD_AUDIO_BASIC_AUTH_USERNAME": "fs",
                    "MOD_AUDIO_BASIC_AUTH_PASSWORD": "s3cret",
                },
            )
            metadata = '{"callId":"call-1","caller":"+15550100"}'
            body = await events.api(
                f"uuid_audio_fork {channel.uuid} start {service.url()} mono 16k voiceai {metadata}"
            )
            assert body == "+OK Success\n"

            event = await events.next_event()
            assert event["Event-Name"] == "CUSTOM"
            assert event["Event-Subclass"] == "mod_audio_fork::connect"
            assert event["Unique-ID"] == channel.uuid
            await asyncio.wait_for(service.enough.wait(), WAIT)
            assert service.subprotocol == SUBPROTOCOL
            assert service.path == "/fork/call-1?tenant=a"
            assert service.authorization == "Basic " + base64.b64encode(b"fs:s3cret").decode()
            assert service.texts == [metadata]  # the first frame, verbatim
            assert service.frame_sizes == {640}  # 20 ms of 16 kHz mono L16
            assert bytes(service.audio[: len(speech)]) == speech
            assert not any(service.audio[len(speech) : len(speech) + 6400])  # then silence

            ping = '{"type":"ping"}'
            send = f"uuid_audio_fork {channel.uuid} send_text voiceai {ping}"
            assert await events.api(send) == "+OK Success\n"
            stop = f"uuid_audio_fork {channel.uuid} stop voiceai bye"
            assert await events.api(stop) == "+OK Success\n"
            await asyncio.wait_for(service.closed.wait(), WAIT)
            assert service.texts == [metadata, ping, "bye"]
            assert service.close_code == 1000
            await events.assert_no_event()  # a close FreeSWITCH starts fires no fork event
            assert await events.api(stop) == "-ERR Operation Failed\n"  # nothing left to stop

    asyncio.run(scenario())


def test_fork_close_by_the_service_fires_disconnect_and_hangup_closes_quietly() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            server.speed = 10.0
            events = await RawClient.connect(server.port)
            await events.send(
                "event json CUSTOM mod_audio_fork::connect mod_audio_fork::disconnect "
                "mod_audio_fork::transcription"
            )

            greeting = '{"type":"transcription","data":{"text":"hi"}}'
            service = FakeService(close_after_bytes=3200, greeting=greeting)
            async with service.running():
                channel = server.add_channel()
                start = f"uuid_audio_fork {channel.uuid} start {service.url()} mono 8k voiceai"
                assert await events.api(start) == "+OK Success\n"
                assert (await events.next_event())["Event-Subclass"] == "mod_audio_fork::connect"
                event = await events.next_event()  # service text frames only raise events
                assert event["Event-Subclass"] == "mod_audio_fork::transcription"
                assert json.loads(event["_body"]) == {"text": "hi"}
                assert channel.fork is not None and channel.fork.received == [greeting]
                event = await events.next_event()
                assert event["Event-Subclass"] == "mod_audio_fork::disconnect"
                assert event["Unique-ID"] == channel.uuid

            service = FakeService(want_bytes=320)
            async with service.running():
                channel = server.add_channel()
                start = f"uuid_audio_fork {channel.uuid} start {service.url()} stereo 8k"
                assert await events.api(start) == "+OK Success\n"
                await events.event_named("mod_audio_fork::connect")
                await asyncio.wait_for(service.enough.wait(), WAIT)
                assert service.frame_sizes == {640}  # 20 ms of 8 kHz stereo
                assert await server.hangup(channel.uuid)
                await asyncio.wait_for(service.closed.wait(), WAIT)
                assert service.close_code == 1000
                await events.assert_no_event()

    asyncio.run(scenario())


def test_fork_to_a_closed_port_reports_connect_failed() -> None:
    async def scenario() -> None:
        async with running_server() as server:
            events = await RawClient.connect(server.port)
            await events.send("event json CUSTOM mod_audio_fork::connect_failed")
            channel = server.add_channel()
            url = f"ws://127.0.0.1:{free_port()}/fork/x"
            body = await events.api(f"uuid_audio_fork {channel.uuid} start {url} mono 8k voiceai")
            assert body == "+OK Success\n"  # the failure comes later, as an event
            event = await events.next_event()
            assert event["Event-Subclass"] == "mod_audio_fork::connect_failed"
            assert event["Unique-ID"] == channel.uuid
            assert json.loads(event["_body"]) == {"reason": "Unable to connect"}
            assert channel.fork is not None and channel.fork.state == "failed"

            assert await events.api("uuid_audio_fork nope start ws://h/ mono 8k") == (
                "-ERR Operation Failed\n"
            )
            assert (await events.api("uuid_audio_fork x")).startswith("-USAGE: ")
            assert not server.crashed

    asyncio.run(scenario())
