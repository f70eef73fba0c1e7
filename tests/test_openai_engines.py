"""The OpenAI-compatible engines (chat and transcription) against the OpenAI wire-protocol
emulator on real sockets, and a whole call served by both through the FreeSWITCH emulator."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import words
from tests.speech import Speech
from tests.test_conversation import RATE, caller_says, heard_by_caller, talking_service
from voiceai.audio.pcm import decode_file, to_float
from voiceai.config import Settings, SettingsError, load_settings
from voiceai.conversation.responder import assistant_calling
from voiceai.engines.llm import LLMError, Message, ToolCall, ToolSpec, build_llm
from voiceai.engines.openai_chat import OpenAIChatLLM
from voiceai.engines.openai_stt import OpenAISTT, wav_bytes
from voiceai.engines.stt import STTError, WhisperSTT
from voiceai.preflight import check_startup
from voiceai.sim.ollama_server import split_pieces
from voiceai.sim.openai_server import DEFAULT_MODEL, DEFAULT_STT_MODEL, OpenAIEmulator, tool_call
from voiceai.sim.phone import PhoneCall

KEY = "sk-test-R4nd0mK3yVa1ue"
REPLY = "Our office opens at nine in the morning, and we close at five. Anything else?"
QUESTION: list[Message] = [
    {"role": "system", "content": "You are a friendly phone receptionist. Be brief."},
    {"role": "user", "content": "Hello, when do you open tomorrow?"},
]
TAKE_MESSAGE: ToolSpec = {
    "type": "function",
    "function": {
        "name": "take_message",
        "description": "Take a message for someone.",
        "parameters": {
            "type": "object",
            "required": ["name", "message"],
            "properties": {"name": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
CLIP = Path("/work/shared/speech/real/wav/en_timit_ldc93s1.wav")  # read in place
# "She had your dark suit in greasy wash water all year." (tiny.en mishears "dark ... in")
CLIP_WORDS = {"she", "had", "your", "suit", "greasy", "wash", "water", "all", "year"}


@pytest.fixture
def server() -> Iterator[OpenAIEmulator]:
    with OpenAIEmulator(reply=lambda messages: REPLY, api_key=KEY) as emulator:
        yield emulator


def chat(url: str, **overrides: Any) -> OpenAIChatLLM:
    args: dict[str, Any] = {"api_key": KEY, "max_tokens": 64}
    args.update(overrides)
    return OpenAIChatLLM(url, DEFAULT_MODEL, **args)


async def collect(
    llm: OpenAIChatLLM, messages: list[Message], tools: list[ToolSpec] | None = None
) -> list[Any]:
    try:
        async with aclosing(llm.stream_reply(messages, tools or ())) as stream:
            return [piece async for piece in stream]
    finally:
        await llm.aclose()


def llm_error(llm: OpenAIChatLLM, messages: list[Message] = QUESTION) -> tuple[str, float]:
    started = time.perf_counter()
    with pytest.raises(LLMError) as caught:
        asyncio.run(collect(llm, messages))
    return str(caught.value), time.perf_counter() - started


def closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


# --- chat -------------------------------------------------------------------------------------


def test_reply_is_streamed_in_pieces_with_the_key_and_limits(server: OpenAIEmulator) -> None:
    llm = chat(server.url)
    pieces = asyncio.run(collect(llm, QUESTION))

    assert llm.name == f"openai:{DEFAULT_MODEL}"
    assert "".join(pieces) == REPLY
    assert len(pieces) == len(split_pieces(REPLY)) > 5
    [request] = server.chat_requests
    assert (request.status, request.outcome, request.stream) == (200, "done", True)
    assert (request.model, request.max_tokens, request.tools) == (DEFAULT_MODEL, 64, [])
    assert request.messages == QUESTION


def test_fragmented_tool_call_arguments_are_joined_into_tool_calls() -> None:
    def reply(messages: list[dict[str, Any]]) -> list[Any]:
        return [
            "One moment. ",
            tool_call("take_message", name="Ann Smith", message="Call back about the invoice"),
            tool_call("transfer_to_person", reason="billing"),
        ]

    with OpenAIEmulator(reply=reply, argument_piece_chars=4) as emulator:
        items = asyncio.run(collect(chat(emulator.url), QUESTION, [TAKE_MESSAGE]))
        request = emulator.chat_requests[-1]

    texts = [item for item in items if isinstance(item, str)]
    calls = [item for item in items if isinstance(item, ToolCall)]
    assert "".join(texts) == "One moment. "
    assert items[len(texts) :] == calls  # the calls come after the text
    assert [(c.name, c.arguments) for c in calls] == [
        ("take_message", {"name": "Ann Smith", "message": "Call back about the invoice"}),
        ("transfer_to_person", {"reason": "billing"}),
    ]
    assert all(c.id.startswith("call_") for c in calls)
    # The arguments really came in many pieces (4 characters each), not whole.
    assert request.chunks_sent > len(split_pieces("One moment. ")) + 15
    assert request.tools == [TAKE_MESSAGE]


def test_history_with_tool_turns_is_sent_in_openai_shape(server: OpenAIEmulator) -> None:
    calls = [
        ToolCall("lookup_hours", {"day": "Sunday"}),
        ToolCall("take_message", {"name": "Ann", "message": "Call me"}),
    ]
    history: list[Message] = [
        *QUESTION,
        assistant_calling("", calls),  # what the responder appends, in Ollama's shape
        {"role": "tool", "content": "Closed on Sunday.", "tool_name": "lookup_hours"},
        {"role": "tool", "content": "Message taken.", "tool_name": "take_message"},
        {"role": "user", "content": "Thank you."},
    ]

    asyncio.run(collect(chat(server.url), history))
    asyncio.run(collect(chat(server.url), history))

    first, second = server.chat_requests
    assert first.status == 200  # the emulator refuses tool turns OpenAI would refuse
    assistant, hours, message = first.messages[2:5]
    assert assistant["content"] is None
    sent = assistant["tool_calls"]
    assert [c["type"] for c in sent] == ["function", "function"]
    assert [c["function"]["name"] for c in sent] == ["lookup_hours", "take_message"]
    assert [json.loads(c["function"]["arguments"]) for c in sent] == [c.arguments for c in calls]
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", c["id"]) for c in sent)  # Mistral's rule
    assert hours == {"role": "tool", "tool_call_id": sent[0]["id"], "content": "Closed on Sunday."}
    assert message == {"role": "tool", "tool_call_id": sent[1]["id"], "content": "Message taken."}
    assert second.messages == first.messages  # the same ids each time: prefix caches match


def test_slow_first_token_raises_and_stops_the_stream(server: OpenAIEmulator) -> None:
    server.first_token_delay_s = 5.0  # the role-only first chunk still comes at once

    message, elapsed = llm_error(chat(server.url, first_token_timeout_s=0.5))

    assert "no first token within 0.5 s" in message
    assert server.url in message
    assert 0.4 < elapsed < 2.0
    assert server.wait_outcome() == "disconnected"  # the server is told to stop generating


def test_reply_longer_than_the_total_timeout_raises(server: OpenAIEmulator) -> None:
    server.token_delay_s = 0.1  # ~18 pieces: ~1.8 s

    message, elapsed = llm_error(chat(server.url, total_timeout_s=0.6))

    assert "not finished within 0.6 s" in message
    assert elapsed < 1.5
    assert 0 < server.chat_requests[-1].chunks_sent < len(split_pieces(REPLY))


def test_closing_the_consumer_closes_the_stream(server: OpenAIEmulator) -> None:
    server.token_delay_s = 0.05

    async def take_two() -> list[str]:
        llm = chat(server.url)
        try:
            async with aclosing(llm.stream_reply(QUESTION)) as stream:
                return [str(await anext(stream)), str(await anext(stream))]
        finally:
            await llm.aclose()

    assert len(asyncio.run(take_two())) == 2
    assert server.wait_outcome() == "disconnected"


def test_wrong_or_missing_key_raises_without_showing_the_key(server: OpenAIEmulator) -> None:
    wrong = "sk-wrong-Zq8vWx3Lm9Tt"

    message, _ = llm_error(chat(server.url, api_key=wrong))
    no_key, _ = llm_error(chat(server.url, api_key=""))

    assert "HTTP 401" in message and "VOICEAI_OPENAI_API_KEY" in message
    assert wrong not in message and wrong[-4:] not in message  # OpenAI's 401 echoes its ends
    assert "wants an API key" in no_key
    assert [r.status for r in server.chat_requests] == [401, 401]


def test_unknown_model_server_failure_and_mid_stream_error_are_llm_errors(
    server: OpenAIEmulator,
) -> None:
    unknown = OpenAIChatLLM(server.url, "no-such-model", api_key=KEY)
    message, _ = llm_error(unknown)
    assert "HTTP 404" in message and "'no-such-model'" in message
    assert "VOICEAI_OPENAI_MODEL" in message and "does not exist" in message

    server.fail_with = "CUDA out of memory"
    message, _ = llm_error(chat(server.url))
    assert "HTTP 500" in message and "CUDA out of memory" in message

    server.fail_with, server.fail_after_chunks = None, 3
    message, _ = llm_error(chat(server.url))
    assert "failed mid-stream" in message and "Internal server error" in message


def test_unreachable_server_raises_quickly_naming_its_url() -> None:
    url = closed_url()

    message, elapsed = llm_error(chat(url))

    assert message.startswith(f"OpenAI-compatible server at {url} is not reachable")
    assert elapsed < 3.0


def test_warm_up_asks_for_one_token_and_reports_a_bad_model(server: OpenAIEmulator) -> None:
    async def warm(llm: OpenAIChatLLM) -> None:
        try:
            await llm.warm_up()
        finally:
            await llm.aclose()

    asyncio.run(warm(chat(server.url)))
    [request] = server.chat_requests
    assert (request.status, request.stream, request.max_tokens) == (200, False, 1)

    with pytest.raises(LLMError, match="no model 'gone'"):
        asyncio.run(warm(OpenAIChatLLM(server.url, "gone", api_key=KEY)))


def test_llm_openai_is_built_from_the_settings_and_named_keys_are_secrets(
    server: OpenAIEmulator,
) -> None:
    settings = Settings(
        llm="openai",
        openai_url=server.url,
        openai_model=DEFAULT_MODEL,
        openai_api_key=KEY,
        stt_api_key="stt-" + KEY,
    )

    async def built() -> list[Any]:
        llm = await build_llm(settings)
        assert isinstance(llm, OpenAIChatLLM)
        return await collect(llm, QUESTION)  # with the key: the emulator answers

    assert "".join(asyncio.run(built())) == REPLY
    assert {KEY, "stt-" + KEY} <= set(settings.secret_values())  # the log scrubber gets them


def test_missing_server_settings_are_named_without_echoing_the_key() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(llm="openai", openai_model=DEFAULT_MODEL, openai_api_key=KEY)
    assert "VOICEAI_OPENAI_URL" in str(caught.value)
    assert KEY not in str(caught.value)

    with pytest.raises(SettingsError, match="VOICEAI_STT_MODEL to name the server's model"):
        load_settings(stt_engine="openai", stt_url="http://gpu-box:8000/v1")
    with pytest.raises(SettingsError, match=r"VOICEAI_STT_URL: .*http:// or https://"):
        load_settings(stt_engine="openai", stt_url="gpu-box:8000", stt_model="whisper-1")


# --- transcription --------------------------------------------------------------------------


def test_real_speech_is_transcribed_through_the_server(stt: WhisperSTT) -> None:
    audio = to_float(decode_file(CLIP, 16000))

    async def transcribe(url: str) -> Any:
        engine = OpenAISTT(url, DEFAULT_STT_MODEL, api_key=KEY)
        try:
            return await engine.transcribe(audio, None)
        finally:
            await engine.aclose()

    with OpenAIEmulator(whisper=stt, api_key=KEY) as emulator:
        transcript = asyncio.run(transcribe(emulator.url))
        [request] = emulator.transcription_requests

    assert transcript is not None
    assert words(transcript.text) >= CLIP_WORDS, transcript.text
    assert transcript.language == "en"
    assert transcript.audio_s == pytest.approx(2.92, abs=0.05)
    assert 0.3 < transcript.tail_confidence < 1.0  # from the words' probabilities
    assert request.status == 200 and (request.filename, request.file_type) == (
        "turn.wav",
        "audio/wav",
    )
    assert request.fields["model"] == [DEFAULT_STT_MODEL]
    assert request.fields["language"] == ["en"]  # a *.en model is only asked for English
    assert request.fields["response_format"] == ["verbose_json"]
    assert request.fields["timestamp_granularities[]"] == ["segment", "word"]


def test_openai_style_answer_gives_a_language_code_and_full_confidence() -> None:
    async def transcribe(url: str) -> Any:
        engine = OpenAISTT(url, "whisper-1")
        try:
            return await engine.transcribe(np.full(16000, 0.01, np.float32), None)
        finally:
            await engine.aclose()

    with OpenAIEmulator(
        stt_models=["whisper-1"], transcript="Please call me back.", flavour="openai"
    ) as emulator:
        transcript = asyncio.run(transcribe(emulator.url))
        [request] = emulator.transcription_requests

    assert transcript is not None
    assert (transcript.text, transcript.language) == ("Please call me back.", "en")  # "english"
    assert transcript.tail_confidence == 1.0  # OpenAI's words carry no probability
    assert "language" not in request.fields  # a multilingual model detects it


def test_silence_is_no_speech(stt: WhisperSTT) -> None:
    async def transcribe(url: str) -> Any:
        engine = OpenAISTT(url, DEFAULT_STT_MODEL)
        try:
            return await engine.transcribe(np.zeros(16000, np.float32), "en")
        finally:
            await engine.aclose()

    with OpenAIEmulator(whisper=stt) as emulator:
        assert asyncio.run(transcribe(emulator.url)) is None
        assert emulator.transcription_requests[-1].status == 200


def test_transcription_failures_are_stt_errors_naming_the_server() -> None:
    url = closed_url()

    async def transcribe(url: str, model: str = DEFAULT_STT_MODEL, key: str = "") -> Any:
        engine = OpenAISTT(url, model, api_key=key)
        try:
            return await engine.transcribe(np.full(8000, 0.01, np.float32), "en")
        finally:
            await engine.aclose()

    with pytest.raises(STTError, match=f"transcription server at {re.escape(url)} is not reach"):
        asyncio.run(transcribe(url))
    with OpenAIEmulator(transcript="Hello.", api_key=KEY) as emulator:
        with pytest.raises(STTError) as caught:
            asyncio.run(transcribe(emulator.url, key="sk-wrong-Zq8vWx3Lm9Tt"))
        assert "VOICEAI_STT_API_KEY" in str(caught.value) and "Zq8v" not in str(caught.value)
        with pytest.raises(STTError, match=r"no model 'large-v9'.*HTTP 404"):
            asyncio.run(transcribe(emulator.url, model="large-v9", key=KEY))


def test_emulator_checks_the_multipart_form_as_a_server_does() -> None:
    wav = ("turn.wav", wav_bytes(np.full(8000, 0.01, np.float32)), "audio/wav")
    with OpenAIEmulator(transcript="Hello there.", api_key=KEY) as emulator:
        url, auth = emulator.url + "/audio/transcriptions", {"Authorization": f"Bearer {KEY}"}
        # A multipart form with the model as its only field: (None, text) is a plain field.
        no_file = httpx.post(url, headers=auth, files={"model": (None, DEFAULT_STT_MODEL)})
        as_json = httpx.post(url, headers=auth, json={"model": DEFAULT_STT_MODEL})
        no_model = httpx.post(url, headers=auth, files={"file": wav})
        not_audio = httpx.post(
            url,
            headers=auth,
            data={"model": DEFAULT_STT_MODEL},
            files={"file": ("x.wav", b"not audio", "audio/wav")},
        )
        no_key = httpx.post(url, data={"model": DEFAULT_STT_MODEL}, files={"file": wav})
        text = httpx.post(
            url,
            headers=auth,
            data={"model": DEFAULT_STT_MODEL, "response_format": "text"},
            files={"file": wav},
        )

    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]["message"]
    assert as_json.status_code == 400 and "multipart" in as_json.json()["error"]["message"]
    assert no_model.status_code == 400 and "'model'" in no_model.json()["error"]["message"]
    assert not_audio.status_code == 400 and "file format" in not_audio.json()["error"]["message"]
    assert no_key.status_code == 401
    assert (text.status_code, text.text) == (200, "Hello there.\n")


def test_preflight_needs_no_local_model_for_a_transcription_server(tmp_path: Path) -> None:
    values: dict[str, Any] = {
        "media_dir": tmp_path / "media",
        "database_url": f"sqlite:///{tmp_path}/calls.db",
        "stt_model": "Systran/faster-whisper-large-v3",  # not downloaded here
    }
    with pytest.raises(SettingsError, match="not downloaded"):
        check_startup(Settings(**values))

    check_startup(Settings(stt_engine="openai", stt_url="http://gpu-box:8000/v1", **values))


# --- a whole call -----------------------------------------------------------------------------


def answer(messages: list[dict[str, Any]]) -> str:
    said = str(messages[-1].get("content") or "").lower()
    if "pharmacy" in said:
        return "The pharmacy opens at noon on Sunday."
    return "Sorry, could you say that again?"


def test_a_call_is_heard_and_answered_through_the_inference_servers(
    service_factory: Any, tts: Any, speech: Speech, stt: WhisperSTT
) -> None:
    async def scenario(emulator: OpenAIEmulator) -> tuple[str, dict[str, Any]]:
        servers = {
            "llm": "openai",
            "openai_url": emulator.url,
            "openai_model": DEFAULT_MODEL,
            "openai_api_key": KEY,
            "stt_engine": "openai",
            "stt_url": emulator.url,
            "stt_model": DEFAULT_STT_MODEL,
            "stt_api_key": KEY,
        }
        async with talking_service(service_factory, tts, own_stt=True, greeting="", **servers) as (
            switch,
            service,
        ):
            async with PhoneCall(switch, service.ws, rate=RATE) as call:
                await call.dial()
                await call.converse([caller_says(speech, "pharmacy")])
                heard = await heard_by_caller(switch, call, stt)
                await call.end()
            record = await asyncio.to_thread(service.wait_for_call, call.call_id)
        return heard, record

    with OpenAIEmulator(reply=answer, whisper=stt, api_key=KEY) as emulator:
        heard, record = asyncio.run(scenario(emulator))
        transcribed = [r.text for r in emulator.transcription_requests if r.status == 200]
        replies = [r for r in emulator.chat_requests if r.stream]

    assert {"pharmacy", "noon", "sunday"} <= words(heard), heard  # answered out loud
    assert any({"pharmacy", "sunday"} <= words(text) for text in transcribed)
    assert replies and replies[-1].status == 200
    assert "pharmacy" in replies[-1].messages[-1]["content"].lower()
    assert record["engines"]["stt"] == f"openai:{DEFAULT_STT_MODEL}"
    assert record["engines"]["llm"] == f"openai:{DEFAULT_MODEL}"
    assert [t["speaker"] for t in record["turns"]] == ["caller", "bot"]
