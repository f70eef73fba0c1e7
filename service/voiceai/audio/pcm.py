"""Raw L16 PCM: cutting a byte stream into frames, channels, and the one rate converter."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import soxr

SAMPLE_WIDTH = 2  # bytes per 16-bit sample


class FrameChunker:
    """Cuts an arbitrary byte stream into fixed-size frames, carrying any remainder over.

    mod_audio_fork coalesces packets when the socket is slow and an odd byte may split a
    sample, so frames are never assumed to arrive whole.
    """

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0 or frame_bytes % SAMPLE_WIDTH:
            raise ValueError(
                f"frame size must be a positive whole number of samples: {frame_bytes}"
            )
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        self._pending += data
        count = len(self._pending) // self.frame_bytes
        cut = count * self.frame_bytes
        frames = [
            bytes(self._pending[i : i + self.frame_bytes]) for i in range(0, cut, self.frame_bytes)
        ]
        del self._pending[:cut]
        return frames

    @property
    def pending(self) -> int:
        return len(self._pending)


def left_channel(interleaved: bytes) -> bytes:
    """The left (caller) channel of interleaved stereo L16."""
    samples = np.frombuffer(interleaved, dtype="<i2")
    return samples[0::2].tobytes()


def to_samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2")


def to_float(samples: np.ndarray) -> np.ndarray:
    """int16 samples → float32 in [-1, 1), the form Whisper takes."""
    return samples.astype(np.float32) / 32768.0


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Mono int16 samples at one rate → the same sound at another. The only rate converter."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.int16, copy=False)
    out = soxr.resample(samples.astype(np.int16, copy=False), from_rate, to_rate, quality="HQ")
    return np.asarray(out, dtype=np.int16)


def decode_file(path: str | Path, rate: int) -> np.ndarray:
    """Any audio file PyAV reads (WAV of any rate/format, MP3...) → mono int16 at `rate`."""
    return decode_bytes(Path(path).read_bytes(), rate)


def decode_bytes(data: bytes, rate: int) -> np.ndarray:
    """Encoded audio in memory (WAV, MP3...) → mono int16 at `rate`. The one decoding path."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        native_rate = stream.rate or stream.codec_context.sample_rate
        # PyAV only converts sample format and layout; rate goes through `resample`.
        to_mono = av.AudioResampler(format="s16", layout="mono", rate=native_rate)
        chunks = []
        for frame in container.decode(stream):
            for converted in to_mono.resample(frame):
                chunks.append(converted.to_ndarray().reshape(-1))
        for converted in to_mono.resample(None):
            chunks.append(converted.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    return resample(samples, native_rate, rate)
