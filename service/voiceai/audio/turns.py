"""Where a caller's turn starts and ends: webrtcvad frames → speech start, turn end."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import webrtcvad

from voiceai.audio.pcm import SAMPLE_WIDTH, to_samples

VAD_RATES = (8000, 16000, 32000, 48000)
VAD_FRAME_MS = (10, 20, 30)
TAIL_MS = 200  # silence kept after the last voiced frame; Whisper ends words better with it
# webrtcvad keeps saying "voiced" for ~120 ms after speech stops; frames this far below the
# turn's loudest one are that hangover (or line noise), not speech, when timing the caller.
SPEECH_FLOOR_DB = 30.0


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
    reason: Literal["silence", "max_length", "end_of_stream"]


TurnEvent = SpeechStarted | SpeechPaused | TurnEnded


@dataclass(frozen=True)
class TurnConfig:
    vad_aggressiveness: int = 2
    min_speech_ms: int = 200
    end_of_turn_ms: int = 600
    max_utterance_ms: int = 20000
    pre_roll_ms: int = 300
    pause_ms: int = (
        TAIL_MS  # silence after which a turn's audio so far is final unless speech resumes
    )


class TurnDetector:
    """The one place that decides where a caller's turn starts and ends.

    A turn starts once `min_speech_ms` of voiced frames fall within a short window (so a click
    or a breath does not start one) and keeps `pre_roll_ms` before its first voiced frame.
    It ends after `end_of_turn_ms` of silence, or is cut at `max_utterance_ms`.
    Times come from the audio itself (frames counted), never from the wall clock.
    """

    def __init__(self, rate: int, frame_ms: int = 20, config: TurnConfig | None = None) -> None:
        if rate not in VAD_RATES:
            raise ValueError(f"unsupported VAD rate {rate}; use one of {VAD_RATES}")
        if frame_ms not in VAD_FRAME_MS:
            raise ValueError(f"unsupported VAD frame {frame_ms} ms; use one of {VAD_FRAME_MS}")
        self.rate = rate
        self.frame_ms = frame_ms
        self.config = config or TurnConfig()
        self.frame_bytes = rate * frame_ms // 1000 * SAMPLE_WIDTH
        self._vad = webrtcvad.Vad(self.config.vad_aggressiveness)
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
        voiced = self._vad.is_speech(frame, self.rate)
        self._position_ms += self.frame_ms
        if self._in_turn:
            return self._continue_turn(frame, voiced)
        self._before.append((frame, voiced))
        return self._maybe_start()

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
            self._count_speech(frame)
            self._last_voiced_end_ms = self._position_ms
            self._last_voiced_index = len(self._turn) - 1
        else:
            self._silence_ms += self.frame_ms
        if self._silence_ms >= self.config.end_of_turn_ms:
            return [self._end_turn("silence")]
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

    def _end_turn(self, reason: Literal["silence", "max_length", "end_of_stream"]) -> TurnEnded:
        audio = to_samples(b"".join(self._kept_frames())).copy()
        ended = TurnEnded(audio, self._turn_start_ms, self._last_voiced_end_ms, reason)
        self._in_turn = False
        self._turn = []
        self._silence_ms = 0
        self._voiced_ms = 0
        self._last_voiced_index = 0
        return ended

    def _kept_frames(self) -> list[bytes]:
        """The turn's frames up to the last voiced one, plus a short silent tail."""
        tail_frames = TAIL_MS // self.frame_ms
        return self._turn[: self._last_voiced_index + 1 + tail_frames]
