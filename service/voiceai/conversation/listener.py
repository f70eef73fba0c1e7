"""The caller's side of a call: audio bytes → frames → turns → transcripts.

It decides nothing about replies: it tells its host when the caller speaks and what a finished
turn said; the session decides what that means (an answer, a barge-in, a backchannel).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from voiceai import events
from voiceai.audio.pcm import FrameChunker, left_channel, resample, to_float
from voiceai.audio.turns import (
    SpeechPaused,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEnded,
    Verdict,
)
from voiceai.audio.vad import SpeechProbability
from voiceai.conversation.timing import TurnTiming
from voiceai.engines.stt import WHISPER_RATE, STTError, Transcript
from voiceai.engines.stt_scheduler import Dropped, Priority, TranscriptionScheduler
from voiceai.engines.turn import TurnCompletion, judge, worth_a_listen
from voiceai.events import EventBus

log = logging.getLogger(__name__)

VAD_FRAME_MS = 20
DRAIN_TIMEOUT_S = 60.0  # longest a hung-up call waits for its last transcriptions
PARTIAL_EVERY_MS = 1000  # a partial transcript about once a second while the caller speaks


class ListenerHost(Protocol):
    """What the listener reports to the call it belongs to."""

    def on_speech_started(self, at_ms: int) -> None: ...

    def on_caller_voiced(self, voiced_ms: int, at_ms: int) -> None:
        """After every frame of a turn in progress: how long the caller has really spoken."""
        ...

    def on_turn(self, turn: TurnEnded, transcript: Transcript, timing: TurnTiming) -> None: ...

    def on_turn_lost(self, error: str) -> None:
        """A turn speech recognition could not transcribe (the caller was not heard)."""
        ...


_Queued = tuple[TurnEnded, TurnTiming, "asyncio.Task[Transcript | None] | None"]


class Listener:
    def __init__(
        self,
        call_id: str,
        *,
        rate: int,
        channels: int,
        turn: TurnConfig,
        stt: TranscriptionScheduler,
        bus: EventBus,
        host: ListenerHost,
        language: Callable[[], str | None],
        partials: bool = True,
        speech: SpeechProbability | None = None,
        turn_model: TurnCompletion | None = None,
        complete_threshold: float = 0.5,
    ) -> None:
        self.call_id = call_id
        self._rate = rate
        self._channels = channels
        self._stt_engine = stt
        self._bus = bus
        self._host = host
        self._language = language
        self._partials = partials
        self._turn_model = turn_model
        self._complete_threshold = complete_threshold
        self._judging: asyncio.Task[None] | None = None
        self._detector = TurnDetector(rate, VAD_FRAME_MS, turn, speech, judged=True)
        self._end_of_turn_ms = turn.end_of_turn_ms
        self._chunker = FrameChunker(self._detector.frame_bytes * channels)
        self._turns: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._early: tuple[SpeechPaused, asyncio.Task[Transcript | None]] | None = None
        self._early_started = asyncio.Event()  # its transcription left the queue
        self._early_promoted = False  # made the turn's final transcription
        self._partial: asyncio.Task[None] | None = None
        self._next_partial_ms = PARTIAL_EVERY_MS
        self._turn_start_ms: int | None = None  # of the turn in progress, for stale partials
        self._worker = asyncio.create_task(self._transcribe_turns(), name=f"turns-{call_id}")

    def feed(self, data: bytes) -> None:
        """Caller audio as it arrives: any number of bytes, any split."""
        for frame in self._chunker.push(data):
            mono = left_channel(frame) if self._channels == 2 else frame
            for event in self._detector.push(mono):
                self._on_turn_event(event)
            if self._detector.in_turn:
                self._host.on_caller_voiced(
                    self._detector.turn_voiced_ms, self._detector.position_ms
                )
            self._maybe_partial()
        if (
            self._early is not None
            and not self._early_promoted
            and self._detector.trailing_silence_ms >= self._end_of_turn_ms
        ):
            # Silent that long, the caller has most likely finished: the pause's transcript is
            # the turn's, and waits no longer behind other calls' early ones.
            self._early_promoted = True
            overloaded = self._stt_engine.saturated  # before this job joins the finals
            self._stt_engine.promote(self.call_id)
            if not self._early_started.is_set() and overloaded:
                # Overloaded, its words would come too late to judge the pause: the silence
                # rule ends the turn now rather than holding it open to INCOMPLETE_TURN_MS.
                # (Not overloaded, the verdict is worth the wait: it keeps a half sentence
                # from being answered.)
                self._detector.decide(self._early[0], Verdict.UNSURE)

    @property
    def caller_stirring(self) -> bool:
        """Between turns, the caller makes a sound that may be the start of the next one."""
        return self._detector.stirring

    def _on_turn_event(self, event: SpeechStarted | SpeechPaused | TurnEnded) -> None:
        if isinstance(event, SpeechStarted):
            self._turn_start_ms = event.at_ms
            self._next_partial_ms = event.at_ms + PARTIAL_EVERY_MS
            self._bus.publish(events.SpeechStarted(call_id=self.call_id, at_ms=event.at_ms))
            self._host.on_speech_started(event.at_ms)
        elif isinstance(event, SpeechPaused):
            if self._stt_engine.saturated:
                # Overloaded: one transcription a turn, when the silence rule ends it; the
                # workers go to turns that are over rather than to pauses that may not be.
                self._drop_early()  # an earlier pause's, stale now that the caller spoke on
                self._detector.decide(event, Verdict.UNSURE)
                return
            early = self._transcribe_early(event)
            self._judging = asyncio.create_task(self._judge(event, early))
        else:
            # The caller's last word was (position - end_ms) ago, if audio arrives in real time.
            lag_s = (self._detector.position_ms - event.end_ms) / 1000
            timing = TurnTiming(asyncio.get_running_loop().time() - lag_s)
            timing.mark("end_of_turn")
            self._turns.put_nowait((event, timing, self._take_early(event)))

    # -- partial and early transcripts -------------------------------------------------------

    def _maybe_partial(self) -> None:
        """While the caller speaks, show what they say so far (one transcription at a time)."""
        if not self._partials or self._detector.position_ms < self._next_partial_ms:
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

    async def _publish_partial(self, audio: np.ndarray, start_ms: int) -> None:
        def still_wanted() -> bool:  # the same turn is still going on
            return self._detector.in_turn and self._turn_start_ms == start_ms

        try:
            transcript = await self._transcribe(audio, Priority.PARTIAL, still_wanted)
        except (STTError, Dropped):
            return  # a partial is a courtesy; the final transcript reports failures
        if transcript is not None and self._detector.in_turn:
            self._bus.publish(
                events.TranscriptPartial(
                    call_id=self.call_id, text=transcript.text, start_ms=start_ms
                )
            )

    def _transcribe_early(self, paused: SpeechPaused) -> asyncio.Task[Transcript | None]:
        """Transcribe at the pause: the text judges the pause, and is the turn's if it ends."""
        self._drop_early()
        self._early_started = asyncio.Event()
        self._early_promoted = False
        task = asyncio.create_task(
            self._transcribe(paused.audio, Priority.EARLY, started=self._early_started)
        )
        self._early = (paused, task)
        return task

    async def _judge(self, paused: SpeechPaused, early: asyncio.Task[Transcript | None]) -> None:
        """Finished or not? The early transcript's words first; the turn model's ear only when
        the words leave it open (it costs ~50 ms of CPU a check, and the words often decide)."""
        try:
            transcript = await asyncio.shield(early)  # it is the turn's transcript too
        except STTError:  # reported as the turn's failure when the turn ends
            self._detector.decide(paused, Verdict.UNSURE)  # no verdict: the silence decides
            return
        text = transcript.text if transcript is not None else None
        sure = transcript.tail_confidence if transcript is not None else 1.0
        language = self._language()
        babble = self._detector.babble_behind
        verdict = judge(text, language, None, self._complete_threshold, sure, babble)
        probability = None
        if self._turn_model is not None and worth_a_listen(verdict, text, language):
            audio = to_float(resample(paused.audio, self._rate, WHISPER_RATE))
            try:
                probability = await self._turn_model.complete_probability(audio)
            except Exception as exc:  # the words alone decide
                log.warning("call %s: turn model failed: %s", self.call_id, exc)
            verdict = judge(text, language, probability, self._complete_threshold, sure, babble)
        log.debug("call %s: pause judged %s (%r, p=%s)", self.call_id, verdict, text, probability)
        if ended := self._detector.decide(paused, verdict):
            self._on_turn_event(ended)
        elif text and self._partials and self._detector.in_turn:
            # The turn goes on: what it said up to this pause is its partial, at no extra cost.
            self._bus.publish(
                events.TranscriptPartial(call_id=self.call_id, text=text, start_ms=paused.start_ms)
            )

    def _take_early(self, turn: TurnEnded) -> asyncio.Task[Transcript | None] | None:
        if self._early is None:
            return None
        paused, task = self._early
        self._early = None
        if (paused.start_ms, paused.end_ms) == (turn.start_ms, turn.end_ms):
            self._stt_engine.promote(self.call_id)  # it is the final transcript now
            return task  # no speech since the pause: the audio is the same
        task.cancel()
        return None

    def _drop_early(self) -> None:
        if self._judging is not None and self._judging is not asyncio.current_task():
            self._judging.cancel()
        self._judging = None
        if self._early is not None:
            self._early[1].cancel()
            self._early = None

    async def _transcribe(
        self,
        audio_at_call_rate: np.ndarray,
        priority: Priority = Priority.FINAL,
        wanted: Callable[[], bool] | None = None,
        started: asyncio.Event | None = None,
    ) -> Transcript | None:
        audio = to_float(resample(audio_at_call_rate, self._rate, WHISPER_RATE))
        return await self._stt_engine.transcribe(
            audio,
            self._language(),
            call_id=self.call_id,
            priority=priority,
            wanted=wanted,
            started=started,
        )

    # -- final transcripts, in order ----------------------------------------------------------

    async def _transcribe_turns(self) -> None:
        while (item := await self._turns.get()) is not None:
            turn, timing, early = item
            try:
                try:
                    transcript = await (
                        early if early is not None else self._transcribe(turn.audio)
                    )
                except asyncio.CancelledError:
                    if early is None or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        raise
                    transcript = await self._transcribe(turn.audio)  # the early one was dropped
            except STTError as exc:
                log.error("call %s: turn at %d ms lost: %s", self.call_id, turn.start_ms, exc)
                self._bus.publish(
                    events.CallError(call_id=self.call_id, kind="stt", message=str(exc))
                )
                self._host.on_turn_lost(str(exc))
                continue
            timing.mark("transcript")
            if transcript is None:
                log.info(
                    "call %s: no speech in turn at %d ms (noise?)", self.call_id, turn.start_ms
                )
                continue
            self._host.on_turn(turn, transcript, timing)

    async def finish(self) -> None:
        """The caller's audio ended: transcribe what is left (the host hears those turns too)."""
        self._drop_early()
        if self._partial is not None:
            self._partial.cancel()
        for event in self._detector.finish():
            if isinstance(event, TurnEnded):
                self._turns.put_nowait((event, TurnTiming(asyncio.get_running_loop().time()), None))
        self._turns.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("call %s: gave up on its last transcriptions at hangup", self.call_id)
            await self.abort()

    async def abort(self) -> None:
        """Stop at once: pending turns are dropped."""
        self._drop_early()
        tasks = [t for t in (self._partial, self._worker) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
