"""Where speech really is in a clean recording: the rule the benchmarks and tests measure
latency from (the caller's true end of speech), never the service's own VAD.

Speech frames are the 20 ms frames whose RMS level is at least max(loudest frame - 30 dB,
noise floor + 8 dB), the noise floor being the 10th percentile of the frame levels (several
real clips carry their own background 20-25 dB under the speech). True onset = start of the
first speech frame; true end = end of the last one. Active speech level = mean power of the
speech frames (ITU-T P.56's idea, simplified).
"""

from __future__ import annotations

import numpy as np

FRAME_S = 0.02
PEAK_RANGE_DB = 30.0
FLOOR_MARGIN_DB = 8.0


def frame_levels(samples: np.ndarray, rate: int) -> np.ndarray:
    """dBFS of each whole 20 ms frame of int16-scale samples."""
    size = int(rate * FRAME_S)
    count = len(samples) // size
    frames = samples[: count * size].astype(np.float64).reshape(count, size)
    rms = np.sqrt((frames**2).mean(axis=1))
    return 20 * np.log10(np.maximum(rms, 1e-3) / 32768)


def speech_frames(levels: np.ndarray) -> np.ndarray:
    threshold = max(levels.max() - PEAK_RANGE_DB, np.percentile(levels, 10) + FLOOR_MARGIN_DB)
    return levels >= threshold


def speech_span(samples: np.ndarray, rate: int) -> tuple[float, float]:
    """(true onset, true end of speech) in seconds from the start of `samples`."""
    voiced = np.flatnonzero(speech_frames(frame_levels(samples, rate)))
    return float(voiced[0] * FRAME_S), float((voiced[-1] + 1) * FRAME_S)


def active_level(samples: np.ndarray, rate: int) -> float:
    """The active speech level in dBFS."""
    levels = frame_levels(samples, rate)
    active = levels[speech_frames(levels)]
    return float(10 * np.log10(np.mean(10 ** (active / 10))))
