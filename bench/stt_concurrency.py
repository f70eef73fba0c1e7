"""How to spend the cores on speech recognition when many calls talk (prints figures).

For tiny.en on the real English clips (/work/shared/speech/real, read in place):
- workers × CPU threads: one clip's latency, and clips a second with every worker busy;
- batching: several calls' turns through one encoder/decoder pass (CTranslate2's batch, which
  is what faster-whisper's BatchedInferencePipeline uses for one long file), CPU per clip;
- BLAS threads: OpenBLAS's idle threads spin; CPU per clip with one BLAS thread or the default.
Measured in process CPU time as well as wall time, so a busy machine skews them less.
"""

from __future__ import annotations

import concurrent.futures
import json
import time
import wave
from pathlib import Path

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from threadpoolctl import threadpool_limits

from voiceai.engines.stt import resolve_model

REAL = Path("/work/shared/speech/real")
CLIPS = 8
START = [50257, 50362]  # <|startoftranscript|> <|notimestamps|>, tiny.en's


def clips() -> list[np.ndarray]:
    manifest = json.loads((REAL / "manifest.json").read_text())
    out = []
    for item in manifest["items"]:
        if item["lang"] != "en" or item["duration_s"] > 6:
            continue
        with wave.open(str(REAL / item["file"])) as clip:
            if clip.getframerate() != 16000:
                continue
            pcm = np.frombuffer(clip.readframes(clip.getnframes()), np.int16)
        out.append(pcm.astype(np.float32) / 32768)
    return out[:CLIPS]


def transcribe(model: WhisperModel, audio: np.ndarray) -> str:
    segments, _ = model.transcribe(
        audio, language="en", beam_size=1, condition_on_previous_text=False, word_timestamps=True
    )
    return "".join(s.text for s in segments)


def workers_and_threads(audio: list[np.ndarray]) -> None:
    print("workers × threads   one clip (ms)   clips/s, all workers busy   CPU ms/clip")
    for workers, threads in ((1, 1), (1, 2), (2, 1), (2, 2)):
        model = WhisperModel(
            resolve_model("auto"), cpu_threads=threads, num_workers=workers, compute_type="int8"
        )
        transcribe(model, audio[0])
        started = time.perf_counter()
        for clip in audio:
            transcribe(model, clip)
        one = (time.perf_counter() - started) / len(audio)
        cpu, wall = time.process_time(), time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(transcribe, [model] * 2 * len(audio), audio * 2))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rate, per_clip = 2 * len(audio) / wall, cpu * 500 / len(audio)
        print(f"  {workers} × {threads}{one * 1000:>18.0f}{rate:>20.2f}{per_clip:>20.0f}")


def batching(audio: list[np.ndarray]) -> None:
    model = WhisperModel(resolve_model("auto"), cpu_threads=2, compute_type="int8")
    features = [pad_or_trim(model.feature_extractor(a)) for a in audio]

    def run(batch: list[np.ndarray]) -> None:
        encoded = model.model.encode(ctranslate2.StorageView.from_array(np.stack(batch)))
        model.model.generate(encoded, [START] * len(batch), beam_size=1, max_length=100)

    run(features[:1])
    print("batch   CPU ms/clip   wall ms/clip")
    for size in (1, 2, 4, 8):
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(0, len(features), size):
            run(features[i : i + size])
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"  {size:>3}{cpu * 1000 / len(features):>14.0f}{wall * 1000 / len(features):>15.0f}")


def blas_threads(audio: list[np.ndarray]) -> None:
    model = WhisperModel(resolve_model("auto"), cpu_threads=1, compute_type="int8")
    transcribe(model, audio[0])
    print("BLAS threads   CPU ms/clip")
    for limit in (None, 1):
        with threadpool_limits(limits=limit, user_api="blas"):
            cpu = time.process_time()
            for clip in audio:
                transcribe(model, clip)
            label = "default" if limit is None else str(limit)
            print(f"  {label:<10}{(time.process_time() - cpu) * 1000 / len(audio):>14.0f}")


def main() -> None:
    audio = clips()
    print(f"speech recognition on {len(audio)} real clips, tiny.en int8")
    workers_and_threads(audio)
    batching(audio)
    blas_threads(audio)


if __name__ == "__main__":
    main()
