"""Whole calls through the emulators: FreeSWITCH (ESL + fork), Ollama; real STT and TTS."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from tests.conftest import RunningService, words
from tests.speech import KEYWORDS, Speech
from voiceai import events
from voiceai.audio.pcm import decode_file, to_float
from voiceai.engines.stt import WhisperSTT
from voiceai.sim.freeswitch import EslServer
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall

RATE = 8000
ESL_PASSWORD = "esl-test-pw"
BOOKING_REPLY = (
    "Of course, I can book a table for two tomorrow evening. What name should I put it under?"
)
ORDERED_REPLY = (
    "First, the kitchen opens at noon. Second, the bar opens at five. Third, we close at midnight."
)
LONG_REPLY = (
    "Let me tell you about our restaurant in some detail before we continue. "
    "We have been serving traditional food in this neighbourhood for more than twenty years. "
    "Our chef trained in Paris and in Rome, and the menu changes with every season. "
    "We also have a garden terrace that is very popular in the summer months."
)


@pytest.fixture
def ollama() -> Any:
    emulator = OllamaEmulator(reply=lambda messages: BOOKING_REPLY)
    emulator.start()
    yield emulator
    emulator.stop()


@contextlib.asynccontextmanager
async def talking_service(
    service_factory: Callable[..., RunningService], tts: Any, **overrides: Any
) -> AsyncIterator[tuple[EslServer, RunningService]]:
    """A FreeSWITCH emulator and the service connected to it over a real event socket."""
    switch = EslServer(ESL_PASSWORD)
    await switch.start()
    values = {"esl_port": switch.port, "esl_password": ESL_PASSWORD, "llm": "ollama", **overrides}
    service = await asyncio.to_thread(service_factory, tts_engine=tts, **values)
    try:
        deadline = time.monotonic() + 20
        while (await asyncio.to_thread(service.get, "/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "the service never connected to the event socket"
            await asyncio.sleep(0.1)
        yield switch, service
    finally:
        await switch.stop()


def caller_says(speech: Speech, name: str) -> np.ndarray:
    return decode_file(speech[name], RATE)


async def heard_by_caller(switch: EslServer, call: PhoneCall, stt: WhisperSTT) -> str:
    audio = switch.played_audio(call.call_id, rate=16000)
    transcript = await stt.transcribe(to_float(audio), "en")
    return transcript.text if transcript else ""


def test_a_turn_is_answered_out_loud_with_its_latency_recorded(
    service_factory, tts, ollama, speech: Speech, stt: WhisperSTT
) -> None:
    async def scenario() -> None:
        async with talking_service(service_factory, tts, ollama_url=ollama.url) as (
            switch,
            service,
        ):
            async with PhoneCall(switch, service.ws, rate=RATE) as call:
                await call.dial()
                await call.converse([caller_says(speech, "booking")])
                heard = await heard_by_caller(switch, call, stt)
                fallback_pending = list(switch.channels[call.call_id].scheduled)
                await call.end()
            record = await asyncio.to_thread(service.wait_for_call, call.call_id)

        assert f"sched_del {call.call_id}" in switch.commands  # the service took the call
        assert fallback_pending == []
        assert {"thank", "calling", "help"} <= words(heard)  # the greeting
        assert {"table", "tomorrow", "name"} <= words(heard)  # the reply, as the caller heard it
        assert KEYWORDS["booking"] <= words(call.log.texts(events.TRANSCRIPT_FINAL)[0])
        request = ollama.requests[-1]
        assert request.keep_alive is not None
        assert request.messages[0]["role"] == "system"
        assert "table" in request.messages[-1]["content"]
        speakers = [t["speaker"] for t in record["turns"]]
        assert speakers == ["bot", "caller", "bot"]
        reply = record["turns"][2]
        assert words(reply["text"]) >= {"table", "name"}
        stages = reply["timings"]
        for stage in (
            "end_of_turn",
            "transcript",
            "llm_first_token",
            "first_sentence",
            "first_audio",
            "playback_started",
        ):
            assert stage in stages, stages
        assert stages["end_of_turn"] <= stages["playback_started"]
        assert stages["transcript"] <= stages["llm_first_token"] <= stages["first_audio"]
        assert call.log.of(events.TURN_LATENCY)

    asyncio.run(scenario())


def test_sentences_play_in_order(service_factory, tts, speech: Speech, stt: WhisperSTT) -> None:
    async def scenario() -> str:
        with OllamaEmulator(reply=lambda m: ORDERED_REPLY, token_delay_s=0.01) as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, greeting="") as (
                    switch,
                    service,
                ),
                PhoneCall(switch, service.ws, rate=RATE) as call,
            ):
                await call.dial()
                await call.converse([caller_says(speech, "pharmacy")])
                assert len(switch.channels[call.call_id].played) == 3
                return await heard_by_caller(switch, call, stt)

    heard = asyncio.run(scenario()).lower()
    positions = [heard.find(word) for word in ("kitchen", "bar", "midnight")]
    assert -1 not in positions, heard
    assert positions == sorted(positions), heard


def test_caller_talking_over_the_bot_interrupts_it_quickly(
    service_factory, tts, speech: Speech
) -> None:
    async def scenario() -> tuple[PhoneCall, float, dict]:
        with OllamaEmulator(reply=lambda m: LONG_REPLY) as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, greeting="") as (
                    switch,
                    service,
                ),
                PhoneCall(switch, service.ws, rate=RATE) as call,
            ):
                await call.dial()
                call.say(caller_says(speech, "booking"))
                await call.wait_state("speaking")
                await asyncio.sleep(1.0)  # a second into the reply
                spoke_at = time.monotonic()
                call.say(caller_says(speech, "callback"))
                await call.wait_event(events.BARGE_IN)
                reaction_s = time.monotonic() - spoke_at
                said = await call.wait_event(events.BOT_SAID, count=1)
                await call.end()
                return call, reaction_s, said

    _, reaction_s, said = asyncio.run(scenario())
    # 300 ms of voice are needed; the lead-in silence of the clip and 20 ms frames add a little.
    assert reaction_s < 1.5, reaction_s
    assert said["data"]["interrupted"] is True
    heard = said["data"]["text"]
    assert heard and heard.endswith("…"), heard  # only the part the caller heard is history
    assert len(heard) < len(LONG_REPLY) / 2


def test_a_short_mhm_does_not_interrupt(service_factory, tts, speech: Speech) -> None:
    voiced = caller_says(speech, "booking")
    start = int(np.flatnonzero(np.abs(voiced) > 800)[0])
    mhm = voiced[start : start + int(0.22 * RATE)]  # 220 ms of voice: under the 300 ms minimum

    async def scenario() -> tuple[PhoneCall, list[str]]:
        with OllamaEmulator(reply=lambda m: ORDERED_REPLY) as ollama:
            async with (
                talking_service(service_factory, tts, ollama_url=ollama.url, greeting="") as (
                    switch,
                    service,
                ),
                PhoneCall(switch, service.ws, rate=RATE) as call,
            ):
                await call.dial()
                call.say(caller_says(speech, "pharmacy"))
                await call.wait_state("speaking")
                await asyncio.sleep(0.8)
                call.say(mhm)
                await call.wait_event(events.BOT_SAID)
                await call.end()
                return call, list(switch.commands)

    call, commands = asyncio.run(scenario())
    assert not call.log.of(events.BARGE_IN)
    assert not any(c.startswith("uuid_break") for c in commands)
    said = call.log.of(events.BOT_SAID)[0]["data"]
    assert said["interrupted"] is False
    assert "midnight" in said["text"].lower()


@pytest.mark.parametrize("fallback", ["+15551230000", ""])
def test_ollama_down_gives_an_apology_then_transfer_or_polite_end(
    service_factory, tts, speech: Speech, stt: WhisperSTT, fallback: str
) -> None:
    async def scenario() -> tuple[PhoneCall, list[str], str, dict]:
        async with talking_service(
            service_factory,
            tts,
            ollama_url="http://127.0.0.1:9",
            greeting="",
            fallback_number=fallback,
            llm_timeout_s=2,
        ) as (switch, service):
            async with PhoneCall(switch, service.ws, rate=RATE) as call:
                await call.dial()
                call.say(caller_says(speech, "booking"))
                await call.wait_for(
                    lambda log: any(e["data"]["kind"] == "llm" for e in log.of(events.CALL_ERROR))
                )
                if fallback:
                    await call.wait_event(events.CALL_TRANSFERRED)
                else:
                    await call.wait_event(events.CALL_ENDED)
                heard = await heard_by_caller(switch, call, stt)
                if fallback:
                    await call.end()
            record = await asyncio.to_thread(service.wait_for_call, call.call_id)
            return call, list(switch.commands), heard, record

    call, commands, heard, record = asyncio.run(scenario())
    assert {"sorry", "trouble"} <= words(heard)
    assert any(e["kind"] == "llm" and "not reachable" in e["message"] for e in record["errors"])
    if fallback:
        assert (
            f"uuid_transfer {call.call_id} bridge:sofia/gateway/ringcentral/{fallback} inline"
            in commands
        )
        assert record["transferred_to"] == fallback
    else:
        assert any(c.startswith(f"uuid_kill {call.call_id}") for c in commands)
        assert record["hangup_cause"] == "NORMAL_CLEARING"


def test_dtmf_digit_transfers_to_a_person_and_the_bot_goes_quiet(
    service_factory, tts, ollama, speech: Speech
) -> None:
    async def scenario() -> tuple[PhoneCall, list[str], int]:
        async with (
            talking_service(
                service_factory,
                tts,
                ollama_url=ollama.url,
                fallback_number="1001",
                transfer_digit="0",
            ) as (switch, service),
            PhoneCall(switch, service.ws, rate=RATE) as call,
        ):
            await call.dial()
            await call.wait_bot_done()
            call.press("0")
            await call.wait_event(events.CALL_TRANSFERRED)
            played_before = len(switch.channels[call.call_id].played)
            call.say(caller_says(speech, "booking"))  # heard, but no longer answered
            await call.wait_event(events.TRANSCRIPT_FINAL)
            await asyncio.sleep(1.0)
            await call.end()
            return (
                call,
                list(switch.commands),
                len(switch.channels[call.call_id].played) - played_before,
            )

    call, commands, extra_played = asyncio.run(scenario())
    assert call.log.of(events.DTMF)[0]["data"]["digit"] == "0"
    assert f"uuid_transfer {call.call_id} bridge:sofia/gateway/ringcentral/1001 inline" in commands
    assert extra_played == 0
    assert not call.log.of(events.REPLY_DELTA)


def test_hangup_while_thinking_cancels_the_work(service_factory, tts, speech: Speech) -> None:
    async def scenario() -> tuple[PhoneCall, Any, dict]:
        with OllamaEmulator(reply=lambda m: LONG_REPLY, first_token_delay_s=4) as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, greeting=""
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    call.say(caller_says(speech, "booking"))
                    await call.wait_state("thinking")
                    await asyncio.sleep(0.5)
                    await call.switch.hangup(call.call_id, "ORIGINATOR_CANCEL")
                    await call.wait_event(events.CALL_ENDED)
                    outcome = await asyncio.to_thread(ollama.wait_outcome, -1, 10)
                    played = list(switch.channels[call.call_id].played)
                record = await asyncio.to_thread(service.wait_for_call, call.call_id)
                return call, (outcome, played), record

    _, (outcome, played), record = asyncio.run(scenario())
    assert outcome == "disconnected"
    assert played == []
    assert record["hangup_cause"] == "ORIGINATOR_CANCEL"
    assert record["status"] == "ended"


def test_forged_unique_id_in_caller_name_cannot_touch_another_call(
    service_factory, tts, ollama, speech: Speech
) -> None:
    async def scenario() -> tuple[PhoneCall, list[dict]]:
        async with (
            talking_service(service_factory, tts, ollama_url=ollama.url, greeting="") as (
                switch,
                service,
            ),
            PhoneCall(switch, service.ws, rate=RATE) as victim,
        ):
            await victim.dial()
            forged = f"x%0AUnique-ID: {victim.call_id}%0AHangup-Cause: CALL_REJECTED"
            async with PhoneCall(switch, service.ws, rate=RATE, caller_name=forged) as evil:
                await evil.dial()
                await evil.wait_event(events.CALL_STARTED)
                await evil.end()
            await asyncio.sleep(0.5)
            await victim.converse([caller_says(speech, "booking")])
            await victim.end()
            records = [
                await asyncio.to_thread(service.wait_for_call, c.call_id) for c in (victim, evil)
            ]
            return victim, records

    victim, (victim_record, evil_record) = asyncio.run(scenario())
    assert evil_record["status"] == "ended"
    ended = victim.log.of(events.CALL_ENDED)  # the attacker's hangup did not end the victim's call
    assert len(ended) == 1 and ended[0]["data"]["hangup_cause"] == "NORMAL_CLEARING"
    assert len(victim.log.of(events.CALL_HANGUP)) == 1  # only its own, final hangup
    assert victim.log.of(events.BOT_SAID)  # still answered after the other call hung up
    assert victim_record["hangup_cause"] == "NORMAL_CLEARING"


def test_embedded_llama_cpp_model_answers_a_call(
    service_factory, tts, speech: Speech, stt: WhisperSTT
) -> None:
    async def scenario() -> tuple[PhoneCall, str]:
        async with (
            talking_service(
                service_factory,
                tts,
                llm="embedded",
                llm_max_tokens=40,
                greeting="",
                llm_timeout_s=60,
            ) as (switch, service),
            PhoneCall(switch, service.ws, rate=RATE) as call,
        ):
            await call.dial()
            await call.converse([caller_says(speech, "booking")], reply_limit_s=120)
            heard = await heard_by_caller(switch, call, stt)
            await call.end()
            return call, heard

    call, heard = asyncio.run(scenario())
    said = call.log.of(events.BOT_SAID)[0]["data"]
    assert said["reply"].strip()
    assert len(words(heard)) >= 2, heard  # real speech reached the caller


def test_bot_played_audio_matches_the_call_rate(
    service_factory, tts, ollama, speech: Speech
) -> None:
    """Chipmunk check: the greeting's WAV is at the call rate and plays for its real length."""

    async def scenario() -> list:
        async with (
            talking_service(service_factory, tts, ollama_url=ollama.url) as (
                switch,
                service,
            ),
            PhoneCall(switch, service.ws, rate=RATE) as call,
        ):
            await call.dial()
            await call.wait_bot_done()
            await call.end()
            return list(switch.channels[call.call_id].played)

    played = asyncio.run(scenario())
    assert len(played) == 1
    duration = played[0].stopped_at - played[0].started_at
    assert 1.5 < duration < 6, duration  # "Hello, thank you for calling..." spoken at normal pace


def test_a_reply_freeswitch_cannot_play_is_reported_and_the_bot_listens_again(
    service_factory, tts, ollama, speech: Speech
) -> None:
    async def ignore(server: Any, channel: Any, arg: str) -> None:
        return None  # like FreeSWITCH with a file it cannot open: no PLAYBACK events at all

    async def scenario() -> tuple[PhoneCall, dict]:
        async with talking_service(service_factory, tts, ollama_url=ollama.url, greeting="") as (
            switch,
            service,
        ):
            switch.app_handlers["playback"] = ignore
            async with PhoneCall(switch, service.ws, rate=RATE) as call:
                await call.dial()
                call.say(caller_says(speech, "booking"))
                await call.wait_event(events.BOT_SAID, limit_s=60)
                await call.wait_bot_done()
                await call.end()
            record = await asyncio.to_thread(service.wait_for_call, call.call_id)
            return call, record

    call, record = asyncio.run(scenario())
    errors = [e for e in record["errors"] if e["kind"] == "playback"]
    assert errors and "VOICEAI_MEDIA_DIR" in errors[0]["message"]
    assert call.log.of(events.BOT_SAID)[0]["data"]["text"] == ""  # nothing was heard


def test_losing_the_event_socket_is_recorded_and_the_service_reconnects(
    service_factory, tts, ollama, speech: Speech
) -> None:
    async def scenario() -> tuple[dict, PhoneCall]:
        async with talking_service(service_factory, tts, ollama_url=ollama.url, greeting="") as (
            switch,
            service,
        ):
            async with PhoneCall(switch, service.ws, rate=RATE) as call:
                await call.dial()
                await call.wait_event(events.CALL_STARTED)
                switch.drop_event_sockets()
                await call.wait_for(
                    lambda log: any(e["data"]["kind"] == "esl" for e in log.of(events.CALL_ERROR))
                )
                deadline = time.monotonic() + 20  # the service reconnects by itself
                while (await asyncio.to_thread(service.get, "/readyz")).status_code != 200:
                    assert time.monotonic() < deadline, "the service did not reconnect"
                    await asyncio.sleep(0.2)
                await call.converse([caller_says(speech, "booking")])  # and still answers
                await call.end()
            record = await asyncio.to_thread(service.wait_for_call, call.call_id)
            return record, call

    record, call = asyncio.run(scenario())
    lost = [e for e in record["errors"] if e["kind"] == "esl"]
    assert lost and "connection lost" in lost[0]["message"]
    assert call.log.of(events.BOT_SAID)
