"""PCM handling: frames from a byte stream, the rate converter keeps pitch and length."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from voiceai.audio.pcm import FrameChunker, decode_file, left_channel, resample


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64)))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_chunker_carries_partial_frames_and_odd_bytes_over() -> None:
    chunker = FrameChunker(640)
    stream = bytes(range(256)) * 10  # 2560 bytes = 4 frames
    out: list[bytes] = []
    for size in (1, 639, 3, 700, 1217):
        piece, stream = stream[:size], stream[size:]
        out += chunker.push(piece)
    assert [len(f) for f in out] == [640] * 4
    assert b"".join(out) == (bytes(range(256)) * 10)
    assert chunker.pending == 0


def test_chunker_refuses_a_frame_size_that_splits_samples() -> None:
    with pytest.raises(ValueError):
        FrameChunker(321)


@pytest.mark.parametrize(
    ("src", "dst"), [(8000, 16000), (16000, 8000), (22050, 8000), (24000, 16000)]
)
def test_resample_keeps_pitch_and_length(src: int, dst: int) -> None:
    out = resample(tone(440, 2.0, src), src, dst)
    assert len(out) == pytest.approx(2.0 * dst, abs=2)
    assert peak_hz(out, dst) == pytest.approx(440, abs=2)


def test_left_channel_is_the_caller() -> None:
    left, right = tone(300, 0.5, 8000), tone(1000, 0.5, 8000)
    interleaved = np.column_stack([left, right]).reshape(-1).astype("<i2").tobytes()
    mono = np.frombuffer(left_channel(interleaved), "<i2")
    assert np.array_equal(mono, left)


def test_decode_file_converts_any_wav_to_the_call_rate(tmp_path: Path) -> None:
    path = tmp_path / "stereo44.wav"
    samples = tone(500, 1.0, 44100)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(np.column_stack([samples, samples]).reshape(-1).astype("<i2").tobytes())
    out = decode_file(path, 8000)
    assert len(out) == pytest.approx(8000, abs=2)
    assert peak_hz(out, 8000) == pytest.approx(500, abs=2)
