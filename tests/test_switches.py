"""One service, two FreeSWITCH (VOICEAI_FREESWITCHES): each call is commanded on the switch its
fork metadata names, and readiness reports every switch.

A misrouted command must be seen, not just fail: the other switch gets a decoy channel with the
call's uuid, so a command sent there lands on it and is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.conftest import RunningService
from voiceai import events
from voiceai.sim.freeswitch import EslServer
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall

RATE = 8000
ESL_PASSWORD = "esl-test-pw"
TOKEN = "operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def two_switch_service(
    service_factory: Callable[..., RunningService], tts: Any, **overrides: Any
) -> AsyncIterator[tuple[EslServer, EslServer, RunningService]]:
    """FreeSWITCH fs1 and fs2, and one service connected to both (ESL_PORT points nowhere)."""
    fs1, fs2 = EslServer(ESL_PASSWORD, hostname="fs1"), EslServer(ESL_PASSWORD, hostname="fs2")
    await fs1.start()
    await fs2.start()
    values = {
        "freeswitches": f"fs1=127.0.0.1:{fs1.port},fs2=127.0.0.1:{fs2.port}",
        "esl_port": 1,  # replaced by VOICEAI_FREESWITCHES: nothing may connect here
        "esl_password": ESL_PASSWORD,
        "llm": "ollama",
        "api_token": TOKEN,
        "greeting": "Hello.",
        **overrides,
    }
    try:
        with OllamaEmulator(reply=lambda messages: "Certainly.") as ollama:
            service = await asyncio.to_thread(
                service_factory, tts_engine=tts, ollama_url=ollama.url, **values
            )
            await until(service, lambda body: body["esl"] == "connected", "both switches up")
            yield fs1, fs2, service
    finally:
        await fs1.stop()
        await fs2.stop()


async def readyz(service: RunningService) -> httpx.Response:
    return await asyncio.to_thread(service.get, "/readyz")


async def until(
    service: RunningService, check: Callable[[dict[str, Any]], bool], what: str
) -> tuple[int, dict[str, Any]]:
    """/readyz's status and body once its body passes `check`."""
    deadline = time.monotonic() + 20
    while True:
        response = await readyz(service)
        if check(response.json()):
            return response.status_code, response.json()
        assert time.monotonic() < deadline, f"never {what}: {response.json()}"
        await asyncio.sleep(0.1)


async def api(service: RunningService, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.http, headers=AUTH, timeout=30) as client:
        return await client.request(method, path, **kwargs)


def mentions(switch: EslServer, call_id: str) -> list[str]:
    """The api/bgapi commands a switch received about this call."""
    return [c for c in switch.commands if call_id in c]


def playbacks(switch: EslServer, call_id: str) -> list[dict[str, str]]:
    channel = switch.channels.get(call_id)
    messages = channel.messages if channel is not None else []
    return [m for m in messages if m.get("execute-app-name") == "playback"]


def test_each_call_is_commanded_on_the_switch_its_metadata_names(service_factory, tts) -> None:
    async def scenario() -> dict[str, Any]:
        async with two_switch_service(service_factory, tts) as (fs1, fs2, service):
            out: dict[str, Any] = {"fs1": fs1, "fs2": fs2}
            async with (
                PhoneCall(fs2, service.ws, rate=RATE, token=TOKEN, switchname="fs2") as on2,
                PhoneCall(fs1, service.ws, rate=RATE, token=TOKEN, switchname="fs1") as on1,
            ):
                fs1.add_channel(uuid=on2.call_id)  # decoys: misrouted commands land here
                fs2.add_channel(uuid=on1.call_id)
                await on2.dial()
                await on1.dial()
                await on2.wait_event(events.BOT_SAID)
                await on1.wait_event(events.BOT_SAID)
                out["hangup"] = await api(service, "POST", f"/api/calls/{on2.call_id}/hangup")
                await on2.wait_event(events.CALL_ENDED)
                out["on1_live"] = not fs1.channels[on1.call_id].hung_up
                await on1.end()
            out["ids"] = on1.call_id, on2.call_id
            out["errors"] = on1.log.of(events.CALL_ERROR) + on2.log.of(events.CALL_ERROR)
            out["record"] = await asyncio.to_thread(service.wait_for_call, on2.call_id)
            return out

    out = asyncio.run(scenario())
    fs1, fs2 = out["fs1"], out["fs2"]
    on1, on2 = out["ids"]
    assert out["errors"] == []
    # The call on fs2: taken, greeted and hung up on fs2; fs1 never heard of it.
    assert f"sched_del {on2}" in fs2.commands
    assert playbacks(fs2, on2)
    assert out["hangup"].status_code == 202 and fs2.channels[on2].hung_up
    assert f"uuid_kill {on2} NORMAL_CLEARING" in fs2.commands
    assert mentions(fs1, on2) == [] and fs1.channels[on2].messages == []
    # The call on fs1 likewise, and the hang-up on fs2 left it alone.
    assert f"sched_del {on1}" in fs1.commands and playbacks(fs1, on1)
    assert mentions(fs2, on1) == [] and fs2.channels[on1].messages == []
    assert out["on1_live"]
    assert out["record"]["metadata"]["switch"] == "fs2"  # the record shows where it ran


def test_an_outbound_call_is_placed_and_commanded_on_the_switch_asked_for(
    service_factory, tts
) -> None:
    async def scenario() -> dict[str, Any]:
        async with two_switch_service(service_factory, tts) as (fs1, fs2, service):
            out: dict[str, Any] = {"fs1": fs1, "fs2": fs2}
            out["unknown"] = await api(
                service, "POST", "/api/calls", json={"to": "+15551234567", "switch": "fs9"}
            )
            out["bad"] = await api(
                service, "POST", "/api/calls", json={"to": "+15551234567", "switch": "fs 2"}
            )
            placed = await api(
                service, "POST", "/api/calls", json={"to": "+15551234567", "switch": "fs2"}
            )
            out["placed"] = placed
            call_id = placed.json()["id"]
            async with PhoneCall(fs2, service.ws, call_id=call_id, token=TOKEN) as watch:
                await watch.wait_event(events.BOT_SAID)
                await watch.end()
            out["id"] = call_id
            out["errors"] = watch.log.of(events.CALL_ERROR)
            return out

    out = asyncio.run(scenario())
    fs1, fs2, call_id = out["fs1"], out["fs2"], out["id"]
    assert out["unknown"].status_code == 422 and "fs9" in out["unknown"].json()["detail"]
    assert out["bad"].status_code == 422
    assert out["placed"].status_code == 202
    assert any(c.startswith("originate") for c in mentions(fs2, call_id))
    fork = next(c for c in mentions(fs2, call_id) if c.startswith("uuid_audio_fork"))
    assert '"switch":"fs2"' in fork
    assert playbacks(fs2, call_id) and out["errors"] == []
    assert fs1.commands == [] or mentions(fs1, call_id) == []


def test_readiness_lists_each_switch_and_fails_only_when_none_is_up(service_factory, tts) -> None:
    async def scenario() -> dict[str, Any]:
        async with two_switch_service(service_factory, tts) as (fs1, fs2, service):
            out: dict[str, Any] = {}
            out["both"] = await until(service, lambda b: b["esl"] == "connected", "both up")
            async with PhoneCall(fs2, service.ws, rate=RATE, token=TOKEN, switchname="fs2") as call:
                await call.dial()
                await call.wait_event(events.BOT_SAID)
                await fs1.stop()
                out["one"] = await until(
                    service, lambda b: b["switches"]["fs1"]["state"] == "disconnected", "fs1 down"
                )
                metrics = await api(service, "GET", "/metrics")
                out["metrics"] = metrics.text
                # The call on fs2 goes on: the bot still speaks there, and lost nothing.
                said = await api(
                    service, "POST", f"/api/calls/{call.call_id}/say", json={"text": "Still here."}
                )
                out["said"] = said.status_code
                await call.wait_event(events.BOT_SAID, count=2)
                out["errors"] = call.log.of(events.CALL_ERROR)
                await fs2.stop()
                out["none"] = await until(service, lambda b: b["esl"] == "disconnected", "none up")
            return out

    out = asyncio.run(scenario())
    status, body = out["both"]
    assert status == 200 and set(body["switches"]) == {"fs1", "fs2"}
    status, body = out["one"]
    assert status == 200 and body["status"] == "ready"
    assert body["esl"] == "degraded"
    assert body["switches"]["fs2"] == {"state": "connected", "error": None}
    assert body["switches"]["fs1"]["error"]  # why it is down, as its socket last said
    assert body["esl_error"].startswith("fs1: ")
    assert 'voiceai_esl_connected{switch="fs1"} 0.0' in out["metrics"]
    assert 'voiceai_esl_connected{switch="fs2"} 1.0' in out["metrics"]
    assert out["said"] == 202
    assert out["errors"] == []  # fs1's socket going down is not this call's loss
    status, body = out["none"]
    assert status == 503 and body["status"] == "not ready"
    assert {s["state"] for s in body["switches"].values()} == {"disconnected"}


def test_a_bad_or_unknown_switch_name_warns_and_the_call_goes_to_the_first_switch(
    service_factory, tts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)

    async def scenario() -> tuple[EslServer, EslServer, list[str]]:
        async with two_switch_service(service_factory, tts) as (fs1, fs2, service):
            ids = []
            for name in ("fs2/../x", "fs7", "fs7"):
                async with PhoneCall(
                    fs1, service.ws, rate=RATE, token=TOKEN, switchname=name
                ) as call:
                    fs2.add_channel(uuid=call.call_id)  # the decoy
                    await call.dial()
                    await call.wait_event(events.BOT_SAID)
                    await call.end()
                    assert call.log.of(events.CALL_ERROR) == []
                ids.append(call.call_id)
            return fs1, fs2, ids

    fs1, fs2, ids = asyncio.run(scenario())
    for call_id in ids:
        assert playbacks(fs1, call_id)
        assert mentions(fs2, call_id) == [] and fs2.channels[call_id].messages == []
    messages = [r.getMessage() for r in caplog.records]
    bad = [m for m in messages if m.startswith(f"fork {ids[0]}:")]
    assert len(bad) == 1 and "'fs2/../x' is not a FreeSWITCH name" in bad[0], bad
    unknown = [m for m in messages if "names FreeSWITCH 'fs7'" in m]
    assert len(unknown) == 1 and "given to fs1" in unknown[0], unknown  # once, not per call


def test_a_call_over_capacity_is_sent_to_the_apology_on_its_own_switch(
    service_factory, tts
) -> None:
    async def scenario() -> tuple[Any, Any]:
        async with two_switch_service(service_factory, tts, max_calls=1) as (fs1, fs2, service):
            async with PhoneCall(
                fs1, service.ws, rate=RATE, token=TOKEN, switchname="fs1"
            ) as first:
                await first.dial()
                await first.wait_event(events.CALL_STARTED)
                async with PhoneCall(
                    fs2, service.ws, rate=RATE, token=TOKEN, switchname="fs2"
                ) as refused:
                    decoy = fs1.add_channel(uuid=refused.call_id)
                    await refused.dial()  # its own take timeout would only fire in 10 s
                    channel = fs2.channels[refused.call_id]
                    async with asyncio.timeout(10):
                        while not channel.transfers:  # noqa: ASYNC110 (the emulator signals none)
                            await asyncio.sleep(0.05)
                await first.end()
            return channel, decoy

    channel, decoy = asyncio.run(scenario())
    assert channel.transfers == [("voiceai_unavailable", "XML", "voiceai_public")]
    assert channel.scheduled == []  # and its scheduled transfer dropped, on the same switch
    assert decoy.transfers == [] and decoy.scheduled == []
