"""The model's tool calls inside the conversation core, on fakes and a loop clock: what the model
is told, how many rounds it gets, what reaches FreeSWITCH, and what later turns remember."""

from __future__ import annotations

from pathlib import Path

from tests.fakes import CoreCall, FakeLLM
from tests.test_core import on_fake_clock
from voiceai import events
from voiceai.conversation.states import State
from voiceai.engines.llm import ToolCall
from voiceai.tools.declarations import BUILTIN_TOOLS
from voiceai.tools.toolbox import Toolbox

BUILTINS = Toolbox(BUILTIN_TOOLS.values())
MESSAGE = ToolCall(
    "take_message", {"name": "Ann", "callback_number": "+15550123", "message": "Call back"}
)


def tool_results(llm: FakeLLM, request: int) -> list[str]:
    return [m["content"] for m in llm.requests[request] if m["role"] == "tool"]


def test_bad_arguments_are_told_to_the_model_which_then_answers(tmp_path: Path) -> None:
    async def scenario() -> None:
        llm = FakeLLM(
            replies=[ToolCall("take_message", {"name": 5}), "May I have your number, please?"]
        )
        call = CoreCall(tmp_path, llm=llm, tools=BUILTINS)
        await call.caller_says("Please take a message.")
        await call.until(lambda: bool(call.received(events.BotSaid)))
        (result,) = tool_results(llm, 1)
        assert result.startswith("error: invalid arguments for take_message")
        assert call.received(events.BotSaid)[0].text == "May I have your number, please?"
        assert call.received(events.MessageTaken) == []
        assert not call.received(events.CallError)
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_the_last_round_offers_no_tools_so_the_model_must_speak(tmp_path: Path) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=[MESSAGE, MESSAGE, MESSAGE, "All noted."])
        call = CoreCall(tmp_path, llm=llm, tools=BUILTINS)
        await call.caller_says("Take three messages, please.")
        await call.until(lambda: bool(call.received(events.BotSaid)))
        offered = [len(tools) for tools in llm.tools_offered]
        assert offered == [3, 3, 3, 0]  # VOICEAI_MAX_TOOL_ROUNDS = 3
        assert len(call.received(events.MessageTaken)) == 3
        assert call.received(events.BotSaid)[0].text == "All noted."
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_transfer_to_person_without_a_number_is_refused_to_the_model(tmp_path: Path) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=[ToolCall("transfer_to_person", {"reason": "asked"}), "Sorry."])
        call = CoreCall(tmp_path, llm=llm, tools=BUILTINS, fallback_number="")
        await call.caller_says("Can I talk to a person?")
        await call.until(lambda: bool(call.received(events.BotSaid)))
        assert tool_results(llm, 1) == ["error: there is no person to transfer to"]
        assert call.switch.named("transfer") == []
        assert call.session.state is not State.TRANSFERRED
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_the_transfer_tool_plays_what_was_said_then_transfers_and_plays_nothing_more(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        llm = FakeLLM(
            replies=[["Let me put you through.", ToolCall("transfer_to_person", {"reason": "x"})]]
        )
        call = CoreCall(tmp_path, llm=llm, tools=BUILTINS, fallback_number="+15551230000")
        await call.caller_says("Can I talk to a person?")
        await call.until(lambda: call.session.state is State.TRANSFERRED)
        (transfer,) = call.switch.named("transfer")
        plays = call.switch.named("play")
        assert plays and all(p.at < transfer.at for p in plays)
        await call.settle(5)
        assert call.switch.named("play") == plays and call.switch.violations == []
        assert len(llm.requests) == 1  # no round after the hand-over
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_later_turn_remembers_the_tool_calls_and_their_results(tmp_path: Path) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=[MESSAGE, "Your message is saved.", "You're welcome."])
        call = CoreCall(tmp_path, llm=llm, tools=BUILTINS)
        await call.caller_says("Take a message for Bob.")
        await call.until(lambda: bool(call.received(events.BotSaid)))
        await call.caller_says("Thanks.")
        await call.until(lambda: len(call.received(events.BotSaid)) == 2)
        roles = [m["role"] for m in llm.requests[2]]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
        assert llm.requests[2][2]["tool_calls"][0]["function"]["name"] == "take_message"
        await call.session.finish("hangup")

    on_fake_clock(scenario)
