"""STT real-time factor of the configured model on this machine (prints figures)."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from voiceai.audio.pcm import decode_file, resample, to_float
from voiceai.config import load_settings
from voiceai.engines.stt import WHISPER_RATE, WhisperSTT
from voiceai.sim.voices import synthesize_caller

LINES = [
    "Hello, I would like to book a table for two people tomorrow evening.",
    "What time does the pharmacy open on Sunday?",
    "Please call me back on Monday morning, my number is five five five, one two three four.",
]
ROUNDS = 3


async def main() -> None:
    settings = load_settings()
    started = time.perf_counter()
    stt = WhisperSTT(settings.stt_model, compute_type=settings.stt_compute_type, workers=1)
    loaded_s = time.perf_counter() - started
    print(f"model {stt.model_name} ({settings.stt_compute_type}) loaded in {loaded_s:.2f} s")
    folder = Path(tempfile.mkdtemp())
    for rate in (8000, 16000):
        rtfs, times = [], []
        for i, line in enumerate(LINES):
            call_audio = decode_file(synthesize_caller(line, folder / f"{i}.wav"), rate)
            audio = to_float(resample(call_audio, rate, WHISPER_RATE))
            seconds = len(audio) / WHISPER_RATE
            await stt.transcribe(audio, "en")  # warm-up
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                await stt.transcribe(audio, "en")
                elapsed = time.perf_counter() - t0
                times.append(elapsed)
                rtfs.append(elapsed / seconds)
        print(
            f"{rate // 1000:>2} kHz call audio: RTF median {statistics.median(rtfs):.3f} "
            f"(min {min(rtfs):.3f}, max {max(rtfs):.3f}); "
            f"per turn {statistics.median(times) * 1000:.0f} ms median"
        )
    await stt.aclose()


if __name__ == "__main__":
    asyncio.run(main())
