"""One call: caller audio → turns → transcripts, published as events.

The turn-taking rules of a call live here (the turn detector decides where a turn ends; this
class decides what happens then).
"""

from __future__ import annotations

import asyncio
import logging

from voiceai import events
from voiceai.audio.pcm import FrameChunker, left_channel, resample, to_float
from voiceai.audio.turns import SpeechStarted, TurnConfig, TurnDetector, TurnEnded
from voiceai.engines.stt import WHISPER_RATE, SpeechToText, STTError
from voiceai.events import EventBus

log = logging.getLogger(__name__)

VAD_FRAME_MS = 20
DRAIN_TIMEOUT_S = 60.0  # longest a hung-up call waits for its last transcriptions


class CallSession:
    def __init__(
        self,
        call_id: str,
        *,
        rate: int,
        channels: int,
        language: str | None,
        stt: SpeechToText,
        bus: EventBus,
        turn_config: TurnConfig,
    ) -> None:
        self.call_id = call_id
        self.rate = rate
        self.channels = channels
        self.language = language
        self._stt = stt
        self._bus = bus
        self._detector = TurnDetector(rate, VAD_FRAME_MS, turn_config)
        self._chunker = FrameChunker(self._detector.frame_bytes * channels)
        self._turns: asyncio.Queue[TurnEnded | None] = asyncio.Queue()
        self._worker = asyncio.create_task(self._transcribe_turns(), name=f"stt-{call_id}")
        self.turn_count = 0

    def feed(self, data: bytes) -> None:
        """Caller audio as it arrives: any number of bytes, any split."""
        for frame in self._chunker.push(data):
            mono = left_channel(frame) if self.channels == 2 else frame
            for event in self._detector.push(mono):
                if isinstance(event, SpeechStarted):
                    self._bus.publish(events.SPEECH_STARTED, self.call_id, at_ms=event.at_ms)
                else:
                    self._turns.put_nowait(event)

    def note_text(self, text: str) -> None:
        """A TEXT frame after the metadata (uuid_audio_fork send_text)."""
        self._bus.publish(events.FORK_TEXT, self.call_id, text=text)

    async def finish(self, reason: str) -> None:
        """The caller's audio ended: transcribe what is left, then end the call."""
        for event in self._detector.finish():
            if isinstance(event, TurnEnded):
                self._turns.put_nowait(event)
        self._turns.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("call %s: gave up on its last transcriptions at hangup", self.call_id)
            self._worker.cancel()
        self._bus.publish(events.CALL_ENDED, self.call_id, reason=reason, turns=self.turn_count)

    async def abort(self, reason: str) -> None:
        """Stop at once (service shutdown): pending turns are dropped, the record says why."""
        self._worker.cancel()
        await asyncio.gather(self._worker, return_exceptions=True)
        self._bus.publish(events.CALL_ENDED, self.call_id, reason=reason, turns=self.turn_count)

    async def _transcribe_turns(self) -> None:
        while (turn := await self._turns.get()) is not None:
            await self._transcribe(turn)

    async def _transcribe(self, turn: TurnEnded) -> None:
        audio = to_float(resample(turn.audio, self.rate, WHISPER_RATE))
        try:
            transcript = await self._stt.transcribe(audio, self.language)
        except STTError as exc:
            log.error("call %s: turn at %d ms lost: %s", self.call_id, turn.start_ms, exc)
            self._bus.publish(events.CALL_ERROR, self.call_id, kind="stt", message=str(exc))
            return
        if transcript is None:
            log.info("call %s: no speech in turn at %d ms (noise?)", self.call_id, turn.start_ms)
            return
        self.turn_count += 1
        self._bus.publish(
            events.TRANSCRIPT_FINAL,
            self.call_id,
            text=transcript.text,
            language=transcript.language,
            start_ms=turn.start_ms,
            end_ms=turn.end_ms,
            stt_ms=transcript.stt_ms,
            end_reason=turn.reason,
        )


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
