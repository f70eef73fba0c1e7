"""The operator's side: call records, REST call control, the live stream, retention."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import numpy as np
from websockets.asyncio.client import connect

from tests.conftest import RunningService, words
from tests.speech import KEYWORDS, Speech
from tests.test_conversation import RATE, caller_says, heard_by_caller, talking_service
from voiceai import events
from voiceai.engines.stt import WhisperSTT
from voiceai.events import EventBus, SpeechStarted
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall

TOKEN = "operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def api(service: RunningService, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.http, headers=AUTH, timeout=30) as client:
        return await client.request(method, path, **kwargs)


def test_operator_hangs_up_transfers_and_gets_clear_errors(
    service_factory, tts, speech: Speech
) -> None:
    async def scenario() -> dict[str, Any]:
        with OllamaEmulator(reply=lambda m: "Certainly.") as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, api_token=TOKEN, greeting=""
            ) as (switch, service):
                out: dict[str, Any] = {}
                async with PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as first:
                    await first.dial()
                    await first.wait_event(events.CALL_STARTED)
                    out["bad_transfer"] = await api(
                        service,
                        "POST",
                        f"/api/calls/{first.call_id}/transfer",
                        json={"to": "1001; uuid_kill all"},
                    )
                    out["transfer"] = await api(
                        service, "POST", f"/api/calls/{first.call_id}/transfer", json={"to": "1001"}
                    )
                    out["transfers"] = list(switch.channels[first.call_id].transfers)
                    await first.end()
                async with PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as second:
                    await second.dial()
                    await second.wait_event(events.CALL_STARTED)
                    out["no_token"] = await asyncio.to_thread(
                        httpx.post, f"{service.http}/api/calls/{second.call_id}/hangup"
                    )
                    out["hangup"] = await api(
                        service, "POST", f"/api/calls/{second.call_id}/hangup"
                    )
                    await second.wait_event(events.CALL_ENDED)
                    out["hung_up"] = switch.channels[second.call_id].hung_up
                    await asyncio.to_thread(service.wait_for_call, second.call_id)
                    out["again"] = await api(service, "POST", f"/api/calls/{second.call_id}/hangup")
                out["unknown"] = await api(service, "POST", "/api/calls/nope/hangup")
                out["bad_say"] = await api(
                    service, "POST", f"/api/calls/{second.call_id}/say", json={"text": ""}
                )
                out["list"] = (await api(service, "GET", "/api/calls?limit=1")).json()
                out["ended"] = (await api(service, "GET", "/api/calls?status=ended")).json()
                out["bad_status"] = await api(service, "GET", "/api/calls?status=weird")
                return out

    out = asyncio.run(scenario())
    assert out["bad_transfer"].status_code == 422
    assert "phone number" in json.dumps(out["bad_transfer"].json())
    assert out["transfer"].status_code == 202
    assert out["transfers"][0][0] == "bridge:sofia/gateway/ringcentral/1001"
    assert out["no_token"].status_code == 401
    assert out["hangup"].status_code == 202 and out["hung_up"] is True
    assert out["again"].status_code == 409 and "already ended" in out["again"].json()["detail"]
    assert out["unknown"].status_code == 404 and "nope" in out["unknown"].json()["detail"]
    assert out["bad_say"].status_code in (409, 422)
    assert out["list"]["total"] == 2 and len(out["list"]["calls"]) == 1
    assert "turns" not in out["list"]["calls"][0]
    assert {c["status"] for c in out["ended"]["calls"]} == {"ended"}
    assert out["bad_status"].status_code == 422


def test_operator_says_a_text_and_mutes_the_bot(
    service_factory, tts, speech: Speech, stt: WhisperSTT
) -> None:
    async def scenario() -> tuple[PhoneCall, str, list[int]]:
        with OllamaEmulator(reply=lambda m: "Certainly, I can do that.") as ollama:
            async with (
                talking_service(
                    service_factory, tts, ollama_url=ollama.url, api_token=TOKEN, greeting=""
                ) as (switch, service),
                PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as call,
            ):
                await call.dial()
                await call.wait_event(events.CALL_STARTED)
                said = await api(
                    service,
                    "POST",
                    f"/api/calls/{call.call_id}/say",
                    json={"text": "Your parcel will arrive on Friday afternoon."},
                )
                await call.wait_event(events.BOT_SAID)
                heard = await heard_by_caller(switch, call, stt)
                muted = await api(service, "POST", f"/api/calls/{call.call_id}/mute")
                requests_before = len(ollama.requests)
                call.say(caller_says(speech, "booking"))
                await call.wait_event(events.TRANSCRIPT_FINAL)
                await asyncio.sleep(1.5)
                unanswered = len(ollama.requests) - requests_before
                unmuted = await api(service, "POST", f"/api/calls/{call.call_id}/unmute")
                await call.converse([caller_says(speech, "callback")])
                await call.end()
                codes = [said.status_code, muted.status_code, unmuted.status_code, unanswered]
                return call, heard, codes

    call, heard, codes = asyncio.run(scenario())
    assert codes == [202, 200, 200, 0]
    assert {"parcel", "friday"} <= words(heard)
    assert [e["data"]["muted"] for e in call.log.of(events.CALL_MUTED)] == [True, False]
    last = call.log.of(events.BOT_SAID)[-1]["data"]
    assert "certainly" in last["text"].lower()  # answered again once unmuted


def test_outbound_call_is_placed_and_the_bot_talks_when_answered(
    service_factory, tts, stt: WhisperSTT
) -> None:
    async def scenario() -> tuple[dict, dict, dict, list[str], str]:
        with OllamaEmulator() as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, api_token=TOKEN
            ) as (switch, service):
                switch.unreachable_numbers.add("15550000000")
                bad = await api(service, "POST", "/api/calls", json={"to": "555-1234"})
                failed = await api(service, "POST", "/api/calls", json={"to": "+15550000000"})
                placed = await api(
                    service,
                    "POST",
                    "/api/calls",
                    json={"to": "+15551234567", "greeting": "Hi, this is your dentist calling."},
                )
                call_id = placed.json()["id"]
                async with PhoneCall(switch, service.ws, call_id=call_id, token=TOKEN) as watch:
                    await watch.wait_event(events.BOT_SAID, limit_s=60)
                    heard = await heard_by_caller(switch, watch, stt)
                    await watch.end()
                record = await asyncio.to_thread(service.wait_for_call, call_id)
                failure = await asyncio.to_thread(
                    service.wait_for_call, failed.json()["id"], "failed"
                )
                return bad.json(), record, failure, list(switch.commands), heard

    bad, record, failure, commands, heard = asyncio.run(scenario())
    assert "E.164" in json.dumps(bad)
    assert record["direction"] == "outbound" and record["callee"] == "+15551234567"
    assert any(
        c.startswith("uuid_audio_fork") and " start " in c and " 16k voiceai " in c
        for c in commands
    )
    assert {"dentist", "calling"} <= words(heard)
    assert failure["status"] == "failed"
    assert "NO_ANSWER" in failure["end_reason"]


def test_late_viewer_gets_a_snapshot_then_partials_and_finals(
    service_factory, tts, speech: Speech
) -> None:
    long_turn = np.concatenate([caller_says(speech, "booking"), caller_says(speech, "invoice")])

    async def scenario() -> tuple[dict, list[dict]]:
        with OllamaEmulator(reply=lambda m: "Noted.") as ollama:
            async with (
                talking_service(
                    service_factory, tts, ollama_url=ollama.url, api_token=TOKEN, greeting=""
                ) as (switch, service),
                PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as call,
            ):
                await call.dial()
                await call.converse([caller_says(speech, "callback")])
                url = f"{service.ws}/ws/live?token={TOKEN}"
                async with connect(url) as late:
                    snapshot = json.loads(await late.recv())
                    call.say(long_turn)
                    seen: list[dict] = []
                    async with asyncio.timeout(60):
                        while not any(e["type"] == "transcript.final" for e in seen):
                            seen.append(json.loads(await late.recv()))
                await call.end()
                return snapshot, seen

    snapshot, seen = asyncio.run(scenario())
    assert snapshot["type"] == "snapshot"
    (summary,) = snapshot["data"]["calls"]
    assert summary["caller"] == "+15550100"
    assert [t["speaker"] for t in summary["turns"]] == ["caller", "bot"]
    assert KEYWORDS["callback"] <= words(summary["turns"][0]["text"])
    partials = [e["data"]["text"] for e in seen if e["type"] == "transcript.partial"]
    assert len(partials) >= 2, partials  # about once a second over a ~6 s turn
    assert any("book" in p.lower() for p in partials)
    final = next(e for e in seen if e["type"] == "transcript.final")["data"]["text"]
    assert KEYWORDS["booking"] <= words(final)


def test_a_slow_viewer_loses_old_events_instead_of_slowing_calls() -> None:
    async def scenario() -> tuple[float, int, list[int]]:
        bus = EventBus()
        with bus.subscribe(maxsize=10) as slow:
            started = time.perf_counter()
            for i in range(5000):
                bus.publish(SpeechStarted(call_id="call", at_ms=i))
            elapsed = time.perf_counter() - started
            kept = [
                event.at_ms
                for event in (slow.queue.get_nowait() for _ in range(slow.queue.qsize()))
                if isinstance(event, SpeechStarted)
            ]
            return elapsed, slow.dropped, kept

    elapsed, dropped, kept = asyncio.run(scenario())
    assert kept == list(range(4990, 5000))  # the newest survive
    assert dropped == 4990
    assert elapsed < 2  # publishing never waited for the viewer


def test_a_recorded_call_can_be_downloaded(service_factory, tts, speech: Speech) -> None:
    async def scenario() -> tuple[httpx.Response, dict]:
        with OllamaEmulator(reply=lambda m: "Sure.") as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, api_token=TOKEN, record_calls=True
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE, token=TOKEN) as call:
                    await call.dial()
                    await call.converse([caller_says(speech, "pharmacy")])
                    await call.end()
                record = await asyncio.to_thread(service.wait_for_call, call.call_id)
                return await api(service, "GET", f"/api/calls/{call.call_id}/recording"), record

    response, record = asyncio.run(scenario())
    assert record["recording"].endswith(f"{record['id']}.wav")
    assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
    assert response.content[:4] == b"RIFF" and len(response.content) > 16000


def test_metrics_count_calls_and_turns_behind_the_token(service_factory, speech: Speech) -> None:
    from tests.calls import place
    from voiceai.sim.fork_client import CallAudio, ForkCall, ForkStreamOptions

    service = service_factory(api_token=TOKEN)
    audio = CallAudio.from_files([speech["booking"]], 16000)
    call = ForkCall(service.ws, "counted", audio, ForkStreamOptions(speed=0))
    asyncio.run(place(call, token=TOKEN))
    service.wait_for_call("counted")
    assert service.get("/metrics").status_code == 401
    deadline = time.monotonic() + 10  # metrics are counted from the same events, asynchronously
    while "voiceai_active_calls 0.0" not in (text := service.get("/metrics", headers=AUTH).text):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert 'voiceai_calls_total{direction="inbound",outcome="completed"} 1.0' in text
    assert 'voiceai_turns_total{speaker="caller"} 1.0' in text
    assert "voiceai_active_calls 0.0" in text
    assert "voiceai_stt_real_time_factor_count 1.0" in text
    public = service_factory(api_token=TOKEN, public_metrics=True, public_readyz=False)
    assert public.get("/metrics").status_code == 200
    assert public.get("/readyz").status_code == 401
