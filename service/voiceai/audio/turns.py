"""Where a caller's turn starts and ends: speech probabilities per frame → speech start, a
pause worth judging, turn end."""

from __future__ import annotations

import enum
import itertools
import math
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
# Babble (other people talking near the caller, a TV) is speech to any VAD, but quieter than the
# caller, who is at the phone. When the VAD hears speech in at least BABBLE_SHARE of the recent
# frames between turns (babble; pink, car or hum noise it rejects itself, and a level margin
# there would only cut quiet last syllables), a frame is the caller's only if its level
# stands TurnConfig.babble_margin_db over the background: the BACKGROUND_PERCENTILE level of those
# babble frames over BACKGROUND_WINDOW_MS, never under the FLOOR_PERCENTILE of every frame there
# (which alone stands in while the babble is not yet known: babble from a call's first moment).
# Once LEVEL_LEARN_MS of the caller's speech has set their level, a frame must also be no more than
# CALLER_LEVEL_GATE_DB under it (the level follows their loud syllables: rises fast, falls slowly).
# Before a turn, the level held to the loudest of the last ENVELOPE_MS is compared with the
# caller's (a stop consonant's dip must not delay a start; babble bursts would pass it, so the
# babble gate takes the frame's own); inside a turn, the frame's own (a held level would stretch
# the turn past its last word).
ENVELOPE_MS = 100
BACKGROUND_WINDOW_MS = 5000
BACKGROUND_PERCENTILE = 20
FLOOR_PERCENTILE = 5
FLOOR_MIN_MS = 200  # frames heard before the floor counts
BACKGROUND_MIN_MS = 500  # frames (not the caller's) before the babble estimates count
BACKGROUND_EVERY_MS = 200  # how often the estimates are brought up to date
BABBLE_WINDOW_MS = 1500  # recent enough that a TV switched on mid-call is soon known as babble
BABBLE_SHARE = 0.2  # measured: pink noise 0 % at any SNR, babble 73-100 %
BABBLE_PROBABILITY = 0.25  # "the VAD hears speech" in that count: babble is often in between
CALLER_LEVEL_GATE_DB = 15.0
LEVEL_LEARN_MS = 400
LEVEL_RISE, LEVEL_FALL = 0.3, 0.01  # per 20 ms speech frame
ONSET_MARGIN_DB = 4.0  # a quiet first word still stands this far over the background
ONSET_REACH_MS = 600  # how far back a turn's start may reach to speech the level gate held back
# Outside a turn, this much speech within the start window, the last of it this recent, is the
# caller stirring: perhaps the start of a turn, perhaps a click that will come to nothing.
STIR_MS = 40
STIR_RECENT_MS = 100

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
    babble_margin_db: float = 8.0  # with babble behind the caller (see BABBLE_SHARE)
    pause_ms: int = 120  # silence after which the turn is transcribed and judged
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
        *,
        judged: bool = False,  # someone answers every SpeechPaused with decide()
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
        # Frames before a turn: (frame, speech, heard): speech passed the caller's level gate;
        # heard means the VAD's probability was high and the level stood out from the background
        # at all (where a quiet first word begins).
        reach = ONSET_REACH_MS // frame_ms
        self._before: deque[tuple[bytes, bool, bool]] = deque(
            maxlen=window_frames + pre_roll_frames + reach
        )
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
        self._judging = False  # a pause was reported and its verdict has not come yet
        self._judged = judged
        self._caller_db = 0.0  # the caller's speech level, dBFS-like (see above)
        self._caller_speech_ms = 0
        levels = BACKGROUND_WINDOW_MS // frame_ms
        self._levels: deque[float] = deque(maxlen=levels)  # dB, of every frame
        # Of the frames not the caller's: whether the VAD heard speech in them (recent ones),
        # and the levels of those it did (the babble's).
        self._others_heard: deque[bool] = deque(maxlen=BABBLE_WINDOW_MS // frame_ms)
        self._babble_levels: deque[float] = deque(maxlen=levels)
        self._envelope: deque[float] = deque(maxlen=max(1, ENVELOPE_MS // frame_ms))
        self._background_db = -math.inf
        self._babble = True  # until the line says otherwise: the safe side for a first turn

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

    @property
    def stirring(self) -> bool:
        """Outside a turn, the caller is making speech-like sound that may yet become a turn."""
        if self._in_turn:
            return False
        newest_first = itertools.islice(reversed(self._before), self._window_frames)
        ago = [i * self.frame_ms for i, (_, v, _) in enumerate(newest_first) if v]
        return len(ago) * self.frame_ms >= STIR_MS and ago[0] < STIR_RECENT_MS

    @property
    def babble_behind(self) -> bool:
        """Other voices are known to be behind the caller (see BABBLE_SHARE)."""
        known = len(self._others_heard) * self.frame_ms >= BACKGROUND_MIN_MS
        return self._babble and known

    def turn_so_far(self) -> tuple[np.ndarray, int] | None:
        """The audio of the turn in progress and its start, for a partial transcript."""
        if not self._in_turn:
            return None
        return to_samples(b"".join(self._turn)).copy(), self._turn_start_ms

    def _count_speech(self, level: float) -> None:
        """A voiced frame of the turn, by its RMS level (see turn_voiced_ms)."""
        self._peak_level = max(self._peak_level, level)
        if level > 0 and level >= self._peak_level * 10 ** (-SPEECH_FLOOR_DB / 20):
            self._voiced_ms += self.frame_ms
            db = _db(level)
            if self._caller_speech_ms == 0:
                self._caller_db = db
            else:
                rate = LEVEL_RISE if db > self._caller_db else LEVEL_FALL
                self._caller_db += rate * (db - self._caller_db)
            self._caller_speech_ms += self.frame_ms

    def _note_level(self, db: float, others: bool, heard: bool) -> None:
        """The frame's level joins the background estimate (see BACKGROUND_PERCENTILE).

        `others`: not the caller's. Only frames between turns count: inside one, the caller's
        own quiet syllables are speech to the VAD and would pass for babble.
        """
        self._levels.append(db)
        if others:
            self._others_heard.append(heard)
            if heard:
                self._babble_levels.append(db)
        if self._position_ms % BACKGROUND_EVERY_MS and len(self._levels) * self.frame_ms > (
            BACKGROUND_MIN_MS
        ):
            return  # once known, it moves slowly
        least = BACKGROUND_MIN_MS // self.frame_ms
        if len(self._others_heard) >= least:
            self._babble = sum(self._others_heard) >= BABBLE_SHARE * len(self._others_heard)
        estimates = [-math.inf]  # nothing known yet: any sound may be the caller's
        if len(self._levels) >= FLOOR_MIN_MS // self.frame_ms:
            estimates.append(float(np.percentile(self._levels, FLOOR_PERCENTILE)))
        if len(self._babble_levels) >= least:
            estimates.append(float(np.percentile(self._babble_levels, BACKGROUND_PERCENTILE)))
        self._background_db = max(estimates)

    def _is_speech(
        self, probability: float, threshold: float, level_db: float, held_db: float
    ) -> bool:
        """The VAD hears speech in the newest frame, loud enough to be the caller's: its own
        level over the babble, its held level (see ENVELOPE_MS) near the caller's."""
        if probability < threshold:
            return False
        if self._babble and level_db < self._background_db + self.config.babble_margin_db:
            return False
        learned = self._caller_speech_ms >= LEVEL_LEARN_MS
        return not learned or held_db >= self._caller_db - CALLER_LEVEL_GATE_DB

    @property
    def position_ms(self) -> int:
        return self._position_ms

    def push(self, frame: bytes) -> list[TurnEvent]:
        if len(frame) != self.frame_bytes:
            raise ValueError(f"frame must be {self.frame_bytes} bytes, got {len(frame)}")
        probability = self._speech(frame)
        self._position_ms += self.frame_ms
        level = _level(frame)
        db = _db(level)
        self._envelope.append(db)
        threshold = self.config.speech_threshold
        if self._in_turn:
            speech = self._is_speech(probability, self._in_turn_threshold, db, db)
            self._note_level(db, False, False)
            return self._continue_turn(frame, speech, level)
        envelope = max(self._envelope)  # a stop consonant's dip does not delay a turn's start
        heard = probability >= threshold and envelope >= self._background_db + ONSET_MARGIN_DB
        speech = heard and self._is_speech(probability, threshold, db, envelope)
        self._note_level(db, not speech, probability >= BABBLE_PROBABILITY)
        self._before.append((frame, speech, heard))
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
        self._judging = False
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
        voiced_ms = sum(self.frame_ms for _, v, _ in window if v)
        if voiced_ms < self.config.min_speech_ms:
            return []
        first_voiced = next(i for i, (_, v, _) in enumerate(window) if v)
        frames = list(self._before)
        start_index = len(frames) - len(window) + first_voiced
        while start_index > 0 and frames[start_index - 1][2]:
            start_index -= 1  # the speech began where it was first heard, gate or not
        keep_from = max(0, start_index - self._pre_roll_frames)
        self._turn = [f for f, _, _ in frames[keep_from:]]
        self._turn_start_ms = self._position_ms - (len(frames) - start_index) * self.frame_ms
        last_voiced = max(i for i, (_, v, _) in enumerate(frames) if v)
        self._last_voiced_index = last_voiced - keep_from
        self._last_voiced_end_ms = (
            self._position_ms - (len(frames) - 1 - last_voiced) * self.frame_ms
        )
        self._silence_ms = (len(frames) - 1 - last_voiced) * self.frame_ms
        self._voiced_ms = 0
        self._peak_level = 0.0
        for frame, v, _ in frames[keep_from:]:
            if v:
                self._count_speech(_level(frame))
        self._in_turn = True
        self._before.clear()
        return [SpeechStarted(at_ms=self._turn_start_ms)]

    def _continue_turn(self, frame: bytes, voiced: bool, level: float) -> list[TurnEvent]:
        self._turn.append(frame)
        if voiced:
            self._silence_ms = 0
            self._silence_limit_ms = self.config.end_of_turn_ms  # a new pause, judged afresh
            self._judging = False
            self._count_speech(level)
            self._last_voiced_end_ms = self._position_ms
            self._last_voiced_index = len(self._turn) - 1
        else:
            self._silence_ms += self.frame_ms
        if self._silence_ms >= self._silence_limit_ms and not self._awaiting_verdict():
            waited = self._silence_limit_ms > self.config.end_of_turn_ms
            return [self._end_turn("incomplete_wait" if waited else "silence")]
        if self._silence_ms == self.config.pause_ms:
            self._judging = self._judged
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

    def _awaiting_verdict(self) -> bool:
        """A pause is being judged: the plain silence rule must not pre-empt an "unfinished"
        verdict on its way (a slow transcription), up to the unfinished turn's own limit."""
        return self._judging and self._silence_ms < self.config.incomplete_ms

    def _end_turn(self, reason: EndReason) -> TurnEnded:
        audio = to_samples(b"".join(self._kept_frames())).copy()
        ended = TurnEnded(audio, self._turn_start_ms, self._last_voiced_end_ms, reason)
        self._in_turn = False
        self._turn = []
        self._silence_ms = 0
        self._voiced_ms = 0
        self._last_voiced_index = 0
        self._silence_limit_ms = self.config.end_of_turn_ms
        self._judging = False
        return ended

    def _kept_frames(self) -> list[bytes]:
        """The turn's frames up to the last voiced one, plus a short silent tail."""
        tail_frames = TAIL_MS // self.frame_ms
        return self._turn[: self._last_voiced_index + 1 + tail_frames]


def _level(frame: bytes) -> float:
    """RMS of a frame of int16 samples."""
    samples = to_samples(frame).astype(np.float32)
    return math.sqrt(float(np.dot(samples, samples)) / max(1, samples.size))


def _db(level: float) -> float:
    return 20 * float(np.log10(level + 1e-9))
