"""Where a caller's turn starts and ends: speech probabilities per frame → speech start, a
pause worth judging, turn end."""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from voiceai.audio.pcm import SAMPLE_WIDTH, to_samples
from voiceai.audio.vad import SpeechProbability, WebrtcStream

VAD_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)
TAIL_MS = 200  # silence kept after the last voiced frame; Whisper ends words better with it
# A VAD keeps saying "speech" for a moment after speech stops; frames this far below the turn's
# loudest one are that hangover (or line noise), not speech, when timing the caller.
SPEECH_FLOOR_DB = 30.0
HYSTERESIS = 0.15  # inside a turn, speech goes on until the probability drops this much lower

EndReason = Literal["silence", "complete", "incomplete_wait", "max_length", "end_of_stream"]


class Verdict(enum.StrEnum):
    """Whether a paused turn is finished, as judged from its sound and its words."""

    COMPLETE = "complete"  # end it now
    INCOMPLETE = "incomplete"  # wait longer (up to incomplete_ms) for the rest
    UNSURE = "unsure"  # the plain silence rule decides (end_of_turn_ms)


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int


@dataclass(frozen=True)
class SpeechPaused:
    """The caller has been silent `pause_ms` within a turn: a chance to transcribe early.

    If the turn then ends with no new speech, its audio is exactly this audio.
    """

    audio: np.ndarray
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class TurnEnded:
    audio: np.ndarray  # int16 mono at the call rate, pre-roll included
    start_ms: int  # first voiced frame, from the start of the call's audio
    end_ms: int  # end of the last voiced frame
    reason: EndReason


TurnEvent = SpeechStarted | SpeechPaused | TurnEnded


@dataclass(frozen=True)
class TurnConfig:
    vad_aggressiveness: int = 2  # webrtcvad's, when it is the VAD
    speech_threshold: float = 0.5  # speech probability that counts as speech
    min_speech_ms: int = 200
    pause_ms: int = 160  # silence after which the turn is transcribed and judged
    end_of_turn_ms: int = 700  # silence that ends a turn nobody judged finished or unfinished
    incomplete_ms: int = 1200  # silence that ends a turn judged unfinished
    max_utterance_ms: int = 20000
    pre_roll_ms: int = 300


class TurnDetector:
    """The one place that decides where a caller's turn starts and ends.

    A turn starts once `min_speech_ms` of speech frames fall within a short window (so a click
    or a breath does not start one) and keeps `pre_roll_ms` before its first speech frame.
    After `pause_ms` of silence it reports SpeechPaused; whoever judges the pause answers with
    `decide()`: finished (the turn ends now), unfinished (it may go on for `incomplete_ms` of
    silence) or unsure (it ends after `end_of_turn_ms`). It is cut at `max_utterance_ms`.
    Times come from the audio itself (frames counted), never from the wall clock.
    """

    def __init__(
        self,
        rate: int,
        frame_ms: int = 20,
        config: TurnConfig | None = None,
        speech: SpeechProbability | None = None,
    ) -> None:
        if rate not in VAD_RATES:
            raise ValueError(f"unsupported VAD rate {rate}; use one of {VAD_RATES}")
        if frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"unsupported VAD frame {frame_ms} ms; use one of {VAD_FRAME_MS}")
        self.rate = rate
        self.frame_ms = frame_ms
        self.config = config or TurnConfig()
        self.frame_bytes = rate * frame_ms // 1000 * SAMPLE_WIDTH
        self._speech = speech or WebrtcStream(rate, self.config.vad_aggressiveness)
        self._position_ms = 0
        window_frames = max(1, (self.config.min_speech_ms + 100) // frame_ms)
        pre_roll_frames = self.config.pre_roll_ms // frame_ms
        # Frames before a turn: the start window plus the pre-roll, as (frame, voiced).
        self._before: deque[tuple[bytes, bool]] = deque(maxlen=window_frames + pre_roll_frames)
        self._window_frames = window_frames
        self._pre_roll_frames = pre_roll_frames
        self._in_turn = False
        self._turn: list[bytes] = []
        self._turn_start_ms = 0
        self._last_voiced_end_ms = 0
        self._last_voiced_index = 0
        self._silence_ms = 0
        self._voiced_ms = 0
        self._peak_level = 0.0
        self._silence_limit_ms = self.config.end_of_turn_ms  # what decide() set for this pause

    @property
    def in_turn(self) -> bool:
        return self._in_turn

    @property
    def turn_voiced_ms(self) -> int:
        """How long the caller has really spoken in this turn (0 outside a turn).

        Counts voiced frames within SPEECH_FLOOR_DB of the turn's loudest frame, so the VAD's
        hangover after a short "mhm" does not make it look longer than it was.
        """
        return self._voiced_ms if self._in_turn else 0

    @property
    def trailing_silence_ms(self) -> int:
        """Silence since the caller's last voiced frame in this turn (0 outside a turn)."""
        return self._silence_ms if self._in_turn else 0

    def turn_so_far(self) -> tuple[np.ndarray, int] | None:
        """The audio of the turn in progress and its start, for a partial transcript."""
        if not self._in_turn:
            return None
        return to_samples(b"".join(self._turn)).copy(), self._turn_start_ms

    def _count_speech(self, frame: bytes) -> None:
        level = float(np.sqrt(np.mean(to_samples(frame).astype(np.float64) ** 2)))
        self._peak_level = max(self._peak_level, level)
        if level > 0 and level >= self._peak_level * 10 ** (-SPEECH_FLOOR_DB / 20):
            self._voiced_ms += self.frame_ms

    @property
    def position_ms(self) -> int:
        return self._position_ms

    def push(self, frame: bytes) -> list[TurnEvent]:
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame must be {self.frame_bytes} bytes, got {len(frame)}")
        probability = self._speech(frame)
        self._position_ms += self.frame_ms
        if self._in_turn:
            return self._continue_turn(frame, probability >= self._in_turn_threshold)
        self._before.append((frame, probability >= self.config.speech_threshold))
        return self._maybe_start()

    @property
    def _in_turn_threshold(self) -> float:
        return max(0.05, self.config.speech_threshold - HYSTERESIS)

    def decide(self, paused: SpeechPaused, verdict: Verdict) -> TurnEnded | None:
        """The judgement of a pause; the turn it ends when finished, if the pause still lasts.

        A judgement that comes after the caller spoke again is stale and changes nothing.
        """
        if not self._in_turn or self._silence_ms == 0 or self._last_voiced_end_ms != paused.end_ms:
            return None
        if verdict is Verdict.COMPLETE:
            return self._end_turn("complete")
        if verdict is Verdict.INCOMPLETE:
            self._silence_limit_ms = max(self.config.incomplete_ms, self.config.end_of_turn_ms)
        return None

    def finish(self) -> list[TurnEvent]:
        """End of the caller's audio: a turn in progress ends here."""
        if not self._in_turn:
            return []
        return [self._end_turn("end_of_stream")]

    def _maybe_start(self) -> list[TurnEvent]:
        window = list(self._before)[-self._window_frames :]
        voiced_ms = sum(self.frame_ms for _, v in window if v)
        if voiced_ms < self.config.min_speech_ms:
            return []
        first_voiced = next(i for i, (_, v) in enumerate(window) if v)
        frames = list(self._before)
        start_index = len(frames) - len(window) + first_voiced
        keep_from = max(0, start_index - self._pre_roll_frames)
        self._turn = [f for f, _ in frames[keep_from:]]
        self._turn_start_ms = self._position_ms - (len(frames) - start_index) * self.frame_ms
        last_voiced = max(i for i, (_, v) in enumerate(frames) if v)
        self._last_voiced_index = last_voiced - keep_from
        self._last_voiced_end_ms = (
            self._position_ms - (len(frames) - 1 - last_voiced) * self.frame_ms
        )
        self._silence_ms = (len(frames) - 1 - last_voiced) * self.frame_ms
        self._voiced_ms = 0
        self._peak_level = 0.0
        for frame, v in frames[keep_from:]:
            if v:
                self._count_speech(frame)
        self._in_turn = True
        self._before.clear()
        return [SpeechStarted(at_ms=self._turn_start_ms)]

    def _continue_turn(self, frame: bytes, voiced: bool) -> list[TurnEvent]:
        self._turn.append(frame)
        if voiced:
            self._silence_ms = 0
            self._silence_limit_ms = self.config.end_of_turn_ms  # a new pause, judged afresh
            self._count_speech(frame)
            self._last_voiced_end_ms = self._position_ms
            self._last_voiced_index = len(self._turn) - 1
        else:
            self._silence_ms += self.frame_ms
        if self._silence_ms >= self._silence_limit_ms:
            waited = self._silence_limit_ms > self.config.end_of_turn_ms
            return [self._end_turn("incomplete_wait" if waited else "silence")]
        if self._silence_ms == self.config.pause_ms:
            audio = to_samples(b"".join(self._kept_frames())).copy()
            return [SpeechPaused(audio, self._turn_start_ms, self._last_voiced_end_ms)]
        if self._position_ms - self._turn_start_ms >= self.config.max_utterance_ms:
            ended = self._end_turn("max_length")
            # The caller is still talking: the next turn starts right here, without pre-roll.
            self._in_turn = True
            self._turn_start_ms = self._position_ms
            self._last_voiced_end_ms = self._position_ms
            return [ended]
        return []

    def _end_turn(self, reason: EndReason) -> TurnEnded:
        audio = to_samples(b"".join(self._kept_frames())).copy()
        ended = TurnEnded(audio, self._turn_start_ms, self._last_voiced_end_ms, reason)
        self._in_turn = False
        self._turn = []
        self._silence_ms = 0
        self._voiced_ms = 0
        self._last_voiced_index = 0
        self._silence_limit_ms = self.config.end_of_turn_ms
        return ended

    def _kept_frames(self) -> list[bytes]:
        """The turn's frames up to the last voiced one, plus a short silent tail."""
        tail_frames = TAIL_MS // self.frame_ms
        return self._turn[: self._last_voiced_index + 1 + tail_frames]
