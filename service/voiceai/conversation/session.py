"""One call: the listener and the responder wired together, every action of the caller, the
operator and FreeSWITCH routed through the call's state table (states.py).

Here live the rules of the conversation: when the bot answers, when the caller may interrupt
it, what a DTMF digit does, what happens when an engine fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voiceai import events
from voiceai.audio.turns import TurnConfig, TurnEnded
from voiceai.audio.vad import SileroModel
from voiceai.conversation.dialog import Dialog
from voiceai.conversation.line import CallLine
from voiceai.conversation.listener import Listener
from voiceai.conversation.playback import PlaybackQueue
from voiceai.conversation.responder import Reply, Responder, SpeechFailed
from voiceai.conversation.states import TRANSITIONS, Refused, State, StateMachine, Trigger
from voiceai.conversation.timing import TurnTiming
from voiceai.conversation.tools import ToolLines, ToolRunner
from voiceai.engines.llm import LanguageModel, LLMError
from voiceai.engines.stt import Transcript
from voiceai.engines.stt_scheduler import TranscriptionScheduler
from voiceai.engines.tts import SpeechSynthesizer
from voiceai.engines.turn import TurnCompletion
from voiceai.events import EventBus
from voiceai.prompts import PromptCache
from voiceai.telephony.control import CallControl
from voiceai.tools.toolbox import Toolbox

log = logging.getLogger(__name__)

BREAK_CONFIRM_S = 2.0  # longest wait for FreeSWITCH to confirm a break with PLAYBACK_STOP
LOST_TURNS_IN_A_ROW = 2  # untranscribable turns before the caller is handed over
HANGUP_CAUSE_WAIT_S = 1.0  # the fork often closes just before CHANNEL_HANGUP_COMPLETE arrives


class CallNotReady(Exception):
    """The call cannot do what was asked right now (no event socket, already ended...)."""


@dataclass
class Engines:
    """What every call shares, made once at start-up."""

    stt: TranscriptionScheduler  # every call's transcriptions, by priority and in turn
    llm: LanguageModel | None
    tts: SpeechSynthesizer | None
    control: CallControl | None
    prompts: PromptCache | None
    bus: EventBus
    vad: SileroModel | None = None  # None: webrtcvad
    turn_model: TurnCompletion | None = None  # None: the transcript's words alone judge pauses


@dataclass(frozen=True)
class CallPolicy:
    turn: TurnConfig
    barge_in_min_ms: int = 250
    # A reply's first audio waits at most this long for a caller who stirs after a pause judged
    # final to either start a turn (the reply is dropped unheard) or fall quiet (it plays).
    resume_hold_ms: int = 300
    complete_threshold: float = 0.5  # the turn model's probability that counts as finished
    system_prompt: str = ""
    greeting: str = ""
    apology: str = "I'm sorry, I'm having trouble right now."
    fallback_number: str = ""
    transfer_digit: str = ""
    media_dir: Path = Path("data/media")
    partial_transcripts: bool = True
    record_calls: bool = False
    tools: Toolbox | None = None  # what the model may call (the agent's); None: no tools
    tool_lines: ToolLines = field(default_factory=ToolLines)
    max_tool_rounds: int = 3  # tool calls and answers in one reply before it must speak


@dataclass
class CallInfo:
    """Who is on the line, from the fork's metadata."""

    caller: str | None = None
    caller_name: str | None = None
    callee: str | None = None
    direction: str = "inbound"


class CallSession:
    def __init__(
        self,
        call_id: str,
        *,
        rate: int,
        channels: int,
        language: str | None,
        engines: Engines,
        policy: CallPolicy,
        info: CallInfo | None = None,
    ) -> None:
        self.call_id = call_id
        self.info = info or CallInfo()
        self.started_at = time.time()
        self.rate = rate
        self.channels = channels
        self.muted = False
        self.turn_count = 0
        self.hangup_cause: str | None = None
        self.transferred_to: str | None = None
        self.transcript: list[dict[str, object]] = []  # the call so far, for late viewers
        self.tool_calls: list[dict[str, object]] = []  # and what its tools did
        self.messages: list[dict[str, object]] = []
        self._engines = engines
        self._bus = engines.bus
        self._policy = policy
        self._machine = StateMachine(call_id, self._state_changed)
        self._line = CallLine(call_id, engines.control, self._machine)
        self._playback = PlaybackQueue(self._line)
        self._dialog = Dialog(policy.system_prompt, language)
        self._media = policy.media_dir / call_id
        self._listener = Listener(
            call_id,
            rate=rate,
            channels=channels,
            turn=policy.turn,
            stt=engines.stt,
            bus=self._bus,
            host=self,
            language=lambda: self._dialog.language,
            partials=policy.partial_transcripts,
            speech=engines.vad.stream(rate) if engines.vad is not None else None,
            turn_model=engines.turn_model,
            complete_threshold=policy.complete_threshold,
        )
        self._responder = Responder(
            call_id,
            llm=engines.llm,
            tts=engines.tts,
            prompts=engines.prompts,
            playback=self._playback,
            bus=self._bus,
            rate=rate,
            media=self._media,
            before_audio=self._before_audio,
            tools=ToolRunner(
                call_id,
                policy.tools,
                self._tool_event,
                policy.tool_lines,
                can_transfer=bool(policy.fallback_number),
            )
            if policy.tools
            else None,
            max_tool_rounds=policy.max_tool_rounds,
        )
        # The one thing the bot is saying or preparing (a reply, the greeting, an operator's
        # words, the apology), and the stopping of the previous one, which the next awaits.
        self._reply: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._reply_timing: TurnTiming | None = None
        self._barged_in_this_turn = False
        self._said_cannot_speak = False
        self._lost_turns = 0  # in a row that speech recognition could not transcribe
        self._failing_over = False  # the apology and hand-over are under way: no barge-in
        self._hung_up = asyncio.Event()
        self._caller_quiet = asyncio.Event()  # a stirring caller fell quiet (see _before_audio)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def state(self) -> State:
        return self._machine.state

    def _state_changed(self, previous: State, state: State, trigger: Trigger) -> None:
        self._bus.publish(
            events.CallState(call_id=self.call_id, state=state, previous=previous, trigger=trigger)
        )

    @property
    def language(self) -> str:
        return self._dialog.language or "en"

    # -- the caller speaks --------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Caller audio as it arrives: any number of bytes, any split."""
        self._listener.feed(data)
        if self.state is State.THINKING and not self._listener.caller_stirring:
            self._caller_quiet.set()  # a reply held in _before_audio may play

    def on_speech_started(self, at_ms: int) -> None:
        self._barged_in_this_turn = False
        if self.state is State.THINKING:
            # A speculative reply to a pause the caller has not finished: nothing has been
            # played yet, so drop it quietly; their next words join the same message.
            log.info("call %s: caller went on at %d ms; reply dropped unheard", self.call_id, at_ms)
            self._machine.fire(Trigger.RESUMED)
            self._stop_reply()

    def on_caller_voiced(self, voiced_ms: int, at_ms: int) -> None:
        """Barge-in: real speech (not a short "mhm") over the bot stops it."""
        if self._barged_in_this_turn or self.state not in (State.THINKING, State.SPEAKING):
            return
        if self._failing_over:  # talking over the apology must not keep them with a broken bot
            return
        if voiced_ms < self._policy.barge_in_min_ms:
            return
        self._barged_in_this_turn = True
        log.info("call %s: barge-in at %d ms while %s", self.call_id, at_ms, self.state)
        self._bus.publish(events.BargeIn(call_id=self.call_id, at_ms=at_ms, state=self.state))
        self._machine.fire(Trigger.BARGE_IN)
        self._stop_reply()

    def on_turn_lost(self, error: str) -> None:
        """The caller spoke and was not understood, so got no answer. Once may be a hiccup;
        LOST_TURNS_IN_A_ROW times means speech recognition is down: apologise and hand over."""
        self._lost_turns += 1
        if self._lost_turns < LOST_TURNS_IN_A_ROW or self.state is not State.LISTENING:
            return
        if self.muted or not self._can_speak(report=False):
            return
        self._lost_turns = 0
        self._start_reply(self._fail_over("stt", error))

    def on_turn(self, turn: TurnEnded, transcript: Transcript, timing: TurnTiming) -> None:
        self.turn_count += 1
        self._lost_turns = 0
        if self._dialog.language is None and transcript.language in ("en", "ru"):
            self._dialog.language = transcript.language
        # A short turn while the bot talks or thinks ("mhm") is a backchannel, not a question.
        backchannel = self.state in (State.THINKING, State.SPEAKING)
        self._bus.publish(
            events.TranscriptFinal(
                call_id=self.call_id,
                text=transcript.text,
                language=transcript.language,
                start_ms=turn.start_ms,
                end_ms=turn.end_ms,
                stt_ms=transcript.stt_ms,
                audio_s=round(transcript.audio_s, 3),
                end_reason=turn.reason,
                backchannel=backchannel,
            )
        )
        self.transcript.append(
            {"speaker": "caller", "text": transcript.text, "timings": {}, "at": time.time()}
        )
        if backchannel or self.state in (State.TRANSFERRED, State.ENDED):
            return
        self._dialog.caller_said(transcript.text)  # a muted bot still hears, for later
        if self.muted or not self._can_speak():
            return
        if self._machine.fire(Trigger.TURN_COMPLETE):
            self._start_reply(self._answer(timing), timing)

    # -- the bot speaks -----------------------------------------------------------------------

    def _can_speak(self, *, report: bool = True) -> bool:
        ready = (
            self._line.connected and self._engines.llm is not None and self._engines.tts is not None
        )
        if not ready and report and not self._said_cannot_speak:
            self._said_cannot_speak = True
            why = (
                "FreeSWITCH event socket not connected"
                if not self._line.connected
                else "no LLM or TTS engine"
            )
            log.warning("call %s: listening only, cannot speak: %s", self.call_id, why)
            self._error("cannot_speak", f"cannot speak: {why}")
        return ready

    async def _before_audio(self) -> None:
        """Every file the bot plays passes here: the state table may refuse it."""
        if self.state is State.THINKING and self._listener.caller_stirring:
            # The caller may be going on after a pause judged final: let that sound become a
            # turn (RESUMED drops this reply unheard) or fade, so half a sentence goes unanswered.
            self._caller_quiet.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._caller_quiet.wait(), self._policy.resume_hold_ms / 1000
                )
        if not self._machine.fire(Trigger.AUDIO_READY):
            raise Refused(f"no audio while the call is {self.state}")

    def _start_reply(
        self, work: Coroutine[Any, Any, None], timing: TurnTiming | None = None
    ) -> None:
        """The bot's next utterance; it starts once the previous one has been stopped."""
        previous, stopping = self._reply, self._stopping
        if previous is not None and not previous.done():
            self._stop_reply()
            stopping = self._stopping
        self._reply_timing = timing
        self._reply = self._spawn(self._after(stopping, work))

    async def _after(
        self, stopping: asyncio.Task[None] | None, work: Coroutine[Any, Any, None]
    ) -> None:
        try:
            if stopping is not None:
                await asyncio.wait({stopping})  # however the stop ended, the next words follow
        except BaseException:
            work.close()  # cancelled before it began
            raise
        with contextlib.suppress(Refused):  # the call moved on: nothing more to say
            await work

    async def _answer(self, timing: TurnTiming) -> None:
        try:
            reply = await self._responder.reply(self._dialog.messages(), self.language, timing)
        except Refused:
            raise
        except LLMError as exc:
            await self._fail_over("llm", str(exc))
            return
        except SpeechFailed as exc:  # TTS, the media folder, FreeSWITCH refusing to play
            await self._fail_over(exc.kind, str(exc))
            return
        except Exception as exc:  # no dead air whatever else broke
            await self._fail_over("reply", f"{type(exc).__name__}: {exc}")
            return
        await self._responder.wait_played()
        self._dialog.tools_used(reply.exchanges)
        self._said(reply.text, interrupted=False, timing=timing)
        if reply.handover == "transfer":
            await self.transfer(self._policy.fallback_number, reason=f"asked: {reply.reason}")
        elif reply.handover == "end_call":
            await self._end_call(reply)
        else:
            self._machine.fire(Trigger.REPLY_DONE)

    async def _end_call(self, reply: Reply) -> None:
        """The model ended the call: a goodbye unless it said one, then a polite hang-up."""
        if not reply.text:
            goodbye = self._policy.tool_lines.say("goodbye", self.language)
            with contextlib.suppress(SpeechFailed):
                await self._responder.speak_prompt(goodbye, self.language)
                await self._responder.wait_played()
            self._said(goodbye, interrupted=False)
        log.info("call %s: the bot ends the call (%s)", self.call_id, reply.reason)
        with contextlib.suppress(CallNotReady):
            await self.hangup("NORMAL_CLEARING")

    async def _speak_prompt(self, text: str, kind: str) -> None:
        """The greeting: if it cannot be said, the caller would wait in silence; fail over."""
        try:
            await self._responder.speak_prompt(text, self.language)
        except Refused:
            raise
        except Exception as exc:
            await self._fail_over(kind, str(exc))
            return
        await self._responder.wait_played()
        self._said(text, interrupted=False)
        self._machine.fire(Trigger.REPLY_DONE)

    def _said(self, full: str, *, interrupted: bool, timing: TurnTiming | None = None) -> None:
        """A reply ended: the history keeps only what the caller heard."""
        heard = self._playback.take_heard()
        if interrupted and not heard:
            return  # stopped before a word was heard: no bot turn to record
        self._dialog.bot_said(heard)
        timings = timing.as_ms() if timing else {}
        self._bus.publish(
            events.BotSaid(
                call_id=self.call_id,
                text=heard,
                reply=full,
                interrupted=interrupted,
                timings=timings,
            )
        )
        self.transcript.append(
            {"speaker": "bot", "text": heard, "timings": timings, "at": time.time()}
        )

    def _stop_reply(self) -> None:
        """Stop what the bot is saying or preparing; what was heard is kept (interrupted)."""
        reply, self._reply = self._reply, None
        timing, self._reply_timing = self._reply_timing, None
        previous = self._stopping
        self._stopping = self._spawn(self._silence(reply, previous, timing))

    async def _silence(
        self,
        reply: asyncio.Task[None] | None,
        previous: asyncio.Task[None] | None,
        timing: TurnTiming | None,
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        was_replying = reply is not None and not reply.done()
        if reply is not None:
            reply.cancel()  # it stops at its next await; the state table refuses its audio
        if self._playback.busy:
            await self._playback.interrupt()  # the caller hears silence first
        if reply is not None:
            await asyncio.gather(reply, return_exceptions=True)
        if self._playback.busy:
            try:
                await asyncio.wait_for(self._playback.wait_idle(), BREAK_CONFIRM_S)
            except TimeoutError:
                log.warning("call %s: no PLAYBACK_STOP after break", self.call_id)
                self._playback.give_up()
        if was_replying:
            self._said("", interrupted=True, timing=timing)

    # -- greeting -----------------------------------------------------------------------------

    def start(self, started: events.CallStarted) -> None:
        """The call is answered and its audio is flowing: announce it, take it, say hello.

        `call.started` carries the state the greeting puts the call in, so nobody who reads it
        (the simulator, a viewer) mistakes the instant before the greeting for the caller's turn.
        """
        speaks = self._can_speak(report=False)  # reported at the first turn, once the call exists
        greets = speaks and bool(self._policy.greeting) and self._machine.can(Trigger.GREET)
        state = TRANSITIONS[self.state][Trigger.GREET] if greets else self.state
        self._bus.publish(started.model_copy(update={"state": state}))
        if speaks:
            self._spawn(self._take_call())
        if greets and self._machine.fire(Trigger.GREET):
            self._start_reply(self._speak_prompt(self._policy.greeting, "greeting"))

    async def _take_call(self) -> None:
        """Cancel the dialplan's fallback (apology + transfer) now that the bot has the call."""
        try:
            await self._line.cancel_scheduled()
        except Exception as exc:
            log.warning("call %s: could not cancel the dialplan's fallback: %s", self.call_id, exc)
        if self._policy.record_calls:
            await self._start_recording()

    async def _start_recording(self) -> None:
        # FreeSWITCH writes the file: the media folder has the same path on both sides.
        path = (self._policy.media_dir / "recordings" / f"{self.call_id}.wav").resolve()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            await self._line.record(str(path))
        except Exception as exc:
            log.warning("call %s: recording did not start: %s", self.call_id, exc)
            self._error("recording", str(exc))
            return
        self._bus.publish(events.CallRecording(call_id=self.call_id, path=str(path)))

    # -- failures, transfer, hang-up ----------------------------------------------------------

    async def _fail_over(self, kind: str, message: str) -> None:
        """No dead air: apologise, then hand the caller to a person or end politely.

        Each step that fails is logged and the next one still runs: the call never stays in
        `thinking` or `speaking` with nobody talking.
        """
        number = self._policy.fallback_number
        then = f"transferring to {number}" if number else "hanging up"
        log.error("call %s: %s failed: %s; apologising, then %s", self.call_id, kind, message, then)
        self._error(kind, message)
        if not self._machine.fire(Trigger.APOLOGISE):
            return  # transferred or ended meanwhile: nothing left to hand over
        self._failing_over = True
        try:
            await self._apologise()
            if number and await self.transfer(number, reason=f"{kind} failed"):
                return
            if self.state in (State.TRANSFERRED, State.ENDED):
                return  # handed on or ended meanwhile (the operator, the caller)
            self._error("ended_by_bot", f"{kind} failed")
            await self.hangup("NORMAL_CLEARING")
        except CallNotReady as exc:
            log.error("call %s: could not end the call either (%s); listening", self.call_id, exc)
            self._machine.fire(Trigger.REPLY_DONE)  # the bot is silent: the caller has the floor
        finally:
            self._failing_over = False

    async def _apologise(self) -> None:
        """The apology from the prompt cache; when it cannot be played, the hand-over still runs."""
        try:
            await self._responder.speak_prompt(self._policy.apology, self.language)
            await self._responder.wait_played()
        except Refused:
            raise
        except Exception as exc:
            log.error("call %s: the apology could not be played either: %s", self.call_id, exc)
            self._error("apology", str(exc))
        self._said(self._policy.apology, interrupted=False, timing=self._reply_timing)

    async def transfer(self, number: str, *, reason: str) -> bool:
        """Bridge the caller to `number`; the bot goes quiet first. False if refused or failed."""
        if not self._machine.fire(Trigger.TRANSFER):
            return False
        if asyncio.current_task() is not self._reply:
            self._stop_reply()
            await asyncio.shield(self._stopping)  # type: ignore[arg-type]
        elif self._playback.busy:  # the failing reply transfers itself: stop its own audio
            await self._playback.interrupt()
        try:
            await self._line.transfer(number)
        except Exception as exc:
            log.error("call %s: transfer to %s failed: %s", self.call_id, number, exc)
            self._error("transfer", str(exc))
            self._machine.fire(Trigger.TRANSFER_FAILED)
            return False
        # The bot's leg stays in the bridge and the fork keeps streaming: it stays quiet.
        self.transferred_to = number
        self._bus.publish(events.CallTransferred(call_id=self.call_id, to=number, reason=reason))
        return True

    async def hangup(self, cause: str) -> None:
        """The bot (or an operator) ends the call; FreeSWITCH's hang-up event ends the session."""
        try:
            await self._line.hangup(cause)
        except Refused:
            raise CallNotReady(f"the call is {self.state}") from None
        except Exception as exc:
            log.error("call %s: hangup failed: %s", self.call_id, exc)
            self._error("hangup", str(exc))
            raise CallNotReady(f"FreeSWITCH refused: {exc}") from exc

    # -- operator controls --------------------------------------------------------------------

    def set_muted(self, muted: bool) -> None:
        """A muted bot stops answering (and stops talking now); unmuted, it answers again."""
        if muted == self.muted:
            return
        self.muted = muted
        self._bus.publish(events.CallMuted(call_id=self.call_id, muted=muted))
        if muted and self._machine.state in (State.THINKING, State.SPEAKING):
            self._machine.fire(Trigger.SILENCE)
            self._stop_reply()

    def say(self, text: str) -> None:
        """Speak `text` now, instead of whatever the bot was saying (an operator's words)."""
        if not self._can_speak(report=False):
            raise CallNotReady("the bot cannot speak on this call (no event socket)")
        if not self._machine.fire(Trigger.SAY):
            raise CallNotReady(f"the call is {self.state}")
        self._start_reply(self._say_now(text))

    async def _say_now(self, text: str) -> None:
        try:
            await self._responder.speak(text, self.language)
        except Refused:
            raise
        except Exception as exc:
            self._error("say", str(exc))
        await self._responder.wait_played()
        self._said(text, interrupted=False)
        self._machine.fire(Trigger.REPLY_DONE)

    # -- FreeSWITCH's events ------------------------------------------------------------------

    def on_playback_started(self, path: str) -> None:
        if not self._playback.on_start(path):
            return
        timing = self._reply_timing
        if timing is not None and "playback_started" not in timing.stages:
            timing.mark("playback_started")
            self._bus.publish(events.TurnLatency(call_id=self.call_id, **timing.as_ms()))

    def on_playback_stopped(self, path: str, status: str, offset: int, codec_rate: int) -> None:
        self._playback.on_stop(path, status, offset, codec_rate)

    def on_dtmf(self, digit: str) -> None:
        self._bus.publish(events.Dtmf(call_id=self.call_id, digit=digit))
        if digit and digit == self._policy.transfer_digit and self._policy.fallback_number:
            number = self._policy.fallback_number
            self._spawn(self.transfer(number, reason=f"caller pressed {digit}"))

    def on_hangup(self, cause: str) -> None:
        """FreeSWITCH hung the call up: stop all work, keep the cause for the record."""
        self.hangup_cause = cause
        self._hung_up.set()
        if self._machine.fire(Trigger.HANGUP):
            self._cancel_reply()
        self._bus.publish(events.CallHangup(call_id=self.call_id, cause=cause))

    def on_esl_lost(self) -> None:
        """No more PLAYBACK events will come: release waiters (the files stay until the end)."""
        self._playback.give_up()
        self._error("esl", "FreeSWITCH event socket connection lost")
        if self.state in (State.THINKING, State.SPEAKING):
            self._machine.fire(Trigger.SILENCE)
            self._stop_reply()

    def note_text(self, text: str) -> None:
        """A TEXT frame after the metadata (uuid_audio_fork send_text)."""
        self._bus.publish(events.ForkText(call_id=self.call_id, text=text))

    # -- end ----------------------------------------------------------------------------------

    async def finish(self, reason: str) -> None:
        """The caller's audio ended: transcribe what is left, then end the call."""
        if self.state is not State.ENDED:
            self._machine.fire(Trigger.HANGUP)
        self._cancel_reply()
        await self._listener.finish()
        await self._cancel_tasks()
        self._remove_media()
        if self.hangup_cause is None and self._line.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hung_up.wait(), HANGUP_CAUSE_WAIT_S)
        self._bus.publish(
            events.CallEnded(
                call_id=self.call_id,
                reason=reason,
                turns=self.turn_count,
                hangup_cause=self.hangup_cause,
                transferred=self.transferred_to is not None,
            )
        )

    async def abort(self, reason: str) -> None:
        """Stop at once (service shutdown): pending turns are dropped, the record says why."""
        if self.state is not State.ENDED:
            self._machine.fire(Trigger.HANGUP)
        await self._listener.abort()
        await self._cancel_tasks()
        self._remove_media()
        self._bus.publish(
            events.CallEnded(call_id=self.call_id, reason=reason, turns=self.turn_count)
        )

    def summary(self) -> dict[str, object]:
        """The call as a late viewer needs it."""
        return {
            "id": self.call_id,
            "caller": self.info.caller,
            "caller_name": self.info.caller_name,
            "callee": self.info.callee,
            "direction": self.info.direction,
            "state": str(self.state),
            "started_at": self.started_at,
            "muted": self.muted,
            "turns": list(self.transcript),
            "tool_calls": list(self.tool_calls),
            "messages": list(self.messages),
        }

    def _tool_event(self, event: events.BaseEvent) -> None:
        """A tool's event: published, and kept for the summary a late viewer gets."""
        entry = {**event.data, "at": event.at}
        if isinstance(event, events.ToolCalled):
            self.tool_calls.append(entry)
        elif isinstance(event, events.MessageTaken):
            self.messages.append(entry)
        self._bus.publish(event)

    # -- plumbing -----------------------------------------------------------------------------

    def _error(self, kind: str, message: str) -> None:
        self._bus.publish(events.CallError(call_id=self.call_id, kind=kind, message=message))

    def _cancel_reply(self) -> None:
        self._playback.give_up()
        for task in (self._reply, self._stopping):
            if task is not None:
                task.cancel()
        self._reply = self._stopping = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("call %s: %s", self.call_id, exc, exc_info=exc)
            self._error("internal", str(exc))

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _remove_media(self) -> None:
        with contextlib.suppress(OSError):
            for path in self._media.glob("*.wav"):
                path.unlink()
            self._media.rmdir()
