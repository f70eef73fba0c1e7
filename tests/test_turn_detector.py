"""The turn detector on real VADs (webrtcvad, Silero) and real speech: where turns start,
pause and end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BABBLE_TALKERS, white_noise
from tests.speech import Speech
from voiceai.audio.pcm import decode_file
from voiceai.audio.turns import (
    SpeechPaused,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEnded,
    Verdict,
)
from voiceai.audio.vad import SileroModel
from voiceai.sim.babble import babble
from voiceai.sim.speech_span import active_level, speech_span

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


# -- Silero VAD, pauses and their judgement ---------------------------------------------------

REAL = Path(__file__).resolve().parents[2] / "shared" / "speech" / "real"


def real_clip(name: str, rate: int = 8000) -> np.ndarray:
    path = REAL / "wav" / f"{name}.wav"
    assert path.is_file(), f"real speech missing: {path} (../shared/speech/real)"
    return decode_file(path, rate)


def pink_noise(seconds: float, rate: int, rms: float) -> np.ndarray:
    spectrum = np.fft.rfft(np.random.default_rng(7).standard_normal(int(seconds * rate)))
    spectrum /= np.sqrt(np.arange(1, len(spectrum) + 1))
    noise = np.fft.irfft(spectrum, int(seconds * rate))
    return (noise / np.sqrt(np.mean(noise**2)) * rms).astype(np.int16)


def speech_in_noise(clip: np.ndarray, rate: int, snr_db: float, after_s: float) -> np.ndarray:
    """The clip, then `after_s` more of the noise under it all (the line is never quiet)."""
    active = clip[np.abs(clip) > 0.05 * np.abs(clip).max()].astype(np.float64)
    rms = float(np.sqrt(np.mean(active**2))) / 10 ** (snr_db / 20)
    noise = pink_noise(len(clip) / rate + after_s + 0.5, rate, rms)
    mixed = noise.astype(np.int32)
    mixed[int(0.5 * rate) : int(0.5 * rate) + len(clip)] += clip
    return np.clip(mixed, -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def silero() -> SileroModel:
    return SileroModel()


def true_end_ms(clip: np.ndarray, rate: int) -> int:
    """Where the speech of a clean clip ends (the benchmarks' rule, voiceai.sim.speech_span)."""
    return round(speech_span(clip, rate)[1] * 1000)


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("name", ["en_harvard_spk1_snt5", "en_timit_ldc93s1", "en_arctic_a0024"])
def test_silero_sees_the_pause_after_real_speech_in_continuous_noise(
    silero: SileroModel, rate: int, name: str
) -> None:
    clip = real_clip(name, rate)
    audio = speech_in_noise(clip, rate, snr_db=10, after_s=4.0)
    end = 500 + true_end_ms(clip, rate)

    emitted = run(TurnDetector(rate, 20, TurnConfig(), silero.stream(rate)), audio)
    pauses = [at - end for at, e in emitted if isinstance(e, SpeechPaused)]
    assert pauses and 0 < pauses[-1] < 450  # seen in the noise, promptly after the last word
    (ended,) = [(at - end, e) for at, e in emitted if isinstance(e, TurnEnded)]
    assert ended[1].reason == "silence"  # nobody judged this pause: the fallback ended it
    assert ended[0] < TurnConfig().end_of_turn_ms + 300


def test_pink_noise_alone_starts_no_turn_with_silero(silero: SileroModel) -> None:
    noise = pink_noise(20.0, 8000, rms=0.018 * 32768)  # about -35 dBFS
    assert run(TurnDetector(8000, 20, TurnConfig(), silero.stream(8000)), noise) == []


SPEECH_DBFS = -26.0  # the caller's active speech level (ITU-T P.56's nominal)


def at_level(samples: np.ndarray, rate: int, dbfs: float = SPEECH_DBFS) -> np.ndarray:
    return samples.astype(np.float64) * 10 ** ((dbfs - active_level(samples, rate)) / 20)


def babble_at(seconds: float, dbfs: float, rate: int = 8000) -> np.ndarray:
    talkers = [at_level(real_clip(name, rate), rate) for name in BABBLE_TALKERS]
    crowd = babble(talkers, seconds, rate, np.random.default_rng(5))
    return crowd * 32768 * 10 ** (dbfs / 20)


def turns_of(emitted: list[tuple[int, object]]) -> list[tuple[int, int]]:
    """(start, end) in ms of every turn the detector reported."""
    return [(e.start_ms, e.end_ms) for _, e in emitted if isinstance(e, TurnEnded)]


@pytest.mark.parametrize("snr_db", [15, 10])
@pytest.mark.parametrize("name", ["en_harvard_spk1_snt5", "en_timit_ldc93s1", "en_arctic_a0024"])
def test_babble_under_real_speech_does_not_keep_the_turn_open(
    silero: SileroModel, name: str, snr_db: int
) -> None:
    """Other people talking near the caller are speech to the VAD, yet the turn ends with the
    caller's last word (it used to last as long as the babble)."""
    clip = at_level(real_clip(name), 8000)
    lead, after = 1.0, 4.0
    audio = babble_at(lead + len(clip) / 8000 + after, SPEECH_DBFS - snr_db)
    start = int(lead * 8000)
    audio[start : start + len(clip)] += clip
    end = round(lead * 1000) + true_end_ms(clip.astype(np.int16), 8000)

    emitted = run(TurnDetector(8000, 20, TurnConfig(), silero.stream(8000)), audio.astype(np.int16))
    ended = [
        (at - end, e) for at, e in emitted if isinstance(e, TurnEnded) and e.end_ms > end - 500
    ]
    assert ended, turns_of(emitted)
    after_end, turn = ended[0]
    assert turn.reason == "silence"
    # A burst of the crowd right after the last word may stretch it a little, never for long.
    assert -300 < turn.end_ms - end < 500, (turn.end_ms - end, turns_of(emitted))
    assert after_end < TurnConfig().end_of_turn_ms + 600


def test_babble_alone_holds_no_turn_open(silero: SileroModel) -> None:
    seconds = 20.0
    audio = babble_at(seconds, SPEECH_DBFS - 15).astype(np.int16)
    turns = turns_of(run(TurnDetector(8000, 20, TurnConfig(), silero.stream(8000)), audio))
    assert all(end - start < 1500 for start, end in turns), turns
    assert sum(end - start for start, end in turns) < 0.1 * seconds * 1000, turns


def test_the_detector_tells_babble_from_line_noise_behind_the_caller(silero: SileroModel) -> None:
    crowd_line = TurnDetector(8000, 20, TurnConfig(), silero.stream(8000))
    run(crowd_line, babble_at(3.0, SPEECH_DBFS - 15).astype(np.int16))
    noisy_line = TurnDetector(8000, 20, TurnConfig(), silero.stream(8000))
    run(noisy_line, pink_noise(3.0, 8000, rms=0.018 * 32768))
    assert crowd_line.babble_behind and not noisy_line.babble_behind


def paused_detector(silero: SileroModel) -> tuple[TurnDetector, SpeechPaused, bytes]:
    """A detector just past the pause after a real sentence, and a frame of quiet line."""
    clip = real_clip("en_harvard_spk2_snt2")
    detector = TurnDetector(8000, 20, TurnConfig(), silero.stream(8000))
    audio = line8k(0.5, clip, 0.3)
    frames = [audio[i : i + 160].tobytes() for i in range(0, len(audio) - 159, 160)]
    paused = [e for f in frames for e in detector.push(f) if isinstance(e, SpeechPaused)]
    assert len(paused) == 1
    return detector, paused[0], np.zeros(160, np.int16).tobytes()


def line8k(*parts: np.ndarray | float) -> np.ndarray:
    return np.concatenate(
        [np.zeros(int(p * 8000), np.int16) if isinstance(p, float) else p for p in parts]
    )


def test_a_pause_judged_finished_ends_the_turn_at_once(silero: SileroModel) -> None:
    detector, paused, _ = paused_detector(silero)
    ended = detector.decide(paused, Verdict.COMPLETE)
    assert ended is not None and ended.reason == "complete"
    assert not detector.in_turn


def test_a_pause_judged_unfinished_waits_longer_then_ends(silero: SileroModel) -> None:
    detector, paused, quiet = paused_detector(silero)
    assert detector.decide(paused, Verdict.INCOMPLETE) is None
    silence = detector.trailing_silence_ms
    events = []
    while not events:
        events = detector.push(quiet)
        silence += 20
    (ended,) = events
    assert ended.reason == "incomplete_wait"
    assert silence == pytest.approx(detector.config.incomplete_ms, abs=20)


def test_a_judgement_that_comes_after_the_caller_spoke_again_changes_nothing(
    silero: SileroModel,
) -> None:
    detector, paused, _ = paused_detector(silero)
    for i in range(0, 8000, 160):  # the caller goes on
        detector.push(real_clip("en_harvard_spk2_snt4")[i : i + 160].tobytes())
    assert detector.decide(paused, Verdict.COMPLETE) is None
    assert detector.in_turn


def test_the_silence_rule_waits_for_a_verdict_on_its_way_but_not_forever(
    silero: SileroModel,
) -> None:
    clip = real_clip("en_harvard_spk2_snt2")
    detector = TurnDetector(8000, 20, TurnConfig(), silero.stream(8000), judged=True)
    quiet = np.zeros(160, np.int16).tobytes()
    audio = line8k(0.5, clip)
    for i in range(0, len(audio) - 159, 160):
        detector.push(audio[i : i + 160].tobytes())
    events, silence = [], 0
    while not events:  # nobody answers the pause (a transcription still running)
        events = detector.push(quiet)
        silence = detector.trailing_silence_ms or silence + 20
    assert events[0].reason == "silence"
    assert silence >= detector.config.incomplete_ms - 200  # not the plain 700 ms rule
