"""CPU cost of ingesting a call's audio: byte stream → frames → VAD → turns (prints figures).

STT is left out: this is the per-call cost that every connected call pays all the time.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from voiceai.audio.pcm import FrameChunker, decode_file
from voiceai.audio.turns import TurnConfig, TurnDetector
from voiceai.sim.voices import synthesize_caller

CALL_SECONDS = 120


def call_audio(rate: int) -> bytes:
    path = synthesize_caller(
        "Hello, I would like to book a table for two people.", Path(tempfile.mkdtemp()) / "c.wav"
    )
    speech = decode_file(path, rate)
    pause = np.zeros(rate * 2, np.int16)
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal(rate) * 200).astype(np.int16)
    one = np.concatenate([speech, pause, noise, pause])
    reps = CALL_SECONDS * rate // len(one) + 1
    return np.tile(one, reps)[: CALL_SECONDS * rate].astype("<i2").tobytes()


def measure(rate: int, packet_ms: int) -> None:
    pcm = call_audio(rate)
    packet = rate * packet_ms // 1000 * 2
    detector = TurnDetector(rate, 20, TurnConfig())
    chunker = FrameChunker(detector.frame_bytes)
    turns = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(0, len(pcm), packet):
        for frame in chunker.push(pcm[i : i + packet]):
            turns += sum(1 for e in detector.push(frame) if type(e).__name__ == "TurnEnded")
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    per_audio_s = cpu / CALL_SECONDS
    print(
        f"{rate // 1000:>2} kHz, {packet_ms} ms packets: "
        f"{cpu * 1000:.0f} ms CPU for {CALL_SECONDS} s of call "
        f"({per_audio_s * 1e6:.0f} µs per audio second, {turns} turns, wall {wall:.2f} s) "
        f"→ {1 / per_audio_s:,.0f} calls per core at real time (ingest + VAD only)"
    )


if __name__ == "__main__":
    for rate, packet_ms in ((8000, 20), (8000, 30), (16000, 20)):
        measure(rate, packet_ms)
