"""A listener under load: when every STT worker already has a finished turn waiting, a pause is
left to the silence rule instead of being transcribed early, so a turn costs one transcription.

Real human speech (with its natural pauses) through the real webrtcvad; the STT engine is a
fake whose other-call work is held until the test releases it."""

from __future__ import annotations

import asyncio
import wave
from pathlib import Path

import numpy as np

from voiceai.audio.turns import TurnConfig, TurnEnded
from voiceai.conversation.listener import Listener
from voiceai.conversation.timing import TurnTiming
from voiceai.engines.stt import Transcript
from voiceai.engines.stt_scheduler import Priority, TranscriptionScheduler
from voiceai.events import EventBus

CLIP = Path("/work/shared/speech/real/wav/en_timit_ldc93s1.wav")  # 16 kHz, with pauses


class HeldSTT:
    """Other calls' work ("blocker") waits for `release`; the caller's audio is transcribed."""

    multilingual = False

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.caller_runs = 0

    async def transcribe(self, audio: np.ndarray, language: str | None) -> Transcript | None:
        if audio.dtype.metadata and audio.dtype.metadata.get("label") == "blocker":
            await self.release.wait()
            return None
        self.caller_runs += 1
        return Transcript("She had your dark suit in greasy wash water all year.", "en", 3.0, 1)

    async def aclose(self) -> None:
        pass


class Host:
    def __init__(self) -> None:
        self.turns: list[str] = []
        self.ended_after_ms: list[float] = []  # silence after the last word when the turn ended
        self.heard = asyncio.Event()

    def on_speech_started(self, at_ms: int) -> None:
        pass

    def on_caller_voiced(self, voiced_ms: int, at_ms: int) -> None:
        pass

    def on_turn(self, turn: TurnEnded, transcript: Transcript, timing: TurnTiming) -> None:
        self.turns.append(transcript.text)
        self.ended_after_ms.append(timing.as_ms()["end_of_turn"])
        self.heard.set()

    def on_turn_lost(self, error: str) -> None:
        raise AssertionError(f"no turn should be lost here: {error}")


def caller_audio() -> bytes:
    """The clip up to its last word (its own quiet tail cut off, so the test knows where the
    speech ends: at len - 2 s), then 2 s of the line's silence."""
    with wave.open(str(CLIP)) as clip:
        assert clip.getframerate() == 16000
        samples = np.frombuffer(clip.readframes(clip.getnframes()), np.int16)
    last = int(np.nonzero(np.abs(samples) > 1000)[0][-1])
    speech = samples[: last - last % 320 + 320].tobytes()  # whole 20 ms frames
    return speech + bytes(2 * 16000 * 2)


def listening(scheduler: TranscriptionScheduler, host: Host) -> Listener:
    """A caller's listener at 16 kHz with the default turn settings, partials off."""
    return Listener(
        "caller",
        rate=16000,
        channels=1,
        turn=TurnConfig(),
        stt=scheduler,
        bus=EventBus(),
        host=host,
        language=lambda: "en",
        partials=False,
    )


def blocker() -> np.ndarray:
    return np.zeros(160, dtype=np.dtype(np.float32, metadata={"label": "blocker"}))


def test_a_saturated_scheduler_gets_one_transcription_a_turn_and_no_early_ones() -> None:
    async def scenario() -> None:
        stt = HeldSTT()
        scheduler = TranscriptionScheduler(stt, workers=1)
        others = [
            asyncio.create_task(scheduler.transcribe(blocker(), "en", call_id=f"other-{i}"))
            for i in range(2)
        ]
        await asyncio.sleep(0.01)  # one runs, one waits: the only worker has a final queued
        assert scheduler.saturated
        host = Host()
        listener = listening(scheduler, host)
        audio = caller_audio()
        for at in range(0, len(audio), 640):  # 20 ms frames, as FreeSWITCH sends them
            listener.feed(audio[at : at + 640])
            await asyncio.sleep(0)
            assert scheduler.waiting(Priority.EARLY) == 0  # no pause was transcribed early
        assert scheduler.waiting(Priority.FINAL) == 2  # the other call's, and this turn's
        stt.release.set()
        async with asyncio.timeout(10):
            await host.heard.wait()
        assert host.turns == ["She had your dark suit in greasy wash water all year."]
        assert stt.caller_runs == 1
        await asyncio.gather(*others)
        await listener.finish()
        await scheduler.aclose()

    asyncio.run(scenario())


async def turn_end_with_a_busy_worker(overloaded: bool) -> float:
    """The silence after the caller's last word at which the turn ended, while the only worker
    is busy; `overloaded`: another call's finished turn also waits when the caller stops."""
    stt = HeldSTT()
    scheduler = TranscriptionScheduler(stt, workers=1)
    others = [asyncio.create_task(scheduler.transcribe(blocker(), "en", call_id="other"))]
    await asyncio.sleep(0.01)
    host = Host()
    listener = listening(scheduler, host)
    audio = caller_audio()
    # 300 ms into the final pause: its transcription is queued (at 120 ms), not yet running.
    overload_at = len(audio) - 2 * 16000 * 2 + 300 * 32
    for at in range(0, len(audio), 640):
        if at == overload_at and overloaded:
            others.append(asyncio.create_task(scheduler.transcribe(blocker(), "en", call_id="x")))
            await asyncio.sleep(0.01)
        listener.feed(audio[at : at + 640])
        await asyncio.sleep(0)
    stt.release.set()
    async with asyncio.timeout(10):
        await host.heard.wait()
    await asyncio.gather(*others)
    await listener.finish()
    await scheduler.aclose()
    (ended,) = host.ended_after_ms
    return ended


def test_overloaded_a_pause_whose_transcription_waits_for_a_worker_ends_at_the_silence_rule() -> (
    None
):
    turn = TurnConfig()
    ended = asyncio.run(turn_end_with_a_busy_worker(overloaded=True))
    assert turn.end_of_turn_ms <= ended < turn.incomplete_ms


def test_not_overloaded_a_pause_waits_for_its_verdict_up_to_the_unfinished_turn_limit() -> None:
    turn = TurnConfig()
    ended = asyncio.run(turn_end_with_a_busy_worker(overloaded=False))
    assert ended >= turn.incomplete_ms  # the words might say "unfinished": worth the wait
