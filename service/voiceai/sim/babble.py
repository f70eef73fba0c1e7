"""Babble: a crowd with no words in it (other people near the caller, a TV), for the turn-taking
benchmark and tests. Real talkers, each trimmed to its speech, time-reversed (unintelligible, so
speech recognition cannot pick words out of it), looped from a random offset, and summed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from voiceai.sim.speech_span import speech_span


def babble(
    talkers: Sequence[np.ndarray], seconds: float, rate: int, rng: np.random.Generator
) -> np.ndarray:
    """`talkers` (int16-scale samples at `rate`, each at the level it should have in the crowd)
    summed as above; float at unit RMS."""
    count = int(seconds * rate)
    total = np.zeros(count)
    for samples in talkers:
        onset, end = speech_span(samples, rate)
        voice = samples[int(onset * rate) : int(end * rate)][::-1].astype(np.float64)
        looped = np.tile(voice, count // voice.size + 2)
        start = int(rng.integers(voice.size))
        total += looped[start : start + count]
    return total / np.sqrt(np.mean(total**2))
