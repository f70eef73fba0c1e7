"""The conversation core on fakes (no models, no sockets) and a loop clock the tests control:
every state × every action, and the cases that went wrong before the state table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import looptime
import numpy as np
import pytest

from tests.fakes import CoreCall, FakeLLM, line_noise, vowel
from voiceai import events
from voiceai.conversation.session import CallNotReady
from voiceai.conversation.states import (
    ALLOWED,
    TRANSITIONS,
    Effect,
    State,
    StateMachine,
    Trigger,
)

SLOW_LLM = FakeLLM(
    replies=["This answer comes slowly. It has a second sentence too."], first_token_s=3.0
)
LONG_REPLY = (
    "Let me tell you about our opening hours in some detail now. "
    "We open at noon and close at midnight every day of the week."
)


def on_fake_clock(scenario: Callable[[], Awaitable[None]]) -> None:
    """Run `scenario` on a loop whose clock jumps ahead whenever nothing is ready to run."""
    with asyncio.Runner(loop_factory=lambda: looptime.new_event_loop(start=0, _enabled=True)) as r:
        r.run(asyncio.wait_for(scenario(), 600))


def plays_after(call: CoreCall, moment: float) -> list[str]:
    return [Path(c.arg).name for c in call.switch.named("play") if c.at > moment]


# -- the table itself --------------------------------------------------------------------------


def test_every_transition_not_in_the_table_is_refused_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for state in State:
        for trigger in Trigger:
            machine = StateMachine("t")
            machine._state = state  # set directly: only to reach each state for this check
            allowed = trigger in TRANSITIONS[state]
            with caplog.at_level(logging.INFO):
                caplog.clear()
                assert machine.fire(trigger) is allowed
            if allowed:
                assert machine.state is TRANSITIONS[state][trigger]
            else:
                assert machine.state is state
                assert f"{trigger} refused while {state}" in caplog.text


def test_ended_has_no_way_out_and_transferred_only_ends_or_returns_on_failure() -> None:
    assert TRANSITIONS[State.ENDED] == {}
    assert set(TRANSITIONS[State.TRANSFERRED]) == {Trigger.TRANSFER_FAILED, Trigger.HANGUP}


def test_audio_reaches_freeswitch_only_while_the_bot_has_the_floor() -> None:
    assert ALLOWED[Effect.PLAY] == {State.THINKING, State.SPEAKING}
    assert State.ENDED not in ALLOWED[Effect.BREAK] | ALLOWED[Effect.HANGUP]


def test_state_changes_are_published_with_what_caused_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path)
        await call.caller_says("What time do you open?")
        await call.until(lambda: call.received(events.BotSaid) != [])
        moves = [(e.previous, e.state, e.trigger) for e in call.received(events.CallState)]
        assert moves == [
            ("listening", "thinking", "turn_complete"),
            ("thinking", "speaking", "audio_ready"),
            ("speaking", "listening", "reply_done"),
        ]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


# -- every state × every action ----------------------------------------------------------------


async def reach(call: CoreCall, state: State) -> None:
    if state is State.LISTENING:
        return
    if state is State.TRANSFERRED:
        call.switch.press(call.call_id, "0")
        await call.until(lambda: call.session.state is State.TRANSFERRED)
        await call.until(lambda: call.received(events.CallTransferred) != [])
        return
    if state is State.ENDED:
        call.switch.caller_hangs_up(call.call_id)
        return
    await call.caller_says("Tell me about your opening hours please.")
    await call.until(lambda: call.session.state is state)


async def act(call: CoreCall, action: str) -> None:
    session = call.session
    if action == "transfer":
        await session.transfer("+14155550100", reason="operator")
    elif action == "hangup":
        try:
            await session.hangup("NORMAL_CLEARING")
        except CallNotReady:
            assert session.state is State.ENDED
    elif action == "mute":
        session.set_muted(True)
    elif action == "say":
        try:
            session.say("An operator says hello.")
        except CallNotReady:
            assert session.state in (State.TRANSFERRED, State.ENDED)
    elif action == "barge_in":
        await call.caller_says("Wait, one more question about parking.", speech_ms=900)
    elif action == "dtmf":
        call.switch.press(call.call_id, "0")
    elif action == "esl_loss":
        call.switch.lose_connection()
    elif action == "fork_close":
        await session.finish("hangup")


L, T, S, X, E = State.LISTENING, State.THINKING, State.SPEAKING, State.TRANSFERRED, State.ENDED
# What each action leaves each state in, once the call has settled.
AFTER: dict[str, dict[State, State]] = {
    "transfer": {L: X, T: X, S: X, X: X, E: E},
    "hangup": {L: E, T: E, S: E, X: E, E: E},
    "mute": {L: L, T: L, S: L, X: X, E: E},
    "say": {L: L, T: L, S: L, X: X, E: E},
    "barge_in": {L: L, T: L, S: L, X: X, E: E},
    "dtmf": {L: X, T: X, S: X, X: X, E: E},
    "esl_loss": {L: L, T: L, S: L, X: X, E: E},
    "fork_close": {L: E, T: E, S: E, X: E, E: E},
}


@pytest.mark.parametrize("state", list(State), ids=str)
@pytest.mark.parametrize("action", list(AFTER))
def test_each_action_in_each_state_ends_where_the_table_says_and_plays_nothing_it_must_not(
    tmp_path: Path, state: State, action: str
) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=[LONG_REPLY, "Parking is free."], first_token_s=1.0)
        call = CoreCall(tmp_path, llm=llm, fallback_number="+14155550199")
        await reach(call, state)
        assert call.session.state is state
        acted_at = asyncio.get_running_loop().time()
        await act(call, action)
        await call.settle(15)
        assert call.session.state is AFTER[action][state]
        assert call.switch.violations == []  # nothing played after a transfer or a hang-up
        assert not [e for e in call.received(events.CallError) if e.kind == "internal"]
        if call.session.state in (X, E):
            assert plays_after(call, acted_at) == []
        if action == "fork_close":
            assert len(call.received(events.CallEnded)) == 1
        else:
            await call.session.finish("hangup")
        assert not call.media.joinpath(call.call_id).exists()  # the call's files are gone

    on_fake_clock(scenario)


# -- what went wrong before --------------------------------------------------------------------


def test_transfer_while_thinking_plays_nothing_more_and_stops_the_llm(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(replies=SLOW_LLM.replies, first_token_s=3.0))
        await call.caller_says("Can I speak to someone?")
        await call.until(lambda: call.session.state is State.THINKING)
        assert await call.session.transfer("+14155550100", reason="operator")
        transferred_at = call.switch.named("transfer")[0].at
        await call.settle(10)
        assert call.switch.named("play") == []
        assert plays_after(call, transferred_at) == []
        assert call.llm.closed == 1  # generation stopped, not left running
        assert call.session.state is State.TRANSFERRED
        await call.session.finish("hangup")
        ended = call.received(events.CallEnded)[0]
        assert ended.transferred

    on_fake_clock(scenario)


def test_a_second_transfer_is_refused_and_sends_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path)
        assert await call.session.transfer("+14155550100", reason="operator")
        assert not await call.session.transfer("+14155550111", reason="operator")
        assert [c.arg for c in call.switch.named("transfer")] == ["+14155550100"]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_refused_transfer_gives_the_call_back_to_the_bot(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path)
        call.switch.refuse_transfer = True
        assert not await call.session.transfer("+14155550100", reason="operator")
        assert call.session.state is State.LISTENING
        assert [e.kind for e in call.received(events.CallError)] == ["transfer"]
        call.switch.refuse_transfer = False
        await call.caller_says("Are you still there?")
        await call.until(lambda: call.received(events.BotSaid) != [])
        assert call.switch.named("play")
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_hangup_during_synthesis_sends_nothing_to_freeswitch(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path)
        call.tts.delay_s = 2.0
        await call.caller_says("What is on the menu today?")
        await call.until(lambda: call.received(events.ReplyDelta) != [])
        call.switch.caller_hangs_up(call.call_id)
        await call.session.finish("hangup")
        await asyncio.sleep(5)
        assert call.switch.named("play") == []
        assert call.switch.violations == []
        assert call.session.state is State.ENDED
        assert call.received(events.CallEnded)[0].hangup_cause == "NORMAL_CLEARING"

    on_fake_clock(scenario)


def test_say_during_the_greeting_stops_it_and_is_heard_next(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, greeting="Hello, thank you for calling our restaurant today.")
        call.session.start(events.CallStarted(call_id=call.call_id))
        await call.until(lambda: call.switch.named("play") != [])
        await asyncio.sleep(0.5)
        call.session.say("Please hold for a moment.")
        await call.until(lambda: len(call.received(events.BotSaid)) == 2)
        names = [c.name for c in call.switch.commands]
        assert names == ["sched_del", "play", "break", "play"]
        greeting, said = call.received(events.BotSaid)
        assert greeting.interrupted and greeting.text.startswith("Hello") and "…" in greeting.text
        assert said.text == "Please hold for a moment." and not said.interrupted
        assert call.session.state is State.LISTENING
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_reply_whose_first_sentence_fails_in_tts_still_says_the_rest(tmp_path: Path) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=["BROKEN words that cannot be said. The second sentence works fine."])
        call = CoreCall(tmp_path, llm=llm)
        call.tts.fail_on = "BROKEN"
        await call.caller_says("Hello?")
        await call.until(lambda: call.received(events.BotSaid) != [])
        assert [e.kind for e in call.received(events.CallError)] == ["tts"]
        assert len(call.switch.named("play")) == 1
        assert call.received(events.BotSaid)[0].text == "The second sentence works fine."
        assert call.session.state is State.LISTENING
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_barge_in_stops_the_bot_and_the_history_keeps_only_what_was_heard(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(replies=[LONG_REPLY, "Parking is free."]))
        await call.caller_says("Tell me about your hours.")
        await call.until(lambda: call.session.state is State.SPEAKING)
        await asyncio.sleep(1.0)
        await call.caller_says("Sorry, what about parking?", speech_ms=900)
        await call.until(lambda: len(call.received(events.BotSaid)) == 2)
        first, second = call.received(events.BotSaid)
        assert first.interrupted and 0 < len(first.text) < len(LONG_REPLY)
        assert second.text == "Parking is free."
        assert len(call.received(events.BargeIn)) == 1
        history = call.llm.requests[1]
        assert history[2] == {"role": "assistant", "content": first.text}
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_short_mhm_over_the_bot_neither_interrupts_nor_gets_an_answer(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(replies=[LONG_REPLY]))
        await call.caller_says("Tell me about your hours.")
        await call.until(lambda: call.session.state is State.SPEAKING)
        await call.caller_says("mhm", speech_ms=220, then_ms=800)
        await call.until(lambda: call.received(events.BotSaid) != [])
        assert call.received(events.BargeIn) == []
        finals = call.received(events.TranscriptFinal)
        assert [f.backchannel for f in finals] == [False, True]
        assert len(call.llm.requests) == 1
        assert not call.received(events.BotSaid)[0].interrupted
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_dtmf_transfer_while_speaking_breaks_first_then_transfers(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(replies=[LONG_REPLY]), fallback_number="+1415555")
        await call.caller_says("Tell me about your hours.")
        await call.until(lambda: call.session.state is State.SPEAKING)
        call.switch.press(call.call_id, "0")
        await call.until(lambda: call.received(events.CallTransferred) != [])
        names = [c.name for c in call.switch.commands]
        assert names[-2:] == ["break", "transfer"]
        await call.settle(10)
        assert plays_after(call, call.switch.named("transfer")[0].at) == []
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_dead_llm_is_apologised_for_then_the_caller_goes_to_a_person(tmp_path: Path) -> None:
    async def scenario() -> None:
        llm = FakeLLM(fail="connection refused")
        call = CoreCall(tmp_path, llm=llm, fallback_number="+14155550199")
        await call.caller_says("Hello?")
        await call.until(lambda: call.received(events.CallTransferred) != [])
        assert [e.kind for e in call.received(events.CallError)] == ["llm"]
        assert [c.name for c in call.switch.commands] == ["play", "transfer"]
        assert call.received(events.BotSaid)[-1].text == "Sorry, something went wrong."
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_dead_llm_without_a_fallback_number_ends_the_call_politely(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(fail="connection refused"))
        await call.caller_says("Hello?")
        await call.until(lambda: call.session.state is State.ENDED)
        assert [c.name for c in call.switch.commands] == ["play", "hangup"]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_muted_bot_hears_the_caller_and_answers_with_context_once_unmuted(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(replies=["Table for two, noted."]))
        call.session.set_muted(True)
        await call.caller_says("I want a table.")
        await call.settle(3)
        assert call.llm.requests == [] and call.switch.named("play") == []
        call.session.set_muted(False)
        await call.caller_says("For two people.")
        await call.until(lambda: call.received(events.BotSaid) != [])
        assert call.llm.requests[0][-1]["content"] == "I want a table. For two people."
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_files_stay_while_freeswitch_may_play_them_after_the_event_socket_drops(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(replies=[LONG_REPLY]))
        await call.caller_says("Tell me about your hours.")
        await call.until(lambda: call.session.state is State.SPEAKING)
        played = Path(call.switch.named("play")[0].arg)
        call.switch.lose_connection()
        await call.settle(2)
        assert await asyncio.to_thread(played.exists)  # FreeSWITCH may still be reading it
        assert [e.kind for e in call.received(events.CallError)] == ["esl"]
        await call.session.finish("hangup")
        assert not await asyncio.to_thread(played.exists)

    on_fake_clock(scenario)


def test_a_played_file_is_removed_once_freeswitch_has_finished_with_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(replies=["Short and sweet answer here."]))
        await call.caller_says("Hi there.")
        await call.until(lambda: call.received(events.BotSaid) != [])
        assert not await asyncio.to_thread(Path(call.switch.named("play")[0].arg).exists)
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_the_fork_closing_transcribes_the_last_words_and_ends_the_call_once(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path)
        call.stt.text = "Goodbye then."
        await call.send_audio(vowel(800))
        await call.session.finish("hangup")
        finals = call.received(events.TranscriptFinal)
        assert [f.text for f in finals] == ["Goodbye then."]
        assert finals[0].end_reason == "end_of_stream"
        assert call.switch.named("play") == []  # the caller is gone: no answer
        (ended,) = call.received(events.CallEnded)
        assert ended.turns == 1 and ended.reason == "hangup"

    on_fake_clock(scenario)


def test_an_lost_transcription_is_reported_and_the_call_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path)
        call.stt.fail = True
        await call.caller_says("This one is lost.")
        await call.settle(1)
        call.stt.fail = False
        await call.caller_says("This one is heard.")
        await call.until(lambda: call.received(events.BotSaid) != [])
        assert [e.kind for e in call.received(events.CallError)] == ["stt"]
        assert [f.text for f in call.received(events.TranscriptFinal)] == ["This one is heard."]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_speech_recognition_down_for_two_turns_gets_the_apology_and_the_fallback(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, fallback_number="+14155550100")
        call.stt.fail = True
        await call.caller_says("Hello?")
        await call.settle(1)
        assert call.switch.named("transfer") == []  # one lost turn may be a hiccup
        await call.caller_says("Hello, can you hear me?")
        await call.until(lambda: call.session.state is State.TRANSFERRED)
        # Two lost turns, then the hand-over that names the failed step.
        assert [e.kind for e in call.received(events.CallError)] == ["stt", "stt", "stt"]
        (apology,) = call.received(events.BotSaid)
        assert apology.text == "Sorry, something went wrong."
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_the_line_noise_alone_opens_no_turn(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path)
        await call.send_audio(line_noise(10_000))
        assert call.stt.calls == 0
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_greeted_call_is_announced_as_speaking_and_its_transitions_follow(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, greeting="Hello, thank you for calling.")
        call.session.start(events.CallStarted(call_id=call.call_id))
        await call.until(lambda: call.received(events.BotSaid) != [])
        kinds = [type(e).__name__ for e in call.received() if not isinstance(e, events.TtsAudio)]
        assert kinds[:2] == ["CallStarted", "CallState"]
        assert call.received(events.CallStarted)[0].state == "speaking"
        assert [e.state for e in call.received(events.CallState)] == ["speaking", "listening"]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_speculative_reply_is_dropped_unheard_when_the_caller_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=["Never heard.", "A table for four, done."], first_token_s=2.0)
        call = CoreCall(tmp_path, llm=llm)
        await call.caller_says("I would like to book a table", speech_ms=1200, then_ms=600)
        assert call.session.state is State.THINKING  # judged finished at the pause
        await call.caller_says("for four people tomorrow.", speech_ms=1000)
        await call.until(lambda: call.received(events.BotSaid) != [])
        resumed = [e for e in call.received(events.CallState) if e.trigger == "resumed"]
        assert len(resumed) == 1
        assert llm.closed == 1  # the first reply's generation was stopped
        assert len(call.switch.named("play")) == 1  # only the answer to the whole sentence
        assert llm.requests[1][-1]["content"] == (
            "I would like to book a table for four people tomorrow."
        )
        assert [e.text for e in call.received(events.BotSaid)] == ["A table for four, done."]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_caller_going_on_as_the_reply_is_ready_is_not_answered_mid_sentence(
    tmp_path: Path,
) -> None:
    """The pause is judged final and the reply's audio is ready while the caller's next words
    are too short yet to be a turn: the audio waits, the words become a turn, the reply is
    dropped unheard (the race the real Harvard clip "Sunday is the best | part of the week",
    a 180 ms pause, lost one run in four)."""

    async def scenario() -> None:
        llm = FakeLLM(replies=["Never heard.", "Sundays are good."])
        call = CoreCall(tmp_path, llm=llm)
        await call.caller_says("Sunday is the best.", speech_ms=1200, then_ms=180)
        await call.caller_says("Part of the week.", speech_ms=1000)
        await call.until(lambda: call.received(events.BotSaid) != [])
        assert [e.text for e in call.received(events.BotSaid)] == ["Sundays are good."]
        assert len(call.switch.named("play")) == 1
        assert llm.requests[1][-1]["content"] == "Sunday is the best. Part of the week."
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_click_as_the_reply_is_ready_delays_it_briefly_and_drops_nothing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=["We open at nine."])
        call = CoreCall(tmp_path, llm=llm)
        await call.caller_says("When do you open?", speech_ms=1200, then_ms=200)
        asked_at = asyncio.get_running_loop().time()
        await call.send_audio(np.concatenate([vowel(60), line_noise(1500)]))
        assert [e.text for e in call.received(events.BotSaid)] == ["We open at nine."]
        assert [e.trigger for e in call.received(events.CallState)].count("resumed") == 0
        played_at = call.switch.named("play")[0].at
        assert played_at - asked_at < 0.4  # held while the click lasted, then played
        await call.session.finish("hangup")

    on_fake_clock(scenario)


# -- failures on the reply path: the apology, then a person or a polite end, never silence -----

FALLBACK = "+14155550199"
APOLOGY = "Sorry, something went wrong."


def unusable(path: Path) -> None:
    """A regular file where a folder must be: nothing can be written under it, even by root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a folder")


def error_kinds(call: CoreCall) -> list[str]:
    return [e.kind for e in call.received(events.CallError)]


def test_a_greeting_that_cannot_be_synthesized_ends_in_the_apology_and_a_transfer(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, greeting="Hello, thanks for calling.", fallback_number=FALLBACK)
        call.tts.fail_on = "Hello"
        call.session.start(events.CallStarted(call_id=call.call_id))
        await call.until(lambda: call.received(events.CallTransferred) != [])
        assert [c.name for c in call.switch.commands] == ["sched_del", "play", "transfer"]
        assert error_kinds(call) == ["greeting"]
        assert call.received(events.BotSaid)[-1].text == APOLOGY
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_an_event_socket_timeout_on_the_greeting_ends_in_the_apology_and_a_transfer(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, greeting="Hello, thanks for calling.", fallback_number=FALLBACK)
        call.switch.unanswered_plays = {1}
        call.session.start(events.CallStarted(call_id=call.call_id))
        await call.until(lambda: call.received(events.CallTransferred) != [])
        names = [c.name for c in call.switch.commands]
        assert names == ["sched_del", "play_unanswered", "play", "transfer"]
        (error,) = call.received(events.CallError)
        assert error.kind == "greeting" and "did not answer" in error.message
        assert call.received(events.BotSaid)[-1].text == APOLOGY
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_an_unwritable_media_folder_without_a_cached_apology_still_transfers_the_caller(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, fallback_number=FALLBACK)
        unusable(call.media)
        unusable(call.prompts)
        await call.caller_says("Hello?")
        await call.until(lambda: call.received(events.CallTransferred) != [])
        assert [e.state for e in call.received(events.CallState)] == [
            "thinking",
            "speaking",
            "transferred",
        ]
        assert error_kinds(call) == ["media", "apology"]
        assert "VOICEAI_MEDIA_DIR" in call.received(events.CallError)[0].message
        assert [c.name for c in call.switch.commands] == ["transfer"]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_reply_whose_every_sentence_fails_in_tts_ends_in_the_apology_and_a_transfer(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=["BROKEN first sentence here. BROKEN second one."])
        call = CoreCall(tmp_path, llm=llm, fallback_number=FALLBACK)
        call.tts.fail_on = "BROKEN"
        await call.caller_says("Hello?")
        await call.until(lambda: call.received(events.CallTransferred) != [])
        assert error_kinds(call) == ["tts", "tts", "reply"]
        assert [c.name for c in call.switch.commands] == ["play", "transfer"]
        assert call.received(events.BotSaid)[-1].text == APOLOGY
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_play_command_that_times_out_stops_the_llm_and_hands_the_caller_over(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        llm = FakeLLM(replies=[LONG_REPLY], token_s=0.5)  # still writing when the play times out
        call = CoreCall(tmp_path, llm=llm, fallback_number=FALLBACK)
        call.switch.unanswered_plays = {1}
        await call.caller_says("What are your opening hours?")
        await call.until(lambda: call.received(events.CallTransferred) != [])
        assert llm.closed == 1  # generation stopped at once, not left to run on
        assert error_kinds(call) == ["playback"]
        names = [c.name for c in call.switch.commands]
        assert names == ["play_unanswered", "play", "transfer"]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_talking_over_the_apology_does_not_keep_the_caller_with_a_broken_bot(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(fail="connection refused"), fallback_number=FALLBACK)
        await call.caller_says("Hello?")
        await call.until(lambda: call.session.state is State.SPEAKING)  # the apology
        await call.caller_says("Hello? Are you still there?", speech_ms=900)
        await call.until(lambda: call.received(events.CallTransferred) != [])
        assert call.received(events.BargeIn) == []
        assert [c.name for c in call.switch.commands] == ["play", "transfer"]
        assert not call.received(events.BotSaid)[-1].interrupted
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_a_refused_fallback_transfer_ends_the_call_politely_instead(tmp_path: Path) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(fail="connection refused"), fallback_number=FALLBACK)
        call.switch.refuse_transfer = True
        await call.caller_says("Hello?")
        await call.until(lambda: call.session.state is State.ENDED)
        assert [c.name for c in call.switch.commands] == ["play", "transfer", "hangup"]
        assert error_kinds(call) == ["llm", "transfer", "ended_by_bot"]
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_when_even_the_hang_up_fails_the_call_listens_again_instead_of_hanging_in_speaking(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, llm=FakeLLM(fail="connection refused"))
        call.switch.refuse_hangup = True
        await call.caller_says("Hello?")
        await call.until(lambda: "hangup" in error_kinds(call))
        await call.settle(2)
        assert call.session.state is State.LISTENING
        await call.session.finish("hangup")

    on_fake_clock(scenario)


def test_an_unwritable_recordings_folder_is_a_recording_error_not_an_internal_one(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        call = CoreCall(tmp_path, record_calls=True)
        unusable(call.media)
        call.session.start(events.CallStarted(call_id=call.call_id))
        await call.settle(1)
        assert error_kinds(call) == ["recording"]
        await call.session.finish("hangup")

    on_fake_clock(scenario)
