"""Speech synthesis with real engines: piper, espeak-ng, and edge-tts against an emulator of
Microsoft's websocket service (voiceai.sim.edge_server). Whisper checks the words."""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from tests.conftest import free_port, words
from voiceai.audio.pcm import decode_bytes, decode_file, resample, to_float
from voiceai.config import Settings
from voiceai.engines.stt import WhisperSTT
from voiceai.engines.tts import (
    EdgeTTS,
    EspeakTTS,
    FallbackTTS,
    PiperTTS,
    SpeechSynthesizer,
    SpokenAudio,
    TTSError,
    build_tts,
    parse_voices,
    speakable,
    write_wav,
)
from voiceai.sim.edge_server import EDGE_RATE, EdgeEmulator, Mode, encode_mp3

LOGGER = "voiceai.engines.tts"
SENTENCE = "Please call me back on Monday morning."
KEYWORDS = {"call", "monday", "morning"}
RUSSIAN = "Здравствуйте, перезвоните мне в понедельник утром."
T = TypeVar("T")


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperTTS]:
    engine = PiperTTS()  # one loaded voice for the module, as the service keeps one
    yield engine
    asyncio.run(engine.aclose())


def heard(stt: WhisperSTT, audio: SpokenAudio) -> set[str]:
    float16k = to_float(resample(audio.samples, audio.rate, 16000))
    transcript = asyncio.run(stt.transcribe(float16k, "en"))
    return words(transcript.text) if transcript else set()


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def peak_hz(samples: np.ndarray, rate: int) -> float:
    padded = len(samples) * 4  # zero padding: a finer frequency grid than 1/duration
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64), n=padded))
    return float(np.fft.rfftfreq(padded, 1 / rate)[spectrum.argmax()])


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)


def assert_plausible_speech(audio: SpokenAudio, rate: int, engine: str) -> None:
    assert audio.engine == engine
    assert audio.rate == rate
    assert audio.samples.dtype == np.int16
    # Seven words at 120–220 words a minute, plus a little silence around them.
    assert 1.5 < audio.duration_s < 5.0, audio.duration_s
    assert rms(audio.samples) > 300


def synthesize(engine: SpeechSynthesizer, text: str, language: str, rate: int) -> SpokenAudio:
    return asyncio.run(engine.synthesize(text, language, rate))


def closed_endpoint() -> str:
    return f"ws://127.0.0.1:{free_port()}/consumer/speech/synthesize/readaloud/edge/v1"


def with_emulator(mode: Mode, run: Callable[[EdgeEmulator], Awaitable[T]], **options: Any) -> T:
    """`run(emulator)` with an Edge emulator serving in the same event loop."""

    async def main() -> T:
        async with EdgeEmulator(mode=mode, **options) as emulator:
            return await run(emulator)

    return asyncio.run(main())


# --- offline engines ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["piper", "espeak"])
def test_offline_engines_speak_the_words_at_both_call_rates(
    piper: PiperTTS, stt: WhisperSTT, name: str
) -> None:
    engine = piper if name == "piper" else EspeakTTS()
    narrow, wide = (synthesize(engine, SENTENCE, "en", rate) for rate in (8000, 16000))
    for audio, rate in ((narrow, 8000), (wide, 16000)):
        assert_plausible_speech(audio, rate, name)
        assert heard(stt, audio) >= KEYWORDS
    # Same speech, same length at either rate: a missed rate conversion would stretch one
    # (piper's own timing varies by a few percent between runs).
    assert narrow.duration_s == pytest.approx(wide.duration_s, rel=0.1)


def test_russian_goes_to_espeak_because_piper_speaks_english_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    tts = build_tts(Settings(tts="piper"))
    assert [e.name for e in tts.engines] == ["piper", "espeak"]
    audio = asyncio.run(tts.synthesize(RUSSIAN, "ru", 8000))
    assert audio.engine == "espeak"
    assert 2.0 < audio.duration_s < 8.0
    assert rms(audio.samples) > 300
    assert caplog.records == []  # skipping an engine that can't speak Russian is no failure


def test_written_wav_plays_at_its_rate(tmp_path: Path) -> None:
    audio = SpokenAudio(tone(1000, 0.5, 8000), 8000, "espeak")
    path = write_wav(tmp_path / "reply.wav", audio)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 8000)
        assert wav.getnframes() == 4000
    assert np.array_equal(decode_file(path, 8000), audio.samples)
    assert [p.name for p in tmp_path.iterdir()] == ["reply.wav"]  # no partial file left


# --- the MP3 conversion path edge-tts audio takes -----------------------------------------


@pytest.mark.parametrize("rate", [8000, 16000])
def test_edge_mp3_path_keeps_pitch_and_length(rate: int) -> None:
    original = tone(1000, 1.5, EDGE_RATE)
    mp3 = encode_mp3(original)  # raw 48 kbit/s frames, as Edge streams them
    native = decode_bytes(mp3, EDGE_RATE)
    converted = decode_bytes(mp3, rate)
    # MP3 adds encoder delay and frame padding (< 1 frame + 1105 samples), never removes audio.
    padding_s = len(native) / EDGE_RATE - len(original) / EDGE_RATE
    assert 0 <= padding_s < 0.075
    assert abs(len(converted) / rate - len(native) / EDGE_RATE) < 0.002
    assert peak_hz(converted, rate) == pytest.approx(1000, abs=2)


# --- edge-tts against the emulator --------------------------------------------------------


def test_edge_speaks_through_the_real_protocol(stt: WhisperSTT) -> None:
    voices = parse_voices("ru-RU-DmitryNeural")

    async def run(emulator: EdgeEmulator) -> tuple[SpokenAudio, SpokenAudio, EdgeEmulator]:
        edge = EdgeTTS(voices, timeout_s=5.0, endpoint=emulator.endpoint)
        english = await edge.synthesize(SENTENCE, "en-US", 8000)
        russian = await edge.synthesize(RUSSIAN, "ru", 16000)
        return english, russian, emulator

    english, russian, emulator = with_emulator("speak", run)
    assert_plausible_speech(english, 8000, "edge")
    assert heard(stt, english) >= KEYWORDS
    assert russian.engine == "edge" and russian.rate == 16000 and russian.duration_s > 2.0
    assert [(r.voice, r.text) for r in emulator.requests] == [
        ("Microsoft Server Speech Text to Speech Voice (en-US, AriaNeural)", SENTENCE),
        ("Microsoft Server Speech Text to Speech Voice (ru-RU, DmitryNeural)", RUSSIAN),
    ]
    assert {r.output_format for r in emulator.requests} == {"audio-24khz-48kbitrate-mono-mp3"}


def test_a_slow_edge_times_out_and_piper_speaks(
    piper: PiperTTS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def run(emulator: EdgeEmulator) -> tuple[SpokenAudio, float]:
        tts = FallbackTTS([EdgeTTS(timeout_s=1.0, endpoint=emulator.endpoint), piper])
        started = time.monotonic()
        audio = await tts.synthesize(SENTENCE, "en", 8000)
        return audio, time.monotonic() - started

    audio, elapsed = with_emulator("slow", run, delay_s=10.0)
    assert audio.engine == "piper"
    assert 1.0 <= elapsed < 1.9  # edge's own timeout, then piper (~0.1 s), not the backstop
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "fell back to piper: edge failed (TimeoutError: " in message
    assert "no audio within 1.0 s" in message


def test_an_unreachable_edge_falls_back_at_once_with_one_log_line(
    piper: PiperTTS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    tts = FallbackTTS([EdgeTTS(timeout_s=3.0, endpoint=closed_endpoint()), piper, EspeakTTS()])
    started = time.monotonic()
    audio = asyncio.run(tts.synthesize(SENTENCE, "en", 16000))
    assert time.monotonic() - started < 3.0  # a refused connection needs no timeout
    assert audio.engine == "piper"
    [record] = caplog.records
    message = record.getMessage()
    assert "edge failed (ClientConnectorError" in message and "fell back to piper" in message
    assert "espeak" not in message


def test_edge_audio_cut_off_mid_stream_is_refused() -> None:
    async def run(emulator: EdgeEmulator) -> TTSError:
        with pytest.raises(TTSError) as caught:
            await EdgeTTS(timeout_s=5.0, endpoint=emulator.endpoint).synthesize(
                SENTENCE, "en", 8000
            )
        return caught.value

    error = with_emulator("drop", run, chunk_bytes=2048)
    assert "cut off" in str(error)


# --- all failing, choosing, cleaning ------------------------------------------------------


def test_all_engines_failing_raises_one_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def run(emulator: EdgeEmulator) -> TTSError:
        tts = FallbackTTS(
            [
                EdgeTTS(timeout_s=2.0, endpoint=emulator.endpoint),
                PiperTTS(tmp_path / "missing.onnx"),
                EspeakTTS(executable=str(tmp_path / "no-espeak-ng")),
            ]
        )
        with pytest.raises(TTSError) as caught:
            await tts.synthesize(SENTENCE, "en", 8000)
        await tts.aclose()
        return caught.value

    error = str(with_emulator("reject", run))
    assert error.startswith("all TTS engines failed for 'en': ")
    assert "edge failed (WSServerHandshakeError: edge-tts: 503" in error
    assert "piper failed (FileNotFoundError: piper: no piper voice at " in error
    assert "espeak failed (FileNotFoundError: espeak-ng is not installed" in error
    assert caplog.records == []  # the caller reports the failure, once


def test_no_engine_for_the_language_or_nothing_to_say_is_an_error(piper: PiperTTS) -> None:
    with pytest.raises(TTSError, match="no TTS engine speaks 'ru'"):
        asyncio.run(FallbackTTS([piper]).synthesize(RUSSIAN, "ru", 8000))
    with pytest.raises(TTSError, match="nothing speakable"):
        asyncio.run(FallbackTTS([piper]).synthesize("👍 **", "en", 8000))


def test_build_tts_orders_engines_from_the_setting() -> None:
    chains = {
        choice: [e.name for e in build_tts(Settings(tts=choice)).engines]
        for choice in ("auto", "edge", "piper", "espeak")
    }
    assert chains == {
        "auto": ["edge", "piper", "espeak"],
        "edge": ["edge", "piper", "espeak"],
        "piper": ["piper", "espeak"],
        "espeak": ["espeak"],
    }
    settings = Settings(tts="edge", tts_voice="en:en-US-GuyNeural, ru-RU-DmitryNeural")
    edge = build_tts(settings).engines[0]
    assert isinstance(edge, EdgeTTS)
    assert edge.voices == {"en": "en-US-GuyNeural", "ru": "ru-RU-DmitryNeural"}
    assert edge.timeout_s == settings.tts_timeout_s
    assert edge.speaks("ru-RU") and not edge.speaks("de")


def test_bad_voice_setting_says_what_is_expected() -> None:
    with pytest.raises(ValueError, match="invalid TTS voice 'en:Guy'"):
        parse_voices("en:Guy")


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("Sure! 😊 We open at **9 am**.", "Sure! We open at 9 am."),
        ("## Hours\n- Monday\n- Tuesday: closed", "Hours, Monday, Tuesday: closed"),
        ("1. Call [our desk](https://example.com/desk) 👨‍👩‍👧 now", "Call our desk now"),
        ("It is 25°C, `ticket` _A-12_ 🇺🇸.", "It is 25°C, ticket A-12."),
        ("Привет 👋🏽 *друг*!", "Привет друг!"),
        ("👍", ""),
    ],
)
def test_speakable_drops_markdown_and_emoji(text: str, spoken: str) -> None:
    assert speakable(text) == spoken
