"""The LLM engines: OllamaLLM against the Ollama emulator on a real socket, EmbeddedLLM with
the real SmolLM2 GGUF, and build_llm's choice between them."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from voiceai.config import Settings
from voiceai.engines.llm import (
    AutoLLM,
    EmbeddedLLM,
    LanguageModel,
    LLMError,
    Message,
    OllamaLLM,
    ToolCall,
    ToolSpec,
    build_llm,
    parse_arguments,
    probe_ollama,
    tools_warning,
)
from voiceai.sim.ollama_server import OllamaEmulator, split_pieces, tool_call

MODEL = "llama3.2:3b"
REPLY = "Our office opens at nine in the morning, and we close at five. Anything else?"
LONG_REPLY = " ".join(["We are open on weekdays and closed on public holidays."] * 10)
PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION: list[Message] = [
    {"role": "system", "content": "You are a friendly phone receptionist. Be brief."},
    {"role": "user", "content": "Hello, when do you open tomorrow?"},
]
STORY: list[Message] = [  # SmolLM2 reliably writes until max_tokens on this one
    {"role": "user", "content": "Write a long story about a cat who works as a receptionist."}
]


def function_tool(name: str, description: str, /, **params: str) -> ToolSpec:
    """A tool spec in Ollama's shape, with string parameters (all required)."""
    properties = {key: {"type": "string", "description": text} for key, text in params.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "required": list(params), "properties": properties},
        },
    }


TOOLS: list[ToolSpec] = [
    function_tool("transfer_to_person", "Put the caller through to a person.", reason="Why."),
    function_tool(
        "take_message",
        "Take a message.",
        name="Who it is for.",
        callback_number="Number to call back.",
        message="The message.",
    ),
]


@pytest.fixture
def ollama() -> Iterator[OllamaEmulator]:
    with OllamaEmulator(reply=lambda messages: REPLY) as emulator:
        yield emulator


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ollama_llm(url: str, **overrides: object) -> OllamaLLM:
    args: dict[str, object] = {"keep_alive": "30m", "max_tokens": 64}
    args.update(overrides)
    return OllamaLLM(url, MODEL, **args)  # type: ignore[arg-type]


async def collect(
    llm: LanguageModel, messages: list[Message], tools: list[ToolSpec] | None = None
) -> list[Any]:
    """Everything the stream yields (text pieces and ToolCall items), then closes the engine."""
    try:
        async with aclosing(llm.stream_reply(messages, tools or ())) as stream:
            return [piece async for piece in stream]
    finally:
        await llm.aclose()


async def take_then_close(stream: AsyncIterator[str], count: int) -> tuple[list[str], float]:
    """Reads `count` pieces, closes the stream; returns them and how long closing took."""
    pieces: list[str] = []
    async for piece in stream:
        pieces.append(piece)
        if len(pieces) == count:
            break
    started = time.perf_counter()
    await stream.aclose()  # type: ignore[attr-defined]
    return pieces, time.perf_counter() - started


def error_of(run: Callable[[], Coroutine[Any, Any, object]]) -> tuple[str, float]:
    """Runs an async callable that must raise LLMError; returns the message and the time."""
    started = time.perf_counter()
    with pytest.raises(LLMError) as caught:
        asyncio.run(run())
    return str(caught.value), time.perf_counter() - started


# --- Ollama ---------------------------------------------------------------------------------


def test_ollama_streams_the_scripted_reply_in_pieces(ollama: OllamaEmulator) -> None:
    llm = ollama_llm(ollama.url)
    pieces = asyncio.run(collect(llm, QUESTION))

    assert llm.name == f"ollama:{MODEL}"
    assert "".join(pieces) == REPLY
    assert len(pieces) == len(split_pieces(REPLY)) > 5
    [request] = ollama.requests
    assert (request.path, request.model, request.stream) == ("/api/chat", MODEL, True)
    assert request.keep_alive == "30m"
    assert request.options == {"num_predict": 64}
    assert request.messages == QUESTION
    assert request.outcome == "done"


def test_ollama_max_tokens_reaches_the_server(ollama: OllamaEmulator) -> None:
    pieces = asyncio.run(collect(ollama_llm(ollama.url, max_tokens=4), QUESTION))

    assert pieces == split_pieces(REPLY)[:4]
    assert ollama.requests[-1].options == {"num_predict": 4}


def test_ollama_warm_up_loads_the_model_with_keep_alive(ollama: OllamaEmulator) -> None:
    async def warm() -> None:
        llm = ollama_llm(ollama.url, keep_alive="45m")
        try:
            await llm.warm_up()
        finally:
            await llm.aclose()

    asyncio.run(warm())

    [request] = ollama.requests
    assert (request.path, request.model, request.keep_alive) == ("/api/generate", MODEL, "45m")
    assert not request.prompt
    assert request.outcome == "done"


def test_ollama_slow_first_token_raises_quickly(ollama: OllamaEmulator) -> None:
    ollama.first_token_delay_s = 5.0
    llm = ollama_llm(ollama.url, first_token_timeout_s=0.5)

    message, elapsed = error_of(lambda: collect(llm, QUESTION))

    assert "no first token within 0.5 s" in message
    assert 0.4 < elapsed < 2.0
    assert ollama.wait_outcome() == "disconnected"  # the server is told to stop generating


def test_ollama_reply_longer_than_total_timeout_raises(ollama: OllamaEmulator) -> None:
    ollama.token_delay_s = 0.1  # the reply's ~18 pieces take ~1.8 s
    llm = ollama_llm(ollama.url, total_timeout_s=0.6)

    message, elapsed = error_of(lambda: collect(llm, QUESTION))

    assert "not finished within 0.6 s" in message
    assert elapsed < 1.5
    assert 0 < ollama.requests[-1].pieces_sent < len(split_pieces(REPLY))


def test_ollama_dead_port_raises_a_clear_error_without_hanging() -> None:
    url = f"http://127.0.0.1:{closed_port()}"

    message, elapsed = error_of(lambda: collect(ollama_llm(url), QUESTION))
    assert message.startswith(f"Ollama at {url} is not reachable:")
    assert elapsed < 3.0

    async def warm() -> None:
        llm = ollama_llm(url)
        try:
            await llm.warm_up()
        finally:
            await llm.aclose()

    message, elapsed = error_of(warm)
    assert message.startswith(f"Ollama at {url} is not reachable:")
    assert elapsed < 3.0


def test_ollama_http_500_becomes_llm_error(ollama: OllamaEmulator) -> None:
    ollama.fail_with = "llama runner process has terminated: signal: killed"

    message, _ = error_of(lambda: collect(ollama_llm(ollama.url), QUESTION))

    assert "HTTP 500" in message
    assert "llama runner process has terminated" in message


def test_ollama_error_line_mid_stream_becomes_llm_error(ollama: OllamaEmulator) -> None:
    ollama.fail_after_pieces = 3
    seen: list[str] = []

    async def run() -> None:
        llm = ollama_llm(ollama.url)
        try:
            async with aclosing(llm.stream_reply(QUESTION)) as stream:
                async for piece in stream:
                    seen.append(piece)
        finally:
            await llm.aclose()

    message, _ = error_of(run)

    assert seen == split_pieces(REPLY)[:3]
    assert "mid-stream" in message and "unexpected EOF" in message


def test_ollama_unknown_model_says_to_pull_it(ollama: OllamaEmulator) -> None:
    llm = OllamaLLM(ollama.url, "qwen9:70b")

    message, _ = error_of(lambda: collect(llm, QUESTION))

    assert "has no model 'qwen9:70b'" in message
    assert "ollama pull qwen9:70b" in message
    assert 'model "qwen9:70b" not found' in message


def test_closing_the_consumer_stops_the_ollama_stream(ollama: OllamaEmulator) -> None:
    ollama.reply = lambda messages: LONG_REPLY
    ollama.token_delay_s = 0.05  # the whole reply would take ~5 s

    async def run() -> tuple[list[str], float, str]:
        llm = ollama_llm(ollama.url, max_tokens=500)
        try:
            pieces, close_s = await take_then_close(llm.stream_reply(QUESTION), 3)
            # Blocks the loop on purpose: only what aclose() itself did can close the request
            # (not the client's teardown, nor a later garbage-collection task).
            outcome = ollama.wait_outcome()
            return pieces, close_s, outcome
        finally:
            await llm.aclose()

    pieces, close_s, outcome = asyncio.run(run())

    assert "".join(pieces) == "".join(split_pieces(LONG_REPLY)[:3])
    assert close_s < 0.5
    assert outcome == "disconnected"
    assert ollama.requests[-1].pieces_sent < len(split_pieces(LONG_REPLY)) // 2


def test_cancelling_the_consumer_task_stops_the_ollama_stream(ollama: OllamaEmulator) -> None:
    ollama.reply = lambda messages: LONG_REPLY
    ollama.token_delay_s = 0.05

    async def run() -> float:
        llm = ollama_llm(ollama.url, max_tokens=500)
        first = asyncio.Event()

        async def consume() -> None:
            async for _piece in llm.stream_reply(QUESTION):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.perf_counter() - started
        await llm.aclose()
        return elapsed

    assert asyncio.run(run()) < 0.5
    assert ollama.wait_outcome() == "disconnected"


def test_probe_ollama_answers_only_for_a_live_server(ollama: OllamaEmulator) -> None:
    assert asyncio.run(probe_ollama(ollama.url)) is True
    assert asyncio.run(probe_ollama(f"http://127.0.0.1:{closed_port()}")) is False

    # A socket that accepts connections but never answers must not stall the start.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        started = time.perf_counter()
        answered = asyncio.run(probe_ollama(f"http://127.0.0.1:{mute.getsockname()[1]}", 0.3))
        assert answered is False
        assert time.perf_counter() - started < 1.0


# --- Ollama tool calling --------------------------------------------------------------------


def test_ollama_streamed_tool_call_comes_out_as_a_tool_call(ollama: OllamaEmulator) -> None:
    ollama.reply = lambda messages: tool_call("transfer_to_person", reason="asked for a person")

    items = asyncio.run(collect(ollama_llm(ollama.url), QUESTION, TOOLS))

    assert items == [ToolCall("transfer_to_person", {"reason": "asked for a person"})]
    [request] = ollama.requests
    assert request.tools == TOOLS  # the client passed the specs through unchanged
    assert request.outcome == "done"


def test_ollama_text_then_tool_calls_come_out_in_order(ollama: OllamaEmulator) -> None:
    ollama.reply = lambda messages: [
        "Let me take a message for John.",
        tool_call("take_message", name="John", callback_number="555 0100", message="Call back"),
        tool_call("transfer_to_person", {"reason": "urgent"}),
    ]

    items = asyncio.run(collect(ollama_llm(ollama.url), QUESTION, TOOLS))

    text = [item for item in items if isinstance(item, str)]
    assert "".join(text) == "Let me take a message for John."
    assert items[len(text) :] == [
        ToolCall(
            "take_message", {"name": "John", "callback_number": "555 0100", "message": "Call back"}
        ),
        ToolCall("transfer_to_person", {"reason": "urgent"}),
    ]


def test_ollama_tool_result_goes_back_in_the_next_request(ollama: OllamaEmulator) -> None:
    def reply(messages: list[dict[str, Any]]) -> str:
        last = messages[-1]
        return f"{last['content']} Anything else?" if last["role"] == "tool" else "Hm."

    ollama.reply = reply
    arguments = {"name": "John", "callback_number": "555 0100", "message": "Call back"}
    history: list[Message] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "take_message", "arguments": arguments}}],
        },
        {"role": "tool", "content": "The message is stored.", "tool_name": "take_message"},
    ]

    items = asyncio.run(collect(ollama_llm(ollama.url), history, TOOLS))

    assert "".join(items) == "The message is stored. Anything else?"
    sent = ollama.requests[-1].messages
    assert sent[-2] == {
        "role": "assistant",  # the client leaves out the empty content, as Ollama allows
        "tool_calls": [{"function": {"name": "take_message", "arguments": arguments}}],
    }
    assert sent[-1] == {
        "role": "tool",
        "content": "The message is stored.",
        "tool_name": "take_message",
    }


def test_ollama_without_tools_sends_none_and_yields_only_text(ollama: OllamaEmulator) -> None:
    items = asyncio.run(collect(ollama_llm(ollama.url), QUESTION))

    assert "".join(items) == REPLY
    assert all(isinstance(item, str) for item in items)
    assert ollama.requests[-1].body.get("tools") in (None, [])


def test_ollama_tool_call_counts_as_the_first_token(ollama: OllamaEmulator) -> None:
    # The second call comes at ~0.7 s: past the 0.5 s first-token wait, within the total.
    ollama.reply = lambda messages: [
        tool_call("take_message", name="A", callback_number="1", message="m"),
        tool_call("transfer_to_person", reason="r"),
    ]
    ollama.first_token_delay_s = 0.3
    ollama.token_delay_s = 0.4
    llm = ollama_llm(ollama.url, first_token_timeout_s=0.5, total_timeout_s=5.0)

    items = asyncio.run(collect(llm, QUESTION, TOOLS))

    assert [item.name for item in items] == ["take_message", "transfer_to_person"]


def test_ollama_no_first_item_with_tools_still_raises_quickly(ollama: OllamaEmulator) -> None:
    ollama.reply = lambda messages: tool_call("transfer_to_person", reason="r")
    ollama.first_token_delay_s = 5.0
    llm = ollama_llm(ollama.url, first_token_timeout_s=0.5)

    message, elapsed = error_of(lambda: collect(llm, QUESTION, TOOLS))

    assert "no first token within 0.5 s" in message
    assert elapsed < 2.0
    assert ollama.wait_outcome() == "disconnected"


def test_ollama_model_without_tool_support_names_the_setting(ollama: OllamaEmulator) -> None:
    ollama.tool_models = ["qwen2.5:0.5b"]  # MODEL is not among them

    message, _ = error_of(lambda: collect(ollama_llm(ollama.url), QUESTION, TOOLS))

    assert f"Ollama model '{MODEL}' cannot call tools (VOICEAI_OLLAMA_MODEL" in message
    assert "does not support tools" in message
    assert "".join(asyncio.run(collect(ollama_llm(ollama.url), QUESTION))) == REPLY


def test_ollama_server_sending_text_arguments_fails_clearly(ollama: OllamaEmulator) -> None:
    # Ollama's API types arguments as an object, and the official client refuses anything else.
    ollama.reply = lambda messages: ["One moment.", tool_call("end_call", '{"reason": "bye"}')]
    seen: list[object] = []

    async def run() -> None:
        llm = ollama_llm(ollama.url)
        try:
            async with aclosing(llm.stream_reply(QUESTION, TOOLS)) as stream:
                async for item in stream:
                    seen.append(item)
        finally:
            await llm.aclose()

    message, _ = error_of(run)

    assert "".join(map(str, seen)) == "One moment."
    assert message.startswith(f"Ollama at {ollama.url} gave an unusable answer")
    assert "arguments" in message


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ({"reason": "bye"}, {"reason": "bye"}),
        ('{"reason": "bye", "n": 2}', {"reason": "bye", "n": 2}),
        ("", {}),
        (None, {}),
        ('{"reason": "bye"', {"_raw": '{"reason": "bye"'}),  # cut off
        ("transfer me", {"_raw": "transfer me"}),
        ('["a", "b"]', {"_raw": '["a", "b"]'}),  # JSON, but not an object
        (["a"], {"_raw": '["a"]'}),
    ],
)
def test_tool_arguments_are_parsed_or_kept_raw(raw: object, parsed: dict[str, Any]) -> None:
    assert parse_arguments(raw) == parsed


def test_emulator_streams_tool_calls_in_ollamas_wire_format(ollama: OllamaEmulator) -> None:
    ollama.reply = lambda messages: ["Sure.", tool_call("end_call", reason="done", id="call_1")]
    body = {"model": MODEL, "messages": QUESTION, "tools": TOOLS}

    with httpx.stream("POST", f"{ollama.url}/api/chat", json=body) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    whole = httpx.post(f"{ollama.url}/api/chat", json={**body, "stream": False}).json()

    *pieces, call, final = lines
    assert "".join(p["message"]["content"] for p in pieces) == "Sure."
    assert all("tool_calls" not in p["message"] and p["done"] is False for p in pieces)
    assert call["done"] is False and call["message"]["content"] == ""
    expected = {
        "id": "call_1",
        "function": {"index": 0, "name": "end_call", "arguments": {"reason": "done"}},
    }
    assert call["message"]["tool_calls"] == [expected]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert "tool_calls" not in final["message"]
    assert whole["done"] is True
    assert whole["message"] == {"role": "assistant", "content": "Sure.", "tool_calls": [expected]}


def test_tools_warning_only_when_tools_are_configured_but_cannot_be_called() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    ollama_engine, embedded = OllamaLLM(dead, MODEL), EmbeddedLLM()  # neither loads a model
    auto = AutoLLM(embedded, ollama_engine)

    assert (ollama_engine.supports_tools, embedded.supports_tools, auto.supports_tools) == (
        True,
        False,
        False,
    )
    assert tools_warning(ollama_engine, TOOLS) is None
    assert tools_warning(embedded, []) is None
    warning = tools_warning(embedded, TOOLS)
    assert warning is not None
    assert warning.startswith(f"tools (transfer_to_person, take_message) are off: {embedded.name}")
    auto_warning = tools_warning(auto, TOOLS)
    assert auto_warning is not None and f"once Ollama answers with {MODEL}" in auto_warning
    asyncio.run(auto.aclose())


# --- build_llm ------------------------------------------------------------------------------


def built(**settings: object) -> LanguageModel:
    async def build() -> LanguageModel:
        return await build_llm(Settings(**settings))  # type: ignore[arg-type]

    return asyncio.run(build())


def test_build_llm_auto_picks_ollama_when_it_answers(
    ollama: OllamaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="voiceai.engines.llm"):
        llm = built(llm="auto", ollama_url=ollama.url, ollama_model=MODEL, llm_max_tokens=32)

    assert isinstance(llm, OllamaLLM)
    assert llm.name == f"ollama:{MODEL}"
    assert f"LLM: ollama:{MODEL} (auto: Ollama answers at {ollama.url}" in caplog.text
    assert "".join(asyncio.run(collect(llm, QUESTION))) == REPLY
    assert ollama.requests[-1].options == {"num_predict": 32}


def test_build_llm_auto_falls_back_to_embedded_when_nothing_listens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with caplog.at_level(logging.INFO, logger="voiceai.engines.llm"):
        llm = built(llm="auto", ollama_url=url)

    assert isinstance(llm, AutoLLM)  # the embedded model, until Ollama comes up
    assert llm.name == f"embedded:{PACKAGED_GGUF}"
    assert f"LLM: embedded:{PACKAGED_GGUF} (auto: no Ollama answers at {url} yet)" in caplog.text
    asyncio.run(llm.aclose())


def test_auto_moves_to_ollama_once_it_comes_up() -> None:
    port = closed_port()

    async def scenario() -> tuple[str, str, str]:
        llm = await build_llm(
            Settings(
                llm="auto",
                ollama_url=f"http://127.0.0.1:{port}",
                ollama_model=MODEL,
                llm_max_tokens=16,
            )
        )
        assert isinstance(llm, AutoLLM)
        assert llm.supports_tools is False  # the embedded model answers for now
        llm._recheck_s = 0  # ask again at every reply (30 s in production)
        before = llm.name
        with OllamaEmulator(port=port) as ollama:
            reply = "".join([piece async for piece in llm.stream_reply(QUESTION, TOOLS)])
            assert ollama.requests, "the reply did not go to Ollama"
            assert ollama.requests[-1].tools == TOOLS  # Ollama can call them: it gets them
        assert llm.supports_tools is True
        after = llm.name
        await llm.aclose()
        return before, after, reply

    before, after, reply = asyncio.run(scenario())
    assert before.startswith("embedded:")
    assert after == f"ollama:{MODEL}"
    assert reply.startswith("Thank you, I understood")  # the emulator's answer, not llama's


def test_build_llm_auto_falls_back_when_the_model_is_not_pulled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        OllamaEmulator(models=["qwen2.5:0.5b"]) as other,
        caplog.at_level(logging.INFO, logger="voiceai.engines.llm"),
    ):
        llm = built(llm="auto", ollama_url=other.url, ollama_model=MODEL)

    assert isinstance(llm, AutoLLM)
    assert llm.name.startswith("embedded:")
    assert f"has no '{MODEL}' yet (ollama pull {MODEL})" in caplog.text
    asyncio.run(llm.aclose())


def test_build_llm_obeys_an_explicit_choice() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    forced = built(llm="ollama", ollama_url=dead)
    assert isinstance(forced, OllamaLLM)  # no probing: the calls will report the outage
    asyncio.run(forced.aclose())

    embedded = built(llm="embedded", ollama_url=dead)
    assert isinstance(embedded, EmbeddedLLM)
    asyncio.run(embedded.aclose())

    with pytest.raises(LLMError, match=r"no GGUF model file at /nonexistent/model\.gguf"):
        built(llm="embedded", embedded_model="/nonexistent/model.gguf")


# --- embedded llama.cpp ---------------------------------------------------------------------


def test_embedded_smollm2_streams_a_short_real_reply() -> None:
    async def run() -> tuple[list[str], float]:
        llm = EmbeddedLLM(max_tokens=16)
        await llm.warm_up()
        started = time.perf_counter()
        pieces = await collect(llm, QUESTION)
        return pieces, time.perf_counter() - started

    pieces, elapsed = asyncio.run(run())

    text = "".join(pieces)
    assert any(ch.isalpha() for ch in text), text
    assert 3 <= len(pieces) <= 16  # one piece per token, never beyond max_tokens
    assert elapsed < 20


async def tokens_when_idle(llm: EmbeddedLLM, timeout_s: float = 20.0) -> int:
    """Waits for llama.cpp's thread to stop; returns the tokens its last generation made."""

    def poll() -> None:
        deadline = time.monotonic() + timeout_s
        while llm.busy and time.monotonic() < deadline:
            time.sleep(0.01)

    await asyncio.to_thread(poll)
    assert not llm.busy, "the llama.cpp thread is still generating"
    return llm.last_tokens


def test_embedded_cancel_mid_generation_returns_promptly() -> None:
    async def run() -> tuple[list[str], float, int, list[str]]:
        llm = EmbeddedLLM(max_tokens=400)  # ~4 s of generation if nothing stopped it
        try:
            await llm.warm_up()
            pieces, close_s = await take_then_close(llm.stream_reply(STORY), 3)
            tokens = await tokens_when_idle(llm)
            again, _ = await take_then_close(llm.stream_reply(QUESTION), 2)
            return pieces, close_s, tokens, again
        finally:
            await llm.aclose()

    pieces, close_s, tokens, again = asyncio.run(run())

    assert len(pieces) == 3
    assert close_s < 0.5
    assert tokens < 30  # the thread saw the cancel flag: far from the 400 it was allowed
    assert len(again) == 2  # the model is usable right after a cancelled reply


def test_embedded_task_cancel_and_first_token_timeout_stop_the_thread() -> None:
    async def run() -> tuple[float, int, str, int]:
        llm = EmbeddedLLM(max_tokens=400)
        impatient = EmbeddedLLM(max_tokens=400, first_token_timeout_s=0.001)
        try:
            await llm.warm_up()
            first = asyncio.Event()

            async def consume() -> None:
                async for _piece in llm.stream_reply(STORY):
                    first.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), 20)
            started = time.perf_counter()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            cancel_s = time.perf_counter() - started
            tokens = await tokens_when_idle(llm)

            with pytest.raises(LLMError) as caught:
                async with aclosing(impatient.stream_reply(STORY)) as stream:
                    async for _piece in stream:
                        pass
            return cancel_s, tokens, str(caught.value), await tokens_when_idle(impatient)
        finally:
            await llm.aclose()
            await impatient.aclose()

    cancel_s, tokens, message, impatient_tokens = asyncio.run(run())

    assert cancel_s < 0.5
    assert tokens < 30
    assert f"no first token within 0.001 s from embedded:{PACKAGED_GGUF}" in message
    assert impatient_tokens < 30


def test_embedded_serves_concurrent_requests_one_at_a_time() -> None:
    async def run() -> list[str]:
        llm = EmbeddedLLM(max_tokens=12, first_token_timeout_s=60)  # the second one waits
        try:

            async def one(question: str) -> str:
                messages: list[Message] = [{"role": "user", "content": question}]
                async with aclosing(llm.stream_reply(messages)) as stream:
                    return "".join([piece async for piece in stream])

            return list(await asyncio.gather(one("Hello, who are you?"), one("What is a cat?")))
        finally:
            await llm.aclose()

    replies = asyncio.run(run())

    assert all(any(ch.isalpha() for ch in reply) for reply in replies), replies
