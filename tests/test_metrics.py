"""Prometheus metrics fed from a real event bus, read back from the exposition text."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from voiceai.events import (
    BargeIn,
    BaseEvent,
    BotSaid,
    CallDialing,
    CallEnded,
    CallError,
    CallStarted,
    CallTransferred,
    EslState,
    EventBus,
    TranscriptFinal,
    TtsAudio,
    TurnLatency,
)
from voiceai.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, content_type = metrics.render()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    """One sample's value, None when the series is not exported at all."""
    return samples(metrics).get((name, frozenset(labels.items())))


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 2.0) -> None:
    """Waits for the consumer task to catch up with what was published."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


def said(call_id: str, text: str, **fields: Any) -> TranscriptFinal:
    """A caller turn (where in the call it was does not matter to the metrics)."""
    return TranscriptFinal(call_id=call_id, text=text, start_ms=0, end_ms=1000, **fields)


async def start(metrics: Metrics, bus: EventBus) -> asyncio.Task[None]:
    task = asyncio.create_task(metrics.consume(bus))
    await asyncio.sleep(0)  # the consumer subscribes at its first step; events before are lost
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_realistic_day_of_calls_through_the_bus() -> None:
    metrics = Metrics()

    def active() -> float | None:
        return value(metrics, "voiceai_active_calls")

    async def scenario() -> None:
        bus = EventBus()
        task = await start(metrics, bus)
        bus.publish(EslState(state="connected"))  # read from the sockets themselves: ignored

        # Call a (inbound): two caller turns (one a backchannel), a reply, a barge-in.
        bus.publish(CallStarted(call_id="a", caller="+15550100", direction="inbound"))
        bus.publish(CallStarted(call_id="b", caller="+15550101", direction="outbound"))
        await eventually(lambda: active() == 2, "two active calls")
        bus.publish(said("a", "hi", stt_ms=300, audio_s=1.5))
        bus.publish(TtsAudio(call_id="a", engine="edge", fallback=False, synth_ms=400, audio_s=2))
        bus.publish(
            TurnLatency(
                call_id="a",
                end_of_turn=600,
                transcript=-120,  # ready before the turn officially ended
                llm_first_token=900,
                first_sentence=1300,
                first_audio=1700,
                play_sent=1720,
                playback_started=1800,
            )
        )
        bus.publish(BotSaid(call_id="a", text="Hello, how can I help?", interrupted=False))
        bus.publish(said("a", "mhm", stt_ms=150, audio_s=0.5, backchannel=True))
        bus.publish(BargeIn(call_id="a", at_ms=5200, state="speaking"))
        bus.publish(BotSaid(call_id="a", text="We open", interrupted=True))
        bus.publish(CallEnded(call_id="a", reason="hangup", turns=2, transferred=False))

        # Call b (outbound): one turn, then handed to a person.
        bus.publish(said("b", "who is this", stt_ms=500, audio_s=2.0))
        bus.publish(
            TurnLatency(call_id="b", end_of_turn=600, transcript=350, playback_started=2400)
        )
        bus.publish(CallTransferred(call_id="b", to="+15550199", reason="caller pressed 0"))
        bus.publish(CallEnded(call_id="b", reason="hangup", turns=1, transferred=True))

        # Call c (inbound): the LLM fails, piper apologises in edge's place, the call fails.
        bus.publish(CallStarted(call_id="c", caller="+15550102", direction="inbound"))
        await eventually(lambda: active() == 1, "a and b ended, c active")
        bus.publish(said("c", "", stt_ms=80, audio_s=0))
        bus.publish(CallError(call_id="c", kind="llm", message="no first token in 8 s"))
        bus.publish(TtsAudio(call_id="c", engine="piper", fallback=True, synth_ms=120, audio_s=2))
        bus.publish(BotSaid(call_id="c", text="I'm sorry", interrupted=False))
        bus.publish(CallError(call_id="c", kind="transfer", message="gateway down"))
        bus.publish(CallEnded(call_id="c", reason="llm failed", turns=1))

        # Call d: an outbound dial that never connects.
        bus.publish(CallDialing(call_id="d", to="+15550103"))
        bus.publish(CallError(call_id="d", kind="originate", message="NO_ANSWER"))
        bus.publish(CallEnded(call_id="d", reason="originate failed: NO_ANSWER", turns=0))

        # An end for a call never seen (its start came before this app) must not go negative.
        bus.publish(CallEnded(call_id="ghost", reason="hangup", turns=0))
        # Events are handled in order: once the ghost is counted, all the above is.
        await eventually(
            lambda: (
                value(metrics, "voiceai_calls_total", direction="inbound", outcome="completed") == 2
            ),
            "all counted",
        )
        await stop(task)

    asyncio.run(scenario())
    got = samples(metrics)

    def at(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert at("voiceai_active_calls") == 0
    assert at("voiceai_calls_total", direction="inbound", outcome="completed") == 2  # a, ghost
    assert at("voiceai_calls_total", direction="inbound", outcome="failed") == 1  # c
    assert at("voiceai_calls_total", direction="inbound", outcome="transferred") == 0
    assert at("voiceai_calls_total", direction="outbound", outcome="transferred") == 1  # b
    assert at("voiceai_calls_total", direction="outbound", outcome="failed") == 1  # d
    assert at("voiceai_calls_total", direction="outbound", outcome="completed") == 0

    assert at("voiceai_turns_total", speaker="caller") == 4  # the backchannel counts too
    assert at("voiceai_turns_total", speaker="bot") == 3
    assert at("voiceai_barge_ins_total") == 1

    assert at("voiceai_turn_stage_seconds_count", stage="playback_started") == 2
    assert at("voiceai_turn_stage_seconds_sum", stage="playback_started") == pytest.approx(4.2)
    assert at("voiceai_turn_stage_seconds_bucket", stage="playback_started", le="2.0") == 1
    assert at("voiceai_turn_stage_seconds_count", stage="transcript") == 2
    assert at("voiceai_turn_stage_seconds_sum", stage="transcript") == pytest.approx(0.35)
    assert at("voiceai_turn_stage_seconds_bucket", stage="transcript", le="0.05") == 1  # clamped
    assert at("voiceai_turn_stage_seconds_count", stage="llm_first_token") == 1
    assert at("voiceai_turn_stage_seconds_count", stage="first_audio") == 1

    # 0.2 (a) + 0.3 (backchannel) + 0.25 (b); c's zero-length audio has no ratio.
    assert at("voiceai_stt_real_time_factor_count") == 3
    assert at("voiceai_stt_real_time_factor_sum") == pytest.approx(0.75)

    assert at("voiceai_tts_fallbacks_total", engine="piper") == 1
    assert at("voiceai_tts_fallbacks_total", engine="edge") is None  # edge never fell back
    assert at("voiceai_tts_seconds_count", engine="edge") == 1
    assert at("voiceai_tts_seconds_sum", engine="edge") == pytest.approx(0.4)
    assert at("voiceai_tts_seconds_sum", engine="piper") == pytest.approx(0.12)

    assert at("voiceai_errors_total", kind="llm") == 1
    assert at("voiceai_errors_total", kind="transfer") == 1
    assert at("voiceai_errors_total", kind="originate") == 1
    assert at("voiceai_errors_total", kind="tts") is None


def test_two_instances_do_not_share_values() -> None:
    first, second = Metrics(), Metrics()

    async def scenario() -> None:
        bus_one, bus_two = EventBus(), EventBus()
        tasks = [await start(first, bus_one), await start(second, bus_two)]
        bus_one.publish(CallStarted(call_id="a", direction="inbound"))
        bus_one.publish(BargeIn(call_id="a", at_ms=100, state="speaking"))
        await eventually(lambda: value(first, "voiceai_barge_ins_total") == 1, "a barge-in")
        for task in tasks:
            await stop(task)

    asyncio.run(scenario())
    assert value(first, "voiceai_active_calls") == 1
    assert value(second, "voiceai_active_calls") == 0
    assert value(second, "voiceai_barge_ins_total") == 0
    assert first.registry is not second.registry
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "voiceai_" not in default


@pytest.mark.parametrize(
    "build",
    [
        lambda: TtsAudio(call_id="a", fallback=True, synth_ms=100, audio_s=1),  # no engine
        lambda: TtsAudio(call_id="a", engine="edge", fallback="maybe", synth_ms=100, audio_s=1),
        lambda: TtsAudio(call_id="a", engine="edge", synth_ms="fast", audio_s=1),
        lambda: TurnLatency(call_id="a", first_audio=900, transcript="soon"),
        lambda: TurnLatency(call_id="a", playback_started=float("nan")),  # ms are ints
        lambda: TurnLatency(call_id="a", playback_started=1.5),
        lambda: said("a", "hi", stt_ms=200, audio_s=[1]),
        lambda: EslState(state=5),
        lambda: EslState(state="up"),
        lambda: CallStarted(call_id="a", direction=42),
        lambda: CallError(call_id="a", kind=None, message=None),
        lambda: CallEnded(call_id="a", reason="hangup", transferred="perhaps"),
        lambda: BargeIn(call_id="a", at_ms=100, state="speaking", volume=11),  # unknown field
    ],
)
def test_malformed_event_data_cannot_even_be_built(build: Callable[[], BaseEvent]) -> None:
    """What metrics once had to screen out of dict data, the models now refuse to carry."""
    with pytest.raises(ValidationError):
        build()


def test_non_finite_numbers_never_reach_a_histogram() -> None:
    """NaN and infinities are valid floats to pydantic, but one would spoil a sum for good."""
    metrics = Metrics()
    for audio_s in (float("nan"), float("inf"), float("-inf"), 0.0, -1.0, None, 5e-324):
        metrics.observe(said("a", "hi", stt_ms=200, audio_s=audio_s))
    metrics.observe(said("a", "hi", stt_ms=None, audio_s=2.0))
    assert value(metrics, "voiceai_turns_total", speaker="caller") == 8  # each is still a turn
    assert value(metrics, "voiceai_stt_real_time_factor_count") == 0
    assert value(metrics, "voiceai_stt_real_time_factor_sum") == 0

    metrics.observe(said("a", "hi", stt_ms=200, audio_s=2.0))
    assert value(metrics, "voiceai_stt_real_time_factor_count") == 1
    assert value(metrics, "voiceai_stt_real_time_factor_sum") == pytest.approx(0.1)
    for line in metrics.render()[0].decode().splitlines():
        assert "nan" not in line.lower() and "inf " not in line.lower(), line


def test_odd_label_values_become_other_and_a_failing_event_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        bus = EventBus()
        task = await start(metrics, bus)
        # Free text must not become a label: Prometheus would keep a series for each value.
        bus.publish(CallStarted(call_id="a", direction="Sideways"))
        bus.publish(CallError(call_id="a", kind="Gateway Timeout!", message="504"))
        bus.publish(
            TtsAudio(call_id="a", engine="Edge TTS v7", fallback=True, synth_ms=90, audio_s=1)
        )
        bus.publish(TtsAudio(call_id="a", engine="x" * 40, synth_ms=10, audio_s=1))
        # An event built without validation (model_construct) makes observe fail: logged, the
        # consumer goes on with the next event.
        bus.publish(TtsAudio.model_construct(call_id="a", engine=None, synth_ms=5, audio_s=1.0))
        bus.publish(CallEnded(call_id="a", reason="hangup"))
        bus.publish(BargeIn(call_id="b", at_ms=100, state="speaking"))  # after the bad one
        await eventually(lambda: value(metrics, "voiceai_barge_ins_total") == 1, "the barge-in")
        await stop(task)

    with caplog.at_level(logging.WARNING, logger="voiceai.metrics"):
        asyncio.run(scenario())
    failed = [r for r in caplog.records if "could not observe" in r.getMessage()]
    assert len(failed) == 1 and "tts.audio" in failed[0].getMessage()

    got = samples(metrics)

    def at(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    assert at("voiceai_errors_total", kind="other") == 1
    assert at("voiceai_calls_total", direction="other", outcome="completed") == 1
    assert at("voiceai_tts_seconds_count", engine="other") == 2
    assert at("voiceai_tts_fallbacks_total", engine="other") == 1
    assert at("voiceai_active_calls") == 0
    odd = {"Sideways", "sideways", "Gateway Timeout!", "Edge TTS v7", "x" * 40}
    assert not [key for key in got if odd & {v for _, v in key[1]}]


def test_a_call_is_forgotten_when_it_ends() -> None:
    metrics = Metrics(max_tracked_calls=2)
    feed = metrics.observe

    feed(CallStarted(call_id="x", direction="outbound"))
    feed(CallError(call_id="x", kind="stt", message="whisper crashed"))
    feed(CallEnded(call_id="x", reason="hangup"))
    # The same id again is a new call: neither outbound nor failed any more.
    feed(CallStarted(call_id="x"))
    feed(CallEnded(call_id="x", reason="hangup"))
    assert value(metrics, "voiceai_calls_total", direction="outbound", outcome="failed") == 1
    assert value(metrics, "voiceai_calls_total", direction="inbound", outcome="completed") == 1

    # Transferred, then ended by a service shutdown (abort's call.ended: transferred=False).
    feed(CallStarted(call_id="t"))
    feed(CallTransferred(call_id="t", to="+15550199", reason="caller pressed 0"))
    feed(CallEnded(call_id="t", reason="service stopped", turns=1))
    assert value(metrics, "voiceai_calls_total", direction="inbound", outcome="transferred") == 1

    # A call we dialled stays outbound even if its call.started says nothing of direction.
    feed(CallDialing(call_id="o", to="+15550103"))
    feed(CallStarted(call_id="o"))
    feed(CallEnded(call_id="o", reason="hangup"))
    assert value(metrics, "voiceai_calls_total", direction="outbound", outcome="completed") == 1

    # Calls whose end never arrives: only the newest max_tracked_calls are remembered.
    for call_id in ("p", "q", "r"):
        feed(CallStarted(call_id=call_id))
    assert value(metrics, "voiceai_active_calls") == 2
    feed(CallStarted(call_id="r"))  # a repeated start is the same call
    assert value(metrics, "voiceai_active_calls") == 2
    for call_id in ("p", "q", "r"):
        feed(CallEnded(call_id=call_id, reason="hangup"))
    assert value(metrics, "voiceai_active_calls") == 0
