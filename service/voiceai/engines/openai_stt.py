"""An OpenAI-compatible transcription server as the SpeechToText: faster-whisper-server
(speaches), whisper.cpp's server, vLLM and OpenAI answer `POST {url}/audio/transcriptions`.

A finished turn is one request: the audio as a 16 kHz WAV, `response_format=verbose_json` and
word timestamps, so the segments (with `no_speech_prob`) and words (with `probability`, where
the server gives it) come back and are judged as WhisperSTT judges its own. Not `stream=true`:
the turn is judged, and the LLM started, on the whole transcript and its last words, and the
servers that stream a transcription send neither segments nor word probabilities with it.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import wave
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from voiceai.config import hide_url_password
from voiceai.engines.llm import CONNECT_TIMEOUT_S, _describe
from voiceai.engines.openai_chat import key_refused, server_message
from voiceai.engines.stt import WHISPER_RATE, STTError, Transcript, _has_words

SERVER = "transcription server"
# verbose_json's `language` is a name at OpenAI ("english"), a code at faster-whisper servers.
LANGUAGE_NAMES = {"en": "english", "ru": "russian"}
_ENGLISH_ONLY = re.compile(r"\.en\b", re.I)  # tiny.en, Systran/faster-whisper-small.en


class OpenAISTT:
    """Turns transcribed by a server, one `audio/transcriptions` request each, over httpx."""

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str = "",
        timeout_s: float = 30.0,
        no_speech_threshold: float = 0.6,
    ) -> None:
        self.name = f"openai:{model}"  # the call record's engine, as the LLM's
        self.url = url.rstrip("/")
        self.model_name = model
        # A Whisper model named *.en knows English only: it is never asked for another language.
        self.multilingual = not _ENGLISH_ONLY.search(model.rsplit("/", 1)[-1])
        self._where = f"{SERVER} at {hide_url_password(self.url)}"
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._no_speech_threshold = no_speech_threshold
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.url + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s + 1.0, connect=CONNECT_TIMEOUT_S),
        )

    async def transcribe(self, audio: np.ndarray, language: str | None) -> Transcript | None:
        if not self.multilingual:
            language = "en"
        started = time.perf_counter()
        fields: dict[str, Any] = {
            "model": self.model_name,
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["segment", "word"],
        }
        if language:
            fields["language"] = language
        wav = ("turn.wav", wav_bytes(audio), "audio/wav")
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.post(
                    "audio/transcriptions", data=fields, files={"file": wav}
                )
        except TimeoutError:
            raise STTError(f"{self._where} took longer than {self._timeout_s:g} s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, ConnectionError) as exc:
            raise STTError(f"{self._where} is not reachable: {_describe(exc)}") from exc
        except httpx.HTTPError as exc:
            raise STTError(f"{self._where} broke the connection: {_describe(exc)}") from exc
        if response.status_code >= 400:
            raise self._status_error(response)
        text, detected, tail = self._read(response)
        if not text:
            return None
        stt_ms = round((time.perf_counter() - started) * 1000)
        return Transcript(text, detected or language or "", len(audio) / WHISPER_RATE, stt_ms, tail)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _read(self, response: httpx.Response) -> tuple[str, str, float]:
        """(the words, the language, the tail confidence) of an answer: verbose_json, json or
        plain text (a server that ignores response_format)."""
        try:
            body = response.json()
        except ValueError:
            return _spoken(response.text), "", 1.0
        if not isinstance(body, Mapping):
            raise STTError(f"{self._where} gave an unusable answer: {response.text[:200]}")
        language = language_code(str(body.get("language") or ""))
        segments = body.get("segments")
        if not isinstance(segments, list):  # json, or a server that sends no segments
            text = _spoken(str(body.get("text") or ""))
            return text, language, tail_confidence(body.get("words") or [], None)
        kept = [
            s
            for s in segments
            if isinstance(s, Mapping)
            and float(s.get("no_speech_prob") or 0.0) < self._no_speech_threshold
            and _has_words(str(s.get("text") or ""))
        ]
        text = " ".join(str(s["text"]).strip() for s in kept).strip()
        words = body.get("words") or [w for s in kept for w in s.get("words") or ()]
        return text, language, tail_confidence(words, kept)

    def _status_error(self, response: httpx.Response) -> STTError:
        status = response.status_code
        if status in (401, 403):
            return STTError(key_refused(self._where, status, self._api_key, "VOICEAI_STT_API_KEY"))
        said = server_message(response.text, secrets=[self._api_key]) or response.reason_phrase
        if status == 404:
            return STTError(
                f"{self._where} has no model {self.model_name!r} (VOICEAI_STT_MODEL), or no "
                f"audio/transcriptions there (does VOICEAI_STT_URL end in /v1?): HTTP 404: {said}"
            )
        return STTError(f"{self._where} failed (HTTP {status}): {said}")


def wav_bytes(audio: np.ndarray, rate: int = WHISPER_RATE) -> bytes:
    """float32 mono audio → a 16-bit PCM WAV file in memory."""
    samples = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def language_code(language: str) -> str:
    """`english` (OpenAI) or `en` (faster-whisper servers) → `en`."""
    language = language.strip().lower()
    names = {name: code for code, name in LANGUAGE_NAMES.items()}
    return names.get(language, language)


def tail_confidence(words: Sequence[Any], kept: Sequence[Mapping[str, Any]] | None) -> float:
    """As WhisperSTT: the lowest probability of the last two words (of the segments kept, when
    there are segments); 1.0 when the server gives no word probabilities (OpenAI's have none)."""
    spans = [(float(s.get("start") or 0.0), float(s.get("end") or 0.0)) for s in kept or ()]

    def counted(word: Any) -> bool:
        if not isinstance(word, Mapping) or word.get("probability") is None:
            return False
        at = float(word.get("start") or 0.0)
        return kept is None or any(start - 0.05 <= at <= end for start, end in spans)

    probabilities = [float(w["probability"]) for w in words if counted(w)]
    return min(probabilities[-2:]) if probabilities else 1.0


def _spoken(text: str) -> str:
    text = text.strip()
    return text if _has_words(text) else ""
