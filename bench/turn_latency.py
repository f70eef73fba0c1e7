"""Per-stage turn latency over repeated turns, with an instant LLM (prints figures).

Everything real but FreeSWITCH and Ollama, which are the project's wire-level emulators:
caller speech (piper) → fork → VAD → Whisper → LLM emulator (instant) → piper → ESL playback.
Stages are measured from the caller's last word. Beside them: the pure compute of STT and TTS
for the same audio, and the service's own added latency (end of turn → first playback command).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from local_service import ESL_PASSWORD, local_service
from voiceai import events
from voiceai.audio.pcm import decode_file, resample, to_float
from voiceai.config import Settings
from voiceai.engines.stt import WHISPER_RATE, WhisperSTT
from voiceai.engines.tts import build_tts
from voiceai.sim.freeswitch import EslServer
from voiceai.sim.ollama_server import OllamaEmulator
from voiceai.sim.phone import PhoneCall
from voiceai.sim.voices import synthesize_caller

RATE = 8000
REPLY = "Certainly, I can help with that. Is there anything else you need today?"
LINES = [
    "Hello, I would like to book a table for two people tomorrow evening.",
    "What time does the pharmacy open on Sunday?",
    "Please call me back on Monday morning.",
    "I have a question about my last invoice.",
]
ROUNDS = 3  # each line is said this many times
STAGES = events.LATENCY_STAGES


def pct(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure_compute(stt: WhisperSTT, utterances: list[np.ndarray]) -> tuple[float, float]:
    """Median ms of Whisper on a turn, and of piper on the reply's first sentence."""
    tts = build_tts(Settings(tts="piper"))
    stt_ms, tts_ms = [], []
    first_sentence = REPLY.split(". ")[0] + "."
    await tts.synthesize(first_sentence, "en", RATE)  # load the voice
    for audio in utterances:
        t0 = time.perf_counter()
        await stt.transcribe(to_float(resample(audio, RATE, WHISPER_RATE)), "en")
        stt_ms.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        await tts.synthesize(first_sentence, "en", RATE)
        tts_ms.append((time.perf_counter() - t0) * 1000)
    return statistics.median(stt_ms), statistics.median(tts_ms)


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="voiceai-bench-"))
    utterances = [
        decode_file(synthesize_caller(line, work / f"{i}.wav"), RATE)
        for i, line in enumerate(LINES)
    ]
    stt = WhisperSTT("auto", workers=2)
    switch = EslServer(ESL_PASSWORD)
    await switch.start()
    with OllamaEmulator(reply=lambda messages: REPLY) as ollama:
        async with (
            local_service(switch.port, ollama.url, work, stt) as (settings, ws_url),
            PhoneCall(switch, ws_url, rate=RATE) as call,
        ):
            await call.dial()
            await call.converse(utterances * ROUNDS)
            await call.wait_bot_done()
            await call.end()
    await switch.stop()

    turns = [e["data"]["timings"] for e in call.log.of(events.BOT_SAID) if e["data"]["timings"]]
    print(
        f"{len(turns)} turns at {RATE} Hz, end of turn after "
        f"{settings.end_of_turn_ms} ms of silence; ms after the caller's last word:"
    )
    print(f"  {'stage':<18}{'p50':>7}{'p95':>7}")
    for stage in STAGES:
        values = [t[stage] for t in turns if stage in t]
        if values:
            print(f"  {stage:<18}{pct(values, 0.5):>7}{pct(values, 0.95):>7}")
    added = [t["play_sent"] - t["end_of_turn"] for t in turns if "play_sent" in t]
    stt_ms, tts_ms = await measure_compute(stt, utterances)
    print(
        f"service's own latency, end of turn → first playback command: "
        f"p50 {pct(added, 0.5)} ms, p95 {pct(added, 0.95)} ms"
    )
    print(
        f"pure compute on the same audio: Whisper {stt_ms:.0f} ms + piper first sentence "
        f"{tts_ms:.0f} ms = {stt_ms + tts_ms:.0f} ms (Whisper runs during the end-of-turn "
        f"silence, so it is mostly hidden)"
    )
    await stt.aclose()


if __name__ == "__main__":
    asyncio.run(main())
