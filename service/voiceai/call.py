"""One call: caller audio → turns → transcripts → replies spoken over ESL, with barge-in.

This is the one place where turn-taking rules live: when the bot answers, when the caller
may interrupt it, what a DTMF digit does, what happens when an engine fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from voiceai import events
from voiceai.audio.pcm import FrameChunker, left_channel, resample, to_float
from voiceai.audio.turns import SpeechPaused, SpeechStarted, TurnConfig, TurnDetector, TurnEnded
from voiceai.dialog import Dialog, SentenceSplitter
from voiceai.engines.llm import LanguageModel, LLMError
from voiceai.engines.stt import WHISPER_RATE, SpeechToText, STTError, Transcript
from voiceai.engines.tts import SpeechSynthesizer, TTSError, speakable, write_wav
from voiceai.events import EventBus
from voiceai.playback import DEFAULT_CODEC_RATE, PlaybackQueue, Utterance
from voiceai.prompts import PromptCache
from voiceai.telephony import commands
from voiceai.telephony.esl import EslClient, EslEvent

log = logging.getLogger(__name__)

VAD_FRAME_MS = 20
DRAIN_TIMEOUT_S = 60.0  # longest a hung-up call waits for its last transcriptions
BREAK_CONFIRM_S = 2.0  # longest wait for FreeSWITCH to confirm a break with PLAYBACK_STOP
PLAYBACK_SLACK_S = 5.0  # beyond the queued audio's length, before playback counts as lost
PARTIAL_EVERY_MS = 1000  # a partial transcript about once a second while the caller speaks
HANGUP_CAUSE_WAIT_S = 1.0  # the fork often closes just before CHANNEL_HANGUP_COMPLETE arrives


class CallNotReady(Exception):
    """The call cannot do what was asked right now (no event socket, already ended...)."""


class CallState(enum.StrEnum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"
    TRANSFERRED = "transferred"
    ENDED = "ended"


@dataclass
class Engines:
    """What every call shares, made once at start-up."""

    stt: SpeechToText
    llm: LanguageModel | None
    tts: SpeechSynthesizer | None
    esl: EslClient | None
    prompts: PromptCache | None
    bus: EventBus


@dataclass(frozen=True)
class CallPolicy:
    turn: TurnConfig
    barge_in_min_ms: int = 300
    system_prompt: str = ""
    greeting: str = ""
    apology: str = "I'm sorry, I'm having trouble right now."
    fallback_number: str = ""
    transfer_digit: str = ""
    media_dir: Path = Path("data/media")
    partial_transcripts: bool = True
    record_calls: bool = False


@dataclass
class CallInfo:
    """Who is on the line, from the fork's metadata."""

    caller: str | None = None
    caller_name: str | None = None
    callee: str | None = None
    direction: str = "inbound"


@dataclass
class TurnTiming:
    """When each stage of one reply happened (loop clock), relative to the caller's last word."""

    speech_end_at: float
    stages: dict[str, float] = field(default_factory=dict)

    def mark(self, stage: str) -> None:
        self.stages.setdefault(stage, asyncio.get_running_loop().time())

    def as_ms(self) -> dict[str, int]:
        return {k: round((t - self.speech_end_at) * 1000) for k, t in self.stages.items()}


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
        self.muted = False
        self.transcript: list[dict[str, object]] = []  # the call so far, for late viewers
        self.rate = rate
        self.channels = channels
        self.language = language
        self._state = CallState.LISTENING
        self.turn_count = 0
        self.hangup_cause: str | None = None
        self._engines = engines
        self._bus = engines.bus
        self._policy = policy
        self._detector = TurnDetector(rate, VAD_FRAME_MS, policy.turn)
        self._chunker = FrameChunker(self._detector.frame_bytes * channels)
        self._turns: asyncio.Queue[tuple[TurnEnded, TurnTiming, asyncio.Task | None] | None]
        self._turns = asyncio.Queue()
        self._early: tuple[SpeechPaused, asyncio.Task[Transcript | None]] | None = None
        self._worker = asyncio.create_task(self._handle_turns(), name=f"turns-{call_id}")
        self._dialog = Dialog(policy.system_prompt, language)
        self._playback = PlaybackQueue(engines.esl, call_id) if engines.esl else None
        self._reply: asyncio.Task[None] | None = None
        self._reply_timing: TurnTiming | None = None
        self._barged_in_this_turn = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._files = itertools.count(1)
        self._media = policy.media_dir / call_id
        self._said_cannot_speak = False
        self._partial_enabled = policy.partial_transcripts
        self._hung_up = asyncio.Event()
        self._partial: asyncio.Task[None] | None = None
        self._next_partial_ms = PARTIAL_EVERY_MS

    @property
    def state(self) -> CallState:
        return self._state

    @state.setter
    def state(self, state: CallState) -> None:
        if state is not self._state:
            self._state = state
            self._bus.publish(events.CALL_STATE, self.call_id, state=str(state))

    # -- audio in ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Caller audio as it arrives: any number of bytes, any split."""
        for frame in self._chunker.push(data):
            mono = left_channel(frame) if self.channels == 2 else frame
            for event in self._detector.push(mono):
                self._on_turn_event(event)
            self._check_barge_in()
            self._maybe_partial()

    def _on_turn_event(self, event: SpeechStarted | SpeechPaused | TurnEnded) -> None:
        if isinstance(event, SpeechStarted):
            self._barged_in_this_turn = False
            self._next_partial_ms = event.at_ms + PARTIAL_EVERY_MS
            self._bus.publish(events.SPEECH_STARTED, self.call_id, at_ms=event.at_ms)
        elif isinstance(event, SpeechPaused):
            self._transcribe_early(event)
        else:
            # The caller's last word was (position - end_ms) ago, if audio arrives in real time.
            lag_s = (self._detector.position_ms - event.end_ms) / 1000
            timing = TurnTiming(asyncio.get_running_loop().time() - lag_s)
            timing.mark("end_of_turn")
            self._turns.put_nowait((event, timing, self._take_early(event)))

    def _maybe_partial(self) -> None:
        """While the caller speaks, show what they say so far (one transcription at a time)."""
        if not self._partial_enabled or self._detector.position_ms < self._next_partial_ms:
            return
        if self._partial is not None and not self._partial.done():
            return
        if self._early is not None and not self._early[1].done():
            return  # the (probably final) transcript is under way: leave the CPU to it
        if self._detector.trailing_silence_ms > 0:
            return  # partials follow speech; in a pause the final transcript and reply need the CPU
        so_far = self._detector.turn_so_far()
        if so_far is None:
            return
        self._next_partial_ms = self._detector.position_ms + PARTIAL_EVERY_MS
        self._partial = asyncio.create_task(self._publish_partial(*so_far))

    async def _publish_partial(self, audio, start_ms: int) -> None:  # type: ignore[no-untyped-def]
        try:
            transcript = await self._stt(audio)
        except STTError:
            return  # a partial is a courtesy; the final transcript reports failures
        if transcript is not None and self._detector.in_turn:
            self._bus.publish(
                events.TRANSCRIPT_PARTIAL, self.call_id, text=transcript.text, start_ms=start_ms
            )

    def _transcribe_early(self, paused: SpeechPaused) -> None:
        """Transcribe while the end-of-turn silence elapses, so the text is ready at its end."""
        self._drop_early()
        task = asyncio.create_task(self._stt(paused.audio))
        self._early = (paused, task)

    def _take_early(self, turn: TurnEnded) -> asyncio.Task[Transcript | None] | None:
        if self._early is None:
            return None
        paused, task = self._early
        self._early = None
        if (paused.start_ms, paused.end_ms) == (turn.start_ms, turn.end_ms):
            return task  # no speech since the pause: the audio is the same
        task.cancel()
        return None

    def _drop_early(self) -> None:
        if self._early is not None:
            self._early[1].cancel()
            self._early = None

    async def _stt(self, audio_at_call_rate) -> Transcript | None:  # type: ignore[no-untyped-def]
        audio = to_float(resample(audio_at_call_rate, self.rate, WHISPER_RATE))
        language = self._dialog.language
        return await self._engines.stt.transcribe(audio, language)

    # -- turns → transcripts → replies -------------------------------------------------------

    async def _handle_turns(self) -> None:
        while (item := await self._turns.get()) is not None:
            turn, timing, early = item
            try:
                transcript = await (early if early is not None else self._stt(turn.audio))
            except asyncio.CancelledError:
                if self.state is CallState.ENDED and early is None:
                    raise
                transcript = await self._stt(turn.audio)  # the early one was cancelled
            except STTError as exc:
                log.error("call %s: turn at %d ms lost: %s", self.call_id, turn.start_ms, exc)
                self._bus.publish(events.CALL_ERROR, self.call_id, kind="stt", message=str(exc))
                continue
            timing.mark("transcript")
            if transcript is None:
                log.info(
                    "call %s: no speech in turn at %d ms (noise?)", self.call_id, turn.start_ms
                )
                continue
            self._on_transcript(turn, transcript, timing)

    def _on_transcript(self, turn: TurnEnded, transcript: Transcript, timing: TurnTiming) -> None:
        self.turn_count += 1
        if self._dialog.language is None and transcript.language in ("en", "ru"):
            self._dialog.language = transcript.language
        # A short turn while the bot talks or thinks ("mhm") is a backchannel, not a question.
        backchannel = self.state in (CallState.THINKING, CallState.SPEAKING)
        self._bus.publish(
            events.TRANSCRIPT_FINAL,
            self.call_id,
            text=transcript.text,
            language=transcript.language,
            start_ms=turn.start_ms,
            end_ms=turn.end_ms,
            stt_ms=transcript.stt_ms,
            audio_s=round(transcript.audio_s, 3),
            end_reason=turn.reason,
            backchannel=backchannel,
        )
        self.transcript.append({"speaker": "caller", "text": transcript.text, "timings": {}})
        if backchannel or self.state in (CallState.TRANSFERRED, CallState.ENDED):
            return
        if self.muted:
            self._dialog.caller_said(transcript.text)  # heard, kept for later, not answered
            return
        self._dialog.caller_said(transcript.text)
        if self._can_speak():
            self.state = CallState.THINKING
            self._reply = self._spawn(self._answer(timing))

    def _can_speak(self, *, report: bool = True) -> bool:
        esl = self._engines.esl
        ready = (
            esl is not None
            and esl.connected
            and self._engines.llm is not None
            and self._engines.tts is not None
        )
        if not ready and report and not self._said_cannot_speak:
            self._said_cannot_speak = True
            why = (
                "FreeSWITCH event socket not connected"
                if esl is None or not esl.connected
                else ("no LLM or TTS engine")
            )
            log.warning("call %s: listening only, cannot speak: %s", self.call_id, why)
            self._bus.publish(
                events.CALL_ERROR, self.call_id, kind="cannot_speak", message=f"cannot speak: {why}"
            )
        return ready

    async def _answer(self, timing: TurnTiming) -> None:
        """One reply: LLM tokens → sentences → TTS → playback, each stage overlapping."""
        assert self._engines.llm is not None
        self.state = CallState.THINKING
        self._reply_timing = timing
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_sentences(sentences, timing))
        splitter = SentenceSplitter()
        full = ""
        try:
            stream = self._engines.llm.stream_reply(self._dialog.messages())
            async with contextlib.aclosing(stream) as pieces:  # closing stops generation
                async for piece in pieces:
                    timing.mark("llm_first_token")
                    full += piece
                    self._bus.publish(events.REPLY_DELTA, self.call_id, text=piece)
                    for sentence in splitter.push(piece):
                        timing.mark("first_sentence")
                        sentences.put_nowait(sentence)
            rest = splitter.flush()
            if rest:
                timing.mark("first_sentence")
                sentences.put_nowait(rest)
        except LLMError as exc:
            sentences.put_nowait(None)
            await speaker
            await self._fail_over("llm", str(exc))
            return
        except BaseException:
            speaker.cancel()
            raise
        sentences.put_nowait(None)
        await speaker
        await self._playback_idle()
        self._finish_reply(full, interrupted=False)

    async def _speak_sentences(
        self, sentences: asyncio.Queue[str | None], timing: TurnTiming
    ) -> None:
        while (sentence := await sentences.get()) is not None:
            text = speakable(sentence)
            if not text:
                continue
            try:
                await self._speak(text, timing)
            except TTSError as exc:
                log.error("call %s: could not speak %r: %s", self.call_id, text[:60], exc)
                self._bus.publish(events.CALL_ERROR, self.call_id, kind="tts", message=str(exc))

    async def _speak(self, text: str, timing: TurnTiming | None = None) -> None:
        assert self._engines.tts is not None and self._playback is not None
        started = time.perf_counter()
        audio = await self._engines.tts.synthesize(text, self._speech_language(), self.rate)
        self._bus.publish(
            events.TTS_AUDIO,
            self.call_id,
            engine=audio.engine,
            fallback=audio.fallback,
            synth_ms=round((time.perf_counter() - started) * 1000),
            audio_s=round(audio.duration_s, 3),
        )
        if timing is not None:
            timing.mark("first_audio")
        self._media.mkdir(parents=True, exist_ok=True)
        path = write_wav(self._media / f"say-{next(self._files)}.wav", audio)
        self.state = CallState.SPEAKING
        await self._playback.play(Utterance(path, text, audio.duration_s))
        if timing is not None:
            timing.mark("play_sent")

    async def say_prompt(self, text: str) -> None:
        """A fixed phrase (greeting, apology): synthesized once, shared by every call."""
        if not text or self._playback is None or self._engines.prompts is None:
            return
        prompt = await self._engines.prompts.get(text, self._speech_language(), self.rate)
        self.state = CallState.SPEAKING
        await self._playback.play(Utterance(prompt.path, text, prompt.duration_s, keep_file=True))

    def _speech_language(self) -> str:
        return self._dialog.language or "en"

    async def _playback_idle(self) -> None:
        """Until FreeSWITCH has played everything queued; never longer than it could take."""
        if self._playback is None:
            return
        limit = self._playback.remaining_s() + PLAYBACK_SLACK_S
        try:
            await asyncio.wait_for(self._playback.wait_idle(), limit)
        except TimeoutError:
            # FreeSWITCH sends no PLAYBACK events for a file it cannot open.
            message = (
                f"FreeSWITCH did not play the reply within {limit:.0f} s; is "
                "VOICEAI_MEDIA_DIR the same folder (same path) for FreeSWITCH and the service?"
            )
            log.error("call %s: %s", self.call_id, message)
            self._bus.publish(events.CALL_ERROR, self.call_id, kind="playback", message=message)
            self._playback.abandon()

    def _finish_reply(self, full: str, *, interrupted: bool) -> None:
        heard = self._playback.take_heard() if self._playback else ""
        self._dialog.bot_said(heard)
        timing = self._reply_timing
        self._reply_timing = None
        timings = timing.as_ms() if timing else {}
        self._bus.publish(
            events.BOT_SAID,
            self.call_id,
            text=heard,
            reply=full,
            interrupted=interrupted,
            timings=timings,
        )
        self.transcript.append({"speaker": "bot", "text": heard, "timings": timings})
        if self.state in (CallState.THINKING, CallState.SPEAKING):
            self.state = CallState.LISTENING

    # -- greeting ------------------------------------------------------------------------------

    def start(self) -> None:
        """The call is answered and its audio is flowing: take it, and say hello once.

        The state is set quietly: `call.started` (published next) carries it.
        """
        if self._can_speak(report=False):  # reported at the first turn, once the call exists
            self._spawn(self._take_call())
            if self._policy.greeting:
                self._state = CallState.SPEAKING
                self._reply = self._spawn(self._greet())

    async def _take_call(self) -> None:
        """Cancel the dialplan's fallback (apology + transfer) now that the bot has the call."""
        assert self._engines.esl is not None
        try:
            await commands.cancel_scheduled(self._engines.esl, self.call_id)
        except Exception as exc:
            log.warning("call %s: could not cancel the dialplan's fallback: %s", self.call_id, exc)
        if self._policy.record_calls:
            await self._start_recording()

    async def _start_recording(self) -> None:
        assert self._engines.esl is not None
        # FreeSWITCH writes the file: the media folder has the same path on both sides.
        path = (self._policy.media_dir / "recordings" / f"{self.call_id}.wav").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            await commands.record(self._engines.esl, self.call_id, str(path))
        except Exception as exc:
            log.warning("call %s: recording did not start: %s", self.call_id, exc)
            self._bus.publish(events.CALL_ERROR, self.call_id, kind="recording", message=str(exc))
            return
        self._bus.publish(events.CALL_RECORDING, self.call_id, path=str(path))

    async def _greet(self) -> None:
        try:
            await self.say_prompt(self._policy.greeting)
        except (TTSError, commands.CommandError, OSError) as exc:
            log.error("call %s: greeting failed: %s", self.call_id, exc)
            self._bus.publish(events.CALL_ERROR, self.call_id, kind="greeting", message=str(exc))
            self.state = CallState.LISTENING
            return
        await self._playback_idle()
        self._finish_reply(self._policy.greeting, interrupted=False)

    # -- barge-in ------------------------------------------------------------------------------

    def _check_barge_in(self) -> None:
        if self._barged_in_this_turn or self.state not in (CallState.THINKING, CallState.SPEAKING):
            return
        if self._detector.turn_voiced_ms < self._policy.barge_in_min_ms:
            return
        self._barged_in_this_turn = True
        self._spawn(self._barge_in(self._detector.position_ms))

    async def _barge_in(self, at_ms: int) -> None:
        """The caller talks over the bot: stop the audio, drop pending work, keep what was heard."""
        log.info("call %s: barge-in at %d ms while %s", self.call_id, at_ms, self.state)
        self._bus.publish(events.BARGE_IN, self.call_id, at_ms=at_ms, state=str(self.state))
        reply, self._reply = self._reply, None
        await self._silence(reply)

    # -- failures, transfer, DTMF, hangup ------------------------------------------------------

    async def _fail_over(self, kind: str, message: str) -> None:
        """No dead air: apologise, then hand the caller to a person or end politely."""
        log.error("call %s: %s failed: %s", self.call_id, kind, message)
        self._bus.publish(events.CALL_ERROR, self.call_id, kind=kind, message=message)
        try:
            await self.say_prompt(self._policy.apology)
            await self._playback_idle()
        except Exception as exc:
            log.error("call %s: could not apologise: %s", self.call_id, exc)
        self._finish_reply("", interrupted=False)
        if self._policy.fallback_number:
            await self.transfer(self._policy.fallback_number, reason=f"{kind} failed")
        else:
            await self.hangup("NORMAL_CLEARING", reason=f"{kind} failed")

    async def transfer(self, number: str, *, reason: str) -> None:
        esl = self._engines.esl
        if esl is None:
            return
        if self._playback is not None and self._playback.busy:
            await self._playback.interrupt()
        try:
            await commands.transfer(esl, self.call_id, number)
        except Exception as exc:
            log.error("call %s: transfer to %s failed: %s", self.call_id, number, exc)
            self._bus.publish(events.CALL_ERROR, self.call_id, kind="transfer", message=str(exc))
            return
        # The bot's leg stays in the bridge and the fork keeps streaming: go quiet.
        self.state = CallState.TRANSFERRED
        self._bus.publish(events.CALL_TRANSFERRED, self.call_id, to=number, reason=reason)

    async def hangup(self, cause: str, *, reason: str) -> None:
        esl = self._engines.esl
        if esl is None:
            return
        try:
            await commands.hangup(esl, self.call_id, cause)
        except Exception as exc:
            log.error("call %s: hangup failed: %s", self.call_id, exc)
        self._bus.publish(events.CALL_ERROR, self.call_id, kind="ended_by_bot", message=reason)

    # -- operator controls ----------------------------------------------------------------

    def set_muted(self, muted: bool) -> None:
        """A muted bot stops answering (and stops talking now); unmuted, it answers again."""
        if muted == self.muted:
            return
        self.muted = muted
        self._bus.publish(events.CALL_MUTED, self.call_id, muted=muted)
        if muted and self.state in (CallState.THINKING, CallState.SPEAKING):
            reply, self._reply = self._reply, None
            self._spawn(self._silence(reply))

    def say(self, text: str) -> None:
        """Speak `text` now, instead of whatever the bot was saying (an operator's words)."""
        if self.state in (CallState.TRANSFERRED, CallState.ENDED):
            raise CallNotReady(f"the call is {self.state}")
        if not self._can_speak(report=False):
            raise CallNotReady("the bot cannot speak on this call (no event socket)")
        previous, self._reply = self._reply, None
        self._reply = self._spawn(self._say_now(text, previous))

    async def _say_now(self, text: str, previous: asyncio.Task[None] | None) -> None:
        await self._silence(previous)
        self.state = CallState.SPEAKING
        try:
            await self._speak(text)
        except (TTSError, commands.CommandError) as exc:
            self._bus.publish(events.CALL_ERROR, self.call_id, kind="say", message=str(exc))
        await self._playback_idle()
        self._finish_reply(text, interrupted=False)

    async def _silence(self, reply: asyncio.Task[None] | None) -> None:
        """Stop `reply` and the playback without counting it as a barge-in."""
        if reply is not None and reply is not asyncio.current_task():
            reply.cancel()
            await asyncio.gather(reply, return_exceptions=True)
        if self._playback is not None and self._playback.busy:
            await self._playback.interrupt()
            try:
                await asyncio.wait_for(self._playback.wait_idle(), BREAK_CONFIRM_S)
            except TimeoutError:
                log.warning("call %s: no PLAYBACK_STOP after break", self.call_id)
                self._playback.abandon()
        if self.state in (CallState.THINKING, CallState.SPEAKING):
            self._finish_reply("", interrupted=True)

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
        }

    def on_esl_event(self, event: EslEvent) -> None:
        if event.name == "PLAYBACK_START" and self._playback is not None:
            self._playback.on_start(event.headers.get("Playback-File-Path", ""))
            timing = self._reply_timing
            if timing is not None and "playback_started" not in timing.stages:
                timing.mark("playback_started")
                self._bus.publish(events.TURN_LATENCY, self.call_id, **timing.as_ms())
        elif event.name == "PLAYBACK_STOP" and self._playback is not None:
            self._playback.on_stop(
                event.headers.get("Playback-File-Path", ""),
                event.headers.get("Playback-Status", "done"),
                _int(event.headers.get("variable_playback_last_offset_pos")),
                _int(event.headers.get("Channel-Read-Codec-Rate")) or DEFAULT_CODEC_RATE,
            )
        elif event.name == "DTMF":
            self._on_dtmf(event.headers.get("DTMF-Digit", ""))
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            self.on_hangup(event.headers.get("Hangup-Cause", "NORMAL_CLEARING"))

    def _on_dtmf(self, digit: str) -> None:
        self._bus.publish(events.DTMF, self.call_id, digit=digit)
        wants_person = digit != "" and digit == self._policy.transfer_digit
        if not wants_person or not self._policy.fallback_number:
            return
        if self.state not in (CallState.TRANSFERRED, CallState.ENDED):
            self._cancel_reply()
            number = self._policy.fallback_number
            self._spawn(self.transfer(number, reason=f"caller pressed {digit}"))

    def on_hangup(self, cause: str) -> None:
        """FreeSWITCH hung the call up: stop all work, keep the cause for the record."""
        self.hangup_cause = cause
        self._hung_up.set()
        self.state = CallState.ENDED
        self._cancel_reply()
        if self._playback is not None:
            self._playback.abandon()
        self._bus.publish(events.CALL_HANGUP, self.call_id, cause=cause)

    def on_esl_lost(self) -> None:
        if self._playback is not None:
            self._playback.abandon()
        self._bus.publish(
            events.CALL_ERROR,
            self.call_id,
            kind="esl",
            message="FreeSWITCH event socket connection lost",
        )

    def note_text(self, text: str) -> None:
        """A TEXT frame after the metadata (uuid_audio_fork send_text)."""
        self._bus.publish(events.FORK_TEXT, self.call_id, text=text)

    # -- end -----------------------------------------------------------------------------------

    async def finish(self, reason: str) -> None:
        """The caller's audio ended: transcribe what is left, then end the call."""
        ending = self.state
        self.state = CallState.ENDED
        self._cancel_reply()
        if self._playback is not None:
            self._playback.abandon()
        self._drop_early()
        if self._partial is not None:
            self._partial.cancel()
        for event in self._detector.finish():
            if isinstance(event, TurnEnded):
                timing = TurnTiming(asyncio.get_running_loop().time())
                self._turns.put_nowait((event, timing, None))
        self._turns.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("call %s: gave up on its last transcriptions at hangup", self.call_id)
            self._worker.cancel()
        await self._cancel_tasks()
        self._remove_media()
        esl = self._engines.esl
        if self.hangup_cause is None and esl is not None and esl.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hung_up.wait(), HANGUP_CAUSE_WAIT_S)
        self._bus.publish(
            events.CALL_ENDED,
            self.call_id,
            reason=reason,
            turns=self.turn_count,
            hangup_cause=self.hangup_cause,
            transferred=ending is CallState.TRANSFERRED,
        )

    async def abort(self, reason: str) -> None:
        """Stop at once (service shutdown): pending turns are dropped, the record says why."""
        self.state = CallState.ENDED
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        await self._cancel_tasks()
        self._remove_media()
        self._bus.publish(events.CALL_ENDED, self.call_id, reason=reason, turns=self.turn_count)

    def _cancel_reply(self) -> None:
        if self._reply is not None:
            self._reply.cancel()
            self._reply = None

    def _spawn(self, coro) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("call %s: %s", self.call_id, exc, exc_info=exc)
            self._bus.publish(events.CALL_ERROR, self.call_id, kind="internal", message=str(exc))

    async def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _remove_media(self) -> None:
        with contextlib.suppress(OSError):
            for path in self._media.glob("*.wav"):
                path.unlink()
            self._media.rmdir()


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


class CallRegistry:
    """The calls in progress, by id; one fork stream a call."""

    def __init__(self) -> None:
        self._calls: dict[str, CallSession] = {}

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._calls

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call: CallSession) -> None:
        self._calls[call.call_id] = call

    def remove(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def get(self, call_id: str) -> CallSession | None:
        return self._calls.get(call_id)

    def all(self) -> list[CallSession]:
        return list(self._calls.values())
