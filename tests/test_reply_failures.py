"""Failures on the bot's reply path, through the real service and the FreeSWITCH emulator: the
caller hears the apology (when it can still be played) and is transferred to the fallback
number; never left in silence with the call stuck in "thinking"."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import words
from tests.speech import Speech
from tests.test_conversation import RATE, caller_says, heard_by_caller, talking_service
from voiceai import events
from voiceai.engines.stt import WhisperSTT
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall

FALLBACK = "+15551230000"
REPLY = "Of course. Let me look at the bookings for tomorrow evening and see what is free."


def unusable(path: Path) -> None:
    """A regular file where a folder must be: nothing can be written under it, even by root."""
    path.write_text("not a folder")


def transferred_to_fallback(call_id: str, commands: list[str]) -> bool:
    return f"uuid_transfer {call_id} bridge:sofia/gateway/ringcentral/{FALLBACK} inline" in commands


def test_an_unwritable_reply_folder_gives_the_apology_then_the_fallback_transfer(
    service_factory, tts, speech: Speech, stt: WhisperSTT, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    call_id = str(uuid.uuid4())
    unusable(media / call_id)  # the folder this call's replies are written to

    async def scenario() -> tuple[list[str], str, dict[str, Any]]:
        with OllamaEmulator(reply=lambda m: REPLY) as ollama:
            async with talking_service(
                service_factory,
                tts,
                ollama_url=ollama.url,
                fallback_number=FALLBACK,
                media_dir=media,
                greeting="",
                fork_rate=RATE,  # the apology is made at start for this rate
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE, call_id=call_id) as call:
                    await call.dial()
                    await call.wait_event(events.CALL_STARTED)
                    call.say(caller_says(speech, "booking"))
                    await call.wait_event(events.CALL_TRANSFERRED)
                    heard = await heard_by_caller(switch, call, stt)
                    commands = list(switch.commands)
                    await call.end()
                record = await asyncio.to_thread(service.wait_for_call, call_id)
                return commands, heard, record

    commands, heard, record = asyncio.run(scenario())
    assert transferred_to_fallback(call_id, commands)
    assert {"sorry", "trouble"} <= words(heard)  # the cached apology reached the caller
    media_errors = [e for e in record["errors"] if e["kind"] == "media"]
    assert media_errors and "VOICEAI_MEDIA_DIR" in media_errors[0]["message"]
    assert record["transferred_to"] == FALLBACK


def test_a_media_folder_gone_unwritable_transfers_the_caller_at_the_greeting(
    service_factory, tts, tmp_path: Path
) -> None:
    media = tmp_path / "media"

    async def scenario() -> tuple[str, list[str], dict[str, Any]]:
        with OllamaEmulator(reply=lambda m: REPLY) as ollama:
            async with talking_service(
                service_factory,
                tts,
                ollama_url=ollama.url,
                fallback_number=FALLBACK,
                media_dir=media,
                fork_rate=RATE,  # the greeting and apology are made at start for this rate
            ) as (switch, service):
                # Greeting and apology were cached at start; now every file in the folder is gone
                # and nothing can be written there: the caller would hear nothing at all.
                media.rename(tmp_path / "media-lost")
                unusable(media)
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    await call.wait_event(events.CALL_TRANSFERRED, limit_s=30)
                    commands = list(switch.commands)
                    await call.end()
                record = await asyncio.to_thread(service.wait_for_call, call.call_id)
                return call.call_id, commands, record

    call_id, commands, record = asyncio.run(scenario())
    assert transferred_to_fallback(call_id, commands)
    kinds = [e["kind"] for e in record["errors"]]
    assert kinds[:2] == ["greeting", "apology"]  # the apology was tried, and could not be made
    assert "VOICEAI_MEDIA_DIR" in record["errors"][0]["message"]
    assert record["transferred_to"] == FALLBACK
