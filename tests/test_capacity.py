"""Many calls on one service: what happens past VOICEAI_MAX_CALLS, and a client that floods
its fork with text cannot hurt anyone but itself."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningService, white_noise
from tests.test_conversation import talking_service
from voiceai.sim.phone import FORK_BUG, PhoneCall
from voiceai.telephony.fork import SUBPROTOCOL

RATE = 8000


async def open_fork(service: RunningService, call_id: str) -> ClientConnection:
    ws = await connect(f"{service.ws}/fork/{call_id}", subprotocols=[SUBPROTOCOL])
    with contextlib.suppress(ConnectionClosed):  # a refused fork is closed before it speaks
        await ws.send(json.dumps({"caller": "+15550100", "rate": "8k"}))
    return ws


async def close_code(ws: ClientConnection, limit_s: float = 10.0) -> tuple[int, str]:
    """Reads until the service closes the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(limit_s):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_a_call_over_the_limit_is_refused_and_the_dialplan_apologises_while_others_go_on(
    service_factory, tts
) -> None:
    async def scenario() -> None:
        async with (
            talking_service(service_factory, tts, max_calls=1, greeting="") as (
                switch,
                service,
            ),
            PhoneCall(switch, service.ws, rate=RATE) as first,
        ):
            await first.dial()
            await first.wait_event("call.started")

            # A second call, as the dialplan places it: its safety net would fire only in 60 s.
            second = switch.add_channel(uuid="second-call")
            await switch.answer("second-call")
            switch.schedule_transfer(second, 60.0, "voiceai_unavailable")
            switch.start_fork(
                second,
                f"{service.ws}/fork/second-call",
                rate=RATE,
                bugname=FORK_BUG,
                metadata=json.dumps({"rate": "8k"}),
            )
            # The service sends it to the apology and fallback at once, not after the timeout,
            # and drops the scheduled transfer, which would fire again during the fallback.
            async with asyncio.timeout(10):
                while not second.transfers:  # noqa: ASYNC110 (the emulator signals no transfer)
                    await asyncio.sleep(0.05)
            assert second.transfers == [("voiceai_unavailable", "XML", "voiceai_public")]
            assert second.scheduled == []

            third = await open_fork(service, "third-call")
            assert await close_code(third) == (1013, "over capacity (1 calls)")

            # The call in progress is untouched: still live, still heard.
            first.say(white_noise(0.5, RATE, amplitude=200))
            record = await asyncio.to_thread(service.get, f"/api/calls/{first.call_id}")
            assert record.json()["status"] == "active"
            metrics = await asyncio.to_thread(httpx.get, f"{service.http}/metrics", timeout=10)
            assert 'voiceai_calls_refused_total{reason="capacity"} 2.0' in metrics.text
            await first.end()

    asyncio.run(scenario())


def test_a_text_frame_flood_closes_only_its_own_fork(service: RunningService) -> None:
    async def scenario() -> None:
        calm = await open_fork(service, "calm-call")
        noisy = await open_fork(service, "noisy-call")
        silence = np.zeros(RATE // 50, np.int16).tobytes()
        for _ in range(200):  # as fast as it can: far past a real mod_audio_fork's text rate
            try:
                await noisy.send("x" * 4000)
            except ConnectionClosed:
                break
        assert await close_code(noisy) == (1008, "text frame flood")
        for _ in range(50):  # the other call streams on, unharmed
            await calm.send(silence)
        await calm.send(b"")  # FreeSWITCH's graceful end of audio
        assert (await close_code(calm))[0] == 1000
        noisy_record = await asyncio.to_thread(service.wait_for_call, "noisy-call")
        assert noisy_record["end_reason"] == "protocol error: text frame flood"
        calm_record = await asyncio.to_thread(service.wait_for_call, "calm-call")
        assert calm_record["end_reason"] == "hangup"

    asyncio.run(scenario())


def test_a_text_frame_over_8_kib_is_refused(service: RunningService) -> None:
    async def scenario() -> None:
        ws = await open_fork(service, "big-text")
        await ws.send("y" * 9000)
        code, reason = await close_code(ws)
        assert code == 1009 and "exceeds 8192" in reason

    asyncio.run(scenario())
