"""The turn detector on real webrtcvad and real speech: where turns start and end."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import white_noise
from tests.speech import Speech
from voiceai.audio.pcm import decode_file
from voiceai.audio.turns import SpeechStarted, TurnConfig, TurnDetector, TurnEnded

RATE = 16000


def run(detector: TurnDetector, samples: np.ndarray) -> list[tuple[int, object]]:
    """Feeds samples frame by frame; returns (position_ms when emitted, event)."""
    pcm = samples.astype("<i2").tobytes()
    out = []
    for i in range(0, len(pcm) - detector.frame_bytes + 1, detector.frame_bytes):
        for event in detector.push(pcm[i : i + detector.frame_bytes]):
            out.append((detector.position_ms, event))
    for event in detector.finish():
        out.append((detector.position_ms, event))
    return out


def line(*parts: np.ndarray | float) -> np.ndarray:
    """Audio from sample arrays and silences given in seconds."""
    return np.concatenate(
        [np.zeros(int(p * RATE), np.int16) if isinstance(p, float) else p for p in parts]
    )


@pytest.fixture(scope="module")
def sentence(speech: Speech) -> np.ndarray:
    audio = decode_file(speech["booking"], RATE)
    voiced = np.flatnonzero(np.abs(audio) > 500)
    return audio[voiced[0] : voiced[-1] + 1]  # trimmed: speech from its first to last sample


@pytest.mark.parametrize("end_of_turn_ms", [400, 600, 1200])
def test_turn_ends_after_the_configured_silence(sentence: np.ndarray, end_of_turn_ms: int) -> None:
    detector = TurnDetector(RATE, 20, TurnConfig(end_of_turn_ms=end_of_turn_ms))
    emitted = run(detector, line(1.0, sentence, 3.0))

    ends = [(at, e) for at, e in emitted if isinstance(e, TurnEnded)]
    assert len(ends) == 1
    at, turn = ends[0]
    assert turn.reason == "silence"
    assert at - turn.end_ms == pytest.approx(end_of_turn_ms, abs=20)
    speech_end_ms = 1000 + len(sentence) * 1000 // RATE
    assert abs(turn.end_ms - speech_end_ms) < 250


def test_turn_keeps_pre_roll_before_the_first_voiced_frame(sentence: np.ndarray) -> None:
    detector = TurnDetector(RATE, 20, TurnConfig(pre_roll_ms=300))
    emitted = run(detector, line(1.0, sentence, 1.0))

    starts = [e for _, e in emitted if isinstance(e, SpeechStarted)]
    turn = next(e for _, e in emitted if isinstance(e, TurnEnded))
    assert len(starts) == 1
    assert 900 <= starts[0].at_ms <= 1100  # speech begins at 1.0 s
    # The audio reaches 300 ms before the first voiced frame: the first syllable is whole.
    covered_ms = len(turn.audio) * 1000 // RATE
    assert covered_ms >= (turn.end_ms - turn.start_ms) + 300
    lead = turn.audio[: int(0.25 * RATE)]
    assert np.abs(lead).max() < 500  # what precedes the speech is the line's silence


def test_long_speech_is_cut_at_the_max_utterance(sentence: np.ndarray) -> None:
    detector = TurnDetector(RATE, 20, TurnConfig(max_utterance_ms=1500))
    emitted = run(detector, line(0.5, sentence, 2.0))

    turns = [e for _, e in emitted if isinstance(e, TurnEnded)]
    assert [t.reason for t in turns[:-1]] == ["max_length"] * (len(turns) - 1)
    assert len(turns) >= 2
    assert all(t.end_ms - t.start_ms <= 1500 for t in turns)


def test_a_click_shorter_than_min_speech_starts_no_turn(sentence: np.ndarray) -> None:
    detector = TurnDetector(RATE, 20, TurnConfig(min_speech_ms=200))
    blip = sentence[int(0.3 * RATE) : int(0.38 * RATE)]  # 80 ms of voice
    assert run(detector, line(1.0, blip, 1.0, blip, 2.0)) == []


def test_silence_starts_no_turn() -> None:
    detector = TurnDetector(8000, 30, TurnConfig())
    assert run(detector, np.zeros(8000 * 5, np.int16)) == []


def test_end_of_stream_ends_a_turn_in_progress(sentence: np.ndarray) -> None:
    detector = TurnDetector(RATE, 20, TurnConfig())
    emitted = run(detector, line(0.5, sentence))
    assert [e.reason for _, e in emitted if isinstance(e, TurnEnded)] == ["end_of_stream"]


def test_strict_vad_mode_rejects_steady_noise() -> None:
    detector = TurnDetector(RATE, 20, TurnConfig(vad_aggressiveness=3))
    emitted = run(detector, white_noise(3, RATE, amplitude=300))
    assert emitted == []


def test_wrong_frame_size_is_refused() -> None:
    detector = TurnDetector(8000, 20)
    with pytest.raises(ValueError, match="320 bytes"):
        detector.push(b"\0" * 318)


@pytest.mark.parametrize(("spoken_s", "longer_than_300ms"), [(0.22, False), (0.5, True)])
def test_speech_duration_ignores_the_vad_hangover(
    sentence: np.ndarray, spoken_s: float, longer_than_300ms: bool
) -> None:
    detector = TurnDetector(RATE, 20, TurnConfig(min_speech_ms=100))
    clip = sentence[: int(spoken_s * RATE)]
    longest = 0
    pcm = line(0.5, clip, 1.0).astype("<i2").tobytes()
    for i in range(0, len(pcm) - detector.frame_bytes + 1, detector.frame_bytes):
        detector.push(pcm[i : i + detector.frame_bytes])
        longest = max(longest, detector.turn_voiced_ms)
    assert (longest >= 300) is longer_than_300ms, longest
    assert longest <= spoken_s * 1000 + 40
