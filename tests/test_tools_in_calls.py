"""Tools during real calls: the Ollama emulator returns tool calls in Ollama's wire format, a
real local HTTP server is the webhook, the FreeSWITCH emulator carries the call, and what the
caller hears is transcribed by real Whisper."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.conftest import words
from tests.speech import Speech
from tests.test_conversation import RATE, caller_says, heard_by_caller, talking_service
from tests.test_tools import SECRET, Webhook, hook, webhook  # noqa: F401 (fixtures)
from voiceai import events
from voiceai.engines.stt import WhisperSTT
from voiceai.sim.ollama_server import OllamaEmulator, tool_call
from voiceai.sim.phone import PhoneCall

FALLBACK = "+15551230000"
HOOK_ENV = "VOICEAI_TEST_ORDER_HOOK"


def tools_file(folder: Path, url: str) -> Path:
    path = folder / "tools.yaml"
    path.write_text(
        f"""
- name: order_status
  description: Look up an order's status by its number.
  url: {url}
  method: POST
  timeout_s: 4
  auth_header: Authorization
  auth_env: {HOOK_ENV}
  parameters:
    type: object
    properties:
      order_number: {{type: string}}
    required: [order_number]
"""
    )
    return path


def answer_from_the_tool(messages: list[dict[str, Any]]) -> Any:
    """Asks for the order's status, then answers from what the tool said."""
    last = messages[-1]
    if last["role"] != "tool":
        return tool_call("order_status", order_number="12345")
    if last["content"].startswith("error"):
        return "I could not check that right now, is there anything else?"
    return f"Your order has {json.loads(last['content'])['status']}."


def played_after(commands: list[str], call_id: str, marker: str) -> list[str]:
    """Playback commands for the call sent after the first command containing `marker`."""
    index = next(i for i, c in enumerate(commands) if marker in c)
    return [c for c in commands[index + 1 :] if call_id in c and "playback" in c]


def test_a_slow_webhook_gets_the_filler_and_its_answer_is_spoken(
    service_factory,
    tts,
    speech: Speech,
    stt: WhisperSTT,
    hook: Webhook,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(HOOK_ENV, SECRET)

    async def scenario() -> tuple[str, OllamaEmulator, dict[str, Any]]:
        with OllamaEmulator(reply=answer_from_the_tool) as ollama:
            async with talking_service(
                service_factory,
                tts,
                ollama_url=ollama.url,
                greeting="",
                tools_file=tools_file(tmp_path, f"{hook.url}/slow"),  # answers after 2 s
                tool_filler_ms=300,
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    await call.converse([caller_says(speech, "booking")], reply_limit_s=60)
                    used = await call.wait_event(events.TOOL_CALLED)
                    await call.wait_event(events.BOT_SAID)
                    heard = await heard_by_caller(switch, call, stt)
                    await call.end()
                return heard, ollama, used

    heard, ollama, used = asyncio.run(scenario())
    assert {"one", "moment"} <= words(heard)  # the filler while the webhook worked
    first, second = ollama.requests[-2:]
    assert [t["function"]["name"] for t in first.tools][-1] == "order_status"
    assert second.messages[-1] == {
        "role": "tool",
        "content": '{"late": true}',
        "tool_name": "order_status",
    }
    assert hook.seen[0].headers["authorization"] == SECRET
    assert json.loads(hook.seen[0].body) == {"order_number": "12345"}
    assert used["data"]["ok"] is True and used["data"]["duration_ms"] >= 1500


def test_a_webhook_answer_reaches_the_model_and_the_reply_is_spoken(
    service_factory,
    tts,
    speech: Speech,
    stt: WhisperSTT,
    hook: Webhook,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(HOOK_ENV, SECRET)

    async def scenario() -> tuple[str, OllamaEmulator, str]:
        with OllamaEmulator(reply=answer_from_the_tool) as ollama:
            async with talking_service(
                service_factory,
                tts,
                ollama_url=ollama.url,
                greeting="",
                tools_file=tools_file(tmp_path, f"{hook.url}/echo"),
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    await call.converse([caller_says(speech, "booking")])
                    said = (await call.wait_event(events.BOT_SAID))["data"]["text"]
                    heard = await heard_by_caller(switch, call, stt)
                    await call.end()
                return heard, ollama, said

    heard, ollama, said = asyncio.run(scenario())
    assert said == "Your order has shipped."  # the answer, from the webhook's words
    assert {"your", "order"} <= words(heard)  # ...played (tiny.en may mishear "shipped")
    assert "moment" not in words(heard)  # a quick tool needs no filler
    assert json.loads(ollama.requests[-1].messages[-1]["content"])["status"] == "shipped"


def test_a_failing_webhook_gets_the_apology_and_the_call_goes_on(
    service_factory,
    tts,
    speech: Speech,
    stt: WhisperSTT,
    hook: Webhook,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(HOOK_ENV, SECRET)

    async def scenario() -> tuple[str, OllamaEmulator, dict[str, Any], int]:
        with OllamaEmulator(reply=answer_from_the_tool) as ollama:
            async with talking_service(
                service_factory,
                tts,
                ollama_url=ollama.url,
                greeting="",
                tools_file=tools_file(tmp_path, f"{hook.url}/fail"),  # HTTP 500
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    await call.converse([caller_says(speech, "booking")])
                    used = await call.wait_event(events.TOOL_CALLED)
                    await call.wait_event(events.BOT_SAID)
                    call.say(caller_says(speech, "invoice"))  # and the call goes on
                    await call.wait_event(events.BOT_SAID, count=2)
                    heard = await heard_by_caller(switch, call, stt)
                    live = switch.live_channel(call.call_id) is not None
                    await call.end()
                return heard, ollama, used, int(live)

    heard, ollama, used, live = asyncio.run(scenario())
    assert {"sorry", "couldn't"} <= words(heard) or {"sorry", "could"} <= words(heard)
    assert used["data"]["ok"] is False and "HTTP 500" in used["data"]["result"]
    assert SECRET not in used["data"]["result"]
    told = [m for r in ollama.requests for m in r.messages if m["role"] == "tool"]
    assert told and told[0]["content"].startswith("error: the tool failed")
    assert live == 1


def test_the_transfer_tool_transfers_and_nothing_plays_after_it(
    service_factory, tts, speech: Speech, stt: WhisperSTT
) -> None:
    def reply(messages: list[dict[str, Any]]) -> Any:
        return [
            "Let me put you through to a colleague.",
            tool_call("transfer_to_person", reason="asked"),
        ]

    async def scenario() -> tuple[str, list[str], str]:
        with OllamaEmulator(reply=reply) as ollama:
            async with talking_service(
                service_factory,
                tts,
                ollama_url=ollama.url,
                greeting="",
                fallback_number=FALLBACK,
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    call.say(caller_says(speech, "booking"))
                    await call.wait_event(events.CALL_TRANSFERRED)
                    call.say(caller_says(speech, "invoice"))  # talking to the person now
                    # The service still hears that turn (its transcript), and must stay quiet:
                    # a reply would have been sent within a second and a half of it.
                    await call.wait_event(events.TRANSCRIPT_FINAL, count=2)
                    await asyncio.sleep(1.5)  # the window in which nothing may happen
                    heard = await heard_by_caller(switch, call, stt)
                    commands = list(switch.commands)
                    await call.end()
                return heard, commands, call.call_id

    heard, commands, call_id = asyncio.run(scenario())
    assert {"put", "through"} <= words(heard)  # what it said before the tool, then the transfer
    transfer = f"uuid_transfer {call_id} bridge:sofia/gateway/ringcentral/{FALLBACK} inline"
    assert transfer in commands
    assert played_after(commands, call_id, transfer) == []


def test_the_end_call_tool_says_goodbye_and_hangs_up(
    service_factory, tts, speech: Speech, stt: WhisperSTT
) -> None:
    async def scenario() -> tuple[str, list[str], str]:
        with OllamaEmulator(reply=lambda m: tool_call("end_call", reason="done")) as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, greeting=""
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    call.say(caller_says(speech, "booking"))
                    await call.wait_event(events.CALL_ENDED)
                    heard = await heard_by_caller(switch, call, stt)
                return heard, list(switch.commands), call.call_id

    heard, commands, call_id = asyncio.run(scenario())
    assert {"thank", "you"} <= words(heard) and words(heard) & {"bye", "goodbye"}
    assert any(
        c.startswith(f"api uuid_kill {call_id}") or f"uuid_kill {call_id}" in c for c in commands
    )


def test_take_message_stores_a_message_the_api_lists(service_factory, tts, speech: Speech) -> None:
    def reply(messages: list[dict[str, Any]]) -> Any:
        if messages[-1]["role"] == "tool":
            return "I have passed your message on."
        return tool_call(
            "take_message", name="Ann Lee", callback_number="+15550123", message="Call me back"
        )

    async def scenario() -> tuple[dict[str, Any], httpx.Response, dict[str, Any]]:
        with OllamaEmulator(reply=reply) as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, greeting=""
            ) as (switch, service):
                async with PhoneCall(switch, service.ws, rate=RATE) as call:
                    await call.dial()
                    await call.converse([caller_says(speech, "callback")])
                    taken = await call.wait_event(events.MESSAGE_TAKEN)
                    await call.wait_event(events.BOT_SAID)
                    async with connect(f"{service.ws}/ws/live") as late:  # a viewer comes late
                        snapshot = json.loads(await late.recv())
                    await call.end()
                listed = await asyncio.to_thread(service.get, "/api/messages")
                return taken, listed, snapshot

    taken, listed, snapshot = asyncio.run(scenario())
    (summary,) = snapshot["data"]["calls"]
    assert [t["name"] for t in summary["tool_calls"]] == ["take_message"]
    assert summary["messages"][0]["message"] == "Call me back"
    assert taken["data"] == {
        "name": "Ann Lee",
        "callback_number": "+15550123",
        "message": "Call me back",
    }
    assert listed.status_code == 200
    (message,) = listed.json()["messages"]
    assert message["name"] == "Ann Lee" and message["message"] == "Call me back"


def test_two_dialled_numbers_get_their_own_greeting_and_prompt(
    service_factory, tts, speech: Speech, stt: WhisperSTT, tmp_path: Path
) -> None:
    agents = tmp_path / "agents.yaml"
    agents.write_text(
        """
default:
  greeting: Hello from the main desk.
"15551230001":
  prompt: You are the receptionist of the bakery.
  greeting: Welcome to the bakery.
"15551230002":
  prompt: You are the receptionist of the garage.
  greeting: Welcome to the garage.
"""
    )

    async def scenario() -> tuple[dict[str, str], dict[str, str]]:
        heard: dict[str, str] = {}
        prompts: dict[str, str] = {}
        with OllamaEmulator(reply=lambda m: "Sure.") as ollama:
            async with talking_service(
                service_factory, tts, ollama_url=ollama.url, agents_file=agents
            ) as (switch, service):
                for did in ("15551230001", "15551230002", "15559999999"):
                    async with PhoneCall(switch, service.ws, rate=RATE, did=did) as call:
                        await call.dial()
                        said = await call.wait_event(events.BOT_SAID)
                        heard[did] = said["data"]["text"]  # the greeting played (its words)
                        await call.converse([caller_says(speech, "booking")])
                        prompts[did] = ollama.requests[-1].messages[0]["content"]
                        await call.end()
        return heard, prompts

    heard, prompts = asyncio.run(scenario())
    assert heard["15551230001"] == "Welcome to the bakery."
    assert heard["15551230002"] == "Welcome to the garage."
    assert heard["15559999999"] == "Hello from the main desk."  # the default entry
    assert prompts["15551230001"].startswith("You are the receptionist of the bakery.")
    assert prompts["15551230002"].startswith("You are the receptionist of the garage.")
