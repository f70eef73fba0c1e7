"""The ESL client against a FreeSWITCH that misbehaves (issue 11, item 2): a Content-Length
larger than its body, a reply too many, a truncated `event json`, a switch that stops
answering with the socket open, a 200 MB header line. After each, the client drops the
connection, reconnects, and every later command gets its own reply."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import RunningService, free_port
from tests.test_esl_client import PASSWORD, WAIT, Inbox, emulator, esl_client, until
from voiceai.sim.freeswitch import EslServer
from voiceai.telephony.esl import MAX_HEADER, EslClient, EslNotConnected, EslTimeout

QUIET = 60.0  # a heartbeat that never fires during a test: the framing alone must notice


async def reconnected(client: EslClient, states: list[str]) -> None:
    """The client dropped the connection it had and made a new one."""
    await until(lambda: "disconnected" in states[1:] and client.connected)


async def replies_in_step(client: EslClient, server: EslServer) -> None:
    """Commands of both reply kinds, each answered with its own reply."""
    channel = server.add_channel()
    assert await client.api("hostname") == server.hostname
    message = {"call-command": "execute", "execute-app-name": "set", "execute-app-arg": "x=1"}
    assert await client.sendmsg(channel.uuid, message) == "+OK"
    assert await client.bgapi("hostname") == server.hostname
    assert (await client.api("status")).startswith("UP ")
    assert await client.api(f"uuid_exists {channel.uuid}") == "true"
    assert await client.api("hostname") == server.hostname


def lost_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]


def test_a_reply_shorter_than_its_content_length_is_not_taken_for_the_next_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        states: list[str] = []
        async with (
            emulator() as server,
            esl_client(server.port, states=states, heartbeat_s=QUIET) as client,
        ):
            assert await client.wait_connected(WAIT)
            server.faults["hostname"] = "long_reply"
            with pytest.raises(EslTimeout):  # its body waits for 64 bytes that never come
                await client.api("hostname", timeout_s=0.3)
            # The next reply completes that body; what is left of it is no message at all.
            with pytest.raises(EslNotConnected):
                await client.api("status", timeout_s=2.0)
            await reconnected(client, states)
            await replies_in_step(client, server)

    asyncio.run(scenario())
    assert any("out of step: a header line that does not parse" in m for m in lost_reasons(caplog))


def test_a_reply_too_many_fails_the_command_instead_of_shifting_every_later_reply(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        states: list[str] = []
        async with (
            emulator() as server,
            esl_client(server.port, states=states, heartbeat_s=QUIET) as client,
        ):
            assert await client.wait_connected(WAIT)
            channel = server.add_channel()
            server.faults["sched_del"] = "extra_reply"
            # Before: "FreeSWITCH refused `api sched_del`: +OK", then every reply one late.
            with pytest.raises(EslNotConnected):
                await client.api(f"sched_del {channel.uuid}")
            await reconnected(client, states)
            await replies_in_step(client, server)

    asyncio.run(scenario())
    expected = "out of step: `api sched_del` got a command/reply (expected api/response)"
    assert any(expected in m for m in lost_reasons(caplog))


def test_a_truncated_json_event_drops_the_connection_and_later_events_arrive_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        states: list[str] = []
        inbox = Inbox()
        async with (
            emulator() as server,
            esl_client(server.port, states=states, inbox=inbox, heartbeat_s=QUIET) as client,
        ):
            assert await client.wait_connected(WAIT)
            server.faults["CHANNEL_ANSWER"] = "truncated"
            first = server.add_channel()
            await server.answer(first.uuid)
            with pytest.raises(EslNotConnected):  # its reply finished the event's body
                await client.api("status", timeout_s=2.0)
            await reconnected(client, states)
            second = server.add_channel()
            await server.answer(second.uuid)
            event = await inbox.next("CHANNEL_ANSWER")
            assert event.uuid == second.uuid
            assert event.headers["Caller-Channel-Name"] == second.name
            assert [e.uuid for e in inbox.events] == [second.uuid]  # nothing half-parsed
            await replies_in_step(client, server)

    asyncio.run(scenario())
    assert any("out of step: an event that is not JSON" in m for m in lost_reasons(caplog))


def test_a_freeswitch_that_stops_answering_is_dropped_within_twice_the_heartbeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heartbeat = 0.3

    async def scenario() -> None:
        states: list[str] = []
        async with (
            emulator() as server,
            esl_client(server.port, states=states, heartbeat_s=heartbeat) as client,
        ):
            assert await client.wait_connected(WAIT)
            server.faults["hostname"] = "mute"  # reads every command, answers none
            muted = time.monotonic()
            with pytest.raises(EslNotConnected):  # well before its own 5 s timeout
                await client.api("hostname", timeout_s=5.0)
            assert time.monotonic() - muted < 2 * heartbeat + 1.0  # the bound, plus scheduling
            await reconnected(client, states)
            await replies_in_step(client, server)
            await asyncio.sleep(3 * heartbeat)  # an answering switch is never dropped
            assert states.count("disconnected") == 1 and client.connected

    asyncio.run(scenario())
    assert any("did not answer the heartbeat within 0.3 s" in m for m in lost_reasons(caplog))


def test_a_200_mb_header_line_is_cut_off_at_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        states: list[str] = []
        async with (
            emulator() as server,
            esl_client(server.port, states=states, heartbeat_s=QUIET) as client,
        ):
            assert await client.wait_connected(WAIT)
            server.faults["hostname"] = "huge_header"
            with pytest.raises(EslNotConnected):
                await client.api("hostname", timeout_s=10.0)
            await until(lambda: bool(server.garbage_sent))
            # The client read at most the cap; the rest (a few MB) sat in the kernel's buffers.
            assert server.garbage_sent[0] < 16 * 1024 * 1024 < server.huge_header_bytes
            await reconnected(client, states)
            await replies_in_step(client, server)

    asyncio.run(scenario())
    expected = f"out of step: a header block longer than {MAX_HEADER} bytes"
    assert any(expected in m for m in lost_reasons(caplog))


def test_readyz_turns_503_when_freeswitch_stops_answering_and_200_once_reconnected(
    service_factory: Callable[..., RunningService], tts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    heartbeat = 0.5
    caplog.set_level(logging.INFO)

    async def ready(service: RunningService) -> int:
        return (await asyncio.to_thread(service.get, "/readyz")).status_code

    async def scenario() -> None:
        async with emulator() as switch:
            service = await asyncio.to_thread(
                service_factory,
                tts_engine=tts,
                esl_port=switch.port,
                esl_password=PASSWORD,
                esl_heartbeat_s=heartbeat,
                llm="ollama",
                ollama_url=f"http://127.0.0.1:{free_port()}",  # unused: no call is placed
            )
            await until(lambda: "status" in switch.commands, 20.0)  # connected, heartbeating
            assert await ready(service) == 200
            switch.faults["status"] = "mute"  # the next heartbeat hangs the socket
            muted = time.monotonic()
            deadline = muted + 2 * heartbeat + 1.5  # the bound, plus polling
            while await ready(service) != 503:
                assert time.monotonic() < deadline, "readyz still says ready"
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 10.0
            while (code := await ready(service)) != 200:
                assert time.monotonic() < deadline, f"never ready again ({code})"
                await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert any("did not answer the heartbeat" in r.getMessage() for r in caplog.records)
