"""Who gets speech recognition next when many calls talk at once: a fake engine with
controllable durations on a loop clock the tests control, so every ordering is exact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import looptime
import numpy as np
import pytest

from voiceai.engines.stt import STTError, Transcript
from voiceai.engines.stt_scheduler import Dropped, Priority, TranscriptionScheduler


def on_fake_clock(scenario: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=lambda: looptime.new_event_loop(start=0, _enabled=True)) as r:
        r.run(asyncio.wait_for(scenario(), 600))


class TimedSTT:
    """Takes `seconds` of loop time per transcription, one at a time per worker; its own limit
    (like WhisperSTT's) counts only the transcription, and it logs what it ran, in order."""

    multilingual = False

    def __init__(self, seconds: float = 1.0, limit_s: float = 5.0) -> None:
        self.seconds = seconds
        self.limit_s = limit_s
        self.ran: list[str] = []

    async def transcribe(self, audio: np.ndarray, language: str | None) -> Transcript | None:
        label = str(audio.dtype.metadata["label"])  # type: ignore[index]
        started = asyncio.get_running_loop().time()
        await asyncio.sleep(self.seconds)
        if asyncio.get_running_loop().time() - started > self.limit_s:
            raise STTError("too slow")
        self.ran.append(label)
        return Transcript(label, "en", 1.0, int(self.seconds * 1000))

    async def aclose(self) -> None:
        pass


def audio(label: str) -> np.ndarray:
    """Silence that carries a label the fake engine reports back."""
    return np.zeros(160, dtype=np.dtype(np.float32, metadata={"label": label}))


def test_a_final_overtakes_waiting_partials() -> None:
    async def scenario() -> None:
        stt = TimedSTT()
        scheduler = TranscriptionScheduler(stt, workers=1)
        busy = asyncio.create_task(scheduler.transcribe(audio("first"), "en", call_id="a"))
        await asyncio.sleep(0.1)  # the worker is busy with "first"
        partials = [
            asyncio.create_task(
                scheduler.transcribe(
                    audio(f"partial-{c}"), "en", call_id=c, priority=Priority.PARTIAL
                )
            )
            for c in "bcd"
        ]
        await asyncio.sleep(0.1)
        final = asyncio.create_task(scheduler.transcribe(audio("final-e"), "en", call_id="e"))
        await asyncio.gather(busy, final, *partials)
        assert stt.ran[:2] == ["first", "final-e"]
        await scheduler.aclose()

    on_fake_clock(scenario)


def test_one_calls_flood_delays_another_calls_final_by_at_most_one_transcription() -> None:
    async def scenario() -> None:
        stt = TimedSTT(seconds=1.0)
        scheduler = TranscriptionScheduler(stt, workers=1)
        loop = asyncio.get_running_loop()
        flood = [
            asyncio.create_task(scheduler.transcribe(audio(f"flood-{i}"), "en", call_id="loud"))
            for i in range(20)
        ]
        await asyncio.sleep(0.5)  # the loud call's first final is running
        asked = loop.time()
        words = await scheduler.transcribe(audio("quiet"), "en", call_id="quiet")
        assert words is not None and words.text == "quiet"
        assert loop.time() - asked <= 2.0  # the one running now, then its own
        await asyncio.gather(*flood)
        await scheduler.aclose()

    on_fake_clock(scenario)


def test_a_partial_that_is_stale_when_its_turn_comes_is_dropped_unrun() -> None:
    async def scenario() -> None:
        stt = TimedSTT()
        scheduler = TranscriptionScheduler(stt, workers=1)
        turn_over = False
        busy = asyncio.create_task(scheduler.transcribe(audio("first"), "en", call_id="a"))
        await asyncio.sleep(0.1)
        partial = asyncio.create_task(
            scheduler.transcribe(
                audio("stale"),
                "en",
                call_id="b",
                priority=Priority.PARTIAL,
                wanted=lambda: not turn_over,
            )
        )
        await asyncio.sleep(0.1)
        turn_over = True  # the caller's turn ended while the partial waited
        await busy
        with pytest.raises(Dropped):
            await partial
        assert stt.ran == ["first"] and scheduler.dropped_partials == 1
        await scheduler.aclose()

    on_fake_clock(scenario)


def test_a_newer_partial_replaces_the_waiting_one_of_the_same_call() -> None:
    async def scenario() -> None:
        stt = TimedSTT()
        scheduler = TranscriptionScheduler(stt, workers=1)
        busy = asyncio.create_task(scheduler.transcribe(audio("first"), "en", call_id="a"))
        await asyncio.sleep(0.1)
        old = asyncio.create_task(
            scheduler.transcribe(audio("old"), "en", call_id="b", priority=Priority.PARTIAL)
        )
        await asyncio.sleep(0.1)
        new = await scheduler.transcribe(audio("new"), "en", call_id="b", priority=Priority.PARTIAL)
        with pytest.raises(Dropped):
            await old
        await busy
        assert new is not None and stt.ran == ["first", "new"]
        await scheduler.aclose()

    on_fake_clock(scenario)


def test_a_final_that_waits_longer_than_the_engine_limit_still_gets_its_words() -> None:
    async def scenario() -> None:
        stt = TimedSTT(seconds=2.0, limit_s=3.0)
        scheduler = TranscriptionScheduler(stt, workers=1)
        waiting = [
            asyncio.create_task(scheduler.transcribe(audio(f"t{i}"), "en", call_id=f"c{i}"))
            for i in range(5)
        ]
        results = await asyncio.gather(*waiting)  # the last waited 8 s: more than the limit
        assert [r.text for r in results if r] == [f"t{i}" for i in range(5)]
        await scheduler.aclose()

    on_fake_clock(scenario)


def test_calls_take_turns_within_a_priority() -> None:
    async def scenario() -> None:
        stt = TimedSTT()
        scheduler = TranscriptionScheduler(stt, workers=1)
        jobs = [
            asyncio.create_task(scheduler.transcribe(audio(f"{c}{i}"), "en", call_id=c))
            for c in "ab"
            for i in range(3)
        ]
        await asyncio.gather(*jobs)
        assert stt.ran == ["a0", "b0", "a1", "b1", "a2", "b2"]
        await scheduler.aclose()

    on_fake_clock(scenario)


def test_a_caller_who_hangs_up_takes_their_waiting_work_out_of_the_queue() -> None:
    async def scenario() -> None:
        stt = TimedSTT()
        scheduler = TranscriptionScheduler(stt, workers=1)
        busy = asyncio.create_task(scheduler.transcribe(audio("first"), "en", call_id="a"))
        await asyncio.sleep(0.1)
        gone = asyncio.create_task(scheduler.transcribe(audio("gone"), "en", call_id="b"))
        await asyncio.sleep(0.1)
        assert scheduler.waiting() == 1
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert scheduler.waiting() == 0
        await busy
        assert stt.ran == ["first"]
        await scheduler.aclose()

    on_fake_clock(scenario)


def test_an_early_transcription_promoted_to_final_overtakes_other_calls_early_ones() -> None:
    async def scenario() -> None:
        stt = TimedSTT()
        scheduler = TranscriptionScheduler(stt, workers=1)
        busy = asyncio.create_task(scheduler.transcribe(audio("first"), "en", call_id="a"))
        await asyncio.sleep(0.1)
        pauses = [
            asyncio.create_task(
                scheduler.transcribe(audio(f"early-{c}"), "en", call_id=c, priority=Priority.EARLY)
            )
            for c in "bcd"
        ]
        await asyncio.sleep(0.1)
        scheduler.promote("d")  # d's turn ended: its early transcript is the final one
        assert scheduler.waiting(Priority.FINAL) == 1
        await asyncio.gather(busy, *pauses)
        assert stt.ran == ["first", "early-d", "early-b", "early-c"]
        assert scheduler.waiting() == 0
        await scheduler.aclose()

    on_fake_clock(scenario)
