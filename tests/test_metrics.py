"""Prometheus metrics fed from a real event bus, read back from the exposition text."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from voiceai import events
from voiceai.events import Event, EventBus
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
        bus.publish(events.ESL_STATE, "", state="connecting")
        bus.publish(events.ESL_STATE, "", state="connected")
        await eventually(lambda: value(metrics, "voiceai_esl_connected") == 1, "esl up")

        # Call a (inbound): two caller turns (one a backchannel), a reply, a barge-in.
        bus.publish(events.CALL_STARTED, "a", caller="+15550100", direction="inbound")
        bus.publish(events.CALL_STARTED, "b", caller="+15550101", direction="outbound")
        await eventually(lambda: active() == 2, "two active calls")
        bus.publish(events.TRANSCRIPT_FINAL, "a", text="hi", stt_ms=300, audio_s=1.5)
        bus.publish(events.TTS_AUDIO, "a", engine="edge", fallback=False, synth_ms=400, audio_s=2)
        bus.publish(
            events.TURN_LATENCY,
            "a",
            end_of_turn=600,
            transcript=-120,  # ready before the turn officially ended
            llm_first_token=900,
            first_sentence=1300,
            first_audio=1700,
            play_sent=1720,
            playback_started=1800,
        )
        bus.publish(events.BOT_SAID, "a", text="Hello, how can I help?", interrupted=False)
        bus.publish(
            events.TRANSCRIPT_FINAL, "a", text="mhm", stt_ms=150, audio_s=0.5, backchannel=True
        )
        bus.publish(events.BARGE_IN, "a", at_ms=5200, state="speaking")
        bus.publish(events.BOT_SAID, "a", text="We open", interrupted=True)
        bus.publish(events.CALL_ENDED, "a", reason="hangup", turns=2, transferred=False)

        # Call b (outbound): one turn, then handed to a person.
        bus.publish(events.TRANSCRIPT_FINAL, "b", text="who is this", stt_ms=500, audio_s=2.0)
        bus.publish(
            events.TURN_LATENCY, "b", end_of_turn=600, transcript=350, playback_started=2400
        )
        bus.publish(events.CALL_TRANSFERRED, "b", to="+15550199", reason="caller pressed 0")
        bus.publish(events.CALL_ENDED, "b", reason="hangup", turns=1, transferred=True)

        # Call c (inbound): the LLM fails, piper apologises in edge's place, the call fails.
        bus.publish(events.CALL_STARTED, "c", caller="+15550102", direction="inbound")
        await eventually(lambda: active() == 1, "a and b ended, c active")
        bus.publish(events.TRANSCRIPT_FINAL, "c", text="", stt_ms=80, audio_s=0)
        bus.publish(events.CALL_ERROR, "c", kind="llm", message="no first token in 8 s")
        bus.publish(events.TTS_AUDIO, "c", engine="piper", fallback=True, synth_ms=120, audio_s=2)
        bus.publish(events.BOT_SAID, "c", text="I'm sorry", interrupted=False)
        bus.publish(events.CALL_ERROR, "c", kind="transfer", message="gateway down")
        bus.publish(events.CALL_ENDED, "c", reason="llm failed", turns=1)

        # Call d: an outbound dial that never connects.
        bus.publish(events.CALL_DIALING, "d", to="+15550103")
        bus.publish(events.CALL_ERROR, "d", kind="originate", message="NO_ANSWER")
        bus.publish(events.CALL_ENDED, "d", reason="originate failed: NO_ANSWER", turns=0)

        # An end for a call never seen (its start came before this app) must not go negative.
        bus.publish(events.CALL_ENDED, "ghost", reason="hangup", turns=0)
        bus.publish(events.ESL_STATE, "", state="disconnected")
        # Events are handled in order: once the socket reads down, all the above is counted.
        await eventually(lambda: value(metrics, "voiceai_esl_connected") == 0, "esl down")
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
        bus_one.publish(events.CALL_STARTED, "a", direction="inbound")
        bus_one.publish(events.BARGE_IN, "a", at_ms=100)
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


def test_malformed_events_are_skipped_and_the_consumer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        bus = EventBus()
        task = await start(metrics, bus)
        bus.publish(events.TTS_AUDIO, "a", fallback=True, synth_ms=100)  # no engine
        bus.publish(events.TTS_AUDIO, "a", engine="edge", fallback="yes", synth_ms=100)
        bus.publish(events.TTS_AUDIO, "a", engine="edge", fallback=False, synth_ms="fast")
        bus.publish(events.TURN_LATENCY, "a", first_audio=900, transcript="soon")
        bus.publish(events.TURN_LATENCY, "a", playback_started=float("nan"))
        bus.publish(events.TRANSCRIPT_FINAL, "a", text="hi", stt_ms=True, audio_s=1.0)
        bus.publish(events.TRANSCRIPT_FINAL, "a", text="hi", stt_ms=200, audio_s=[1])
        bus.publish(events.ESL_STATE, "", state=5)
        # Lifecycle events with garbled fields still count, so no call stays "active" forever.
        bus.publish(events.CALL_STARTED, "a", direction=42)
        bus.publish(events.CALL_ERROR, "a", kind=None, message=None)
        bus.publish(events.CALL_ENDED, "a", transferred="yes")
        bus.publish(events.BARGE_IN, "b", at_ms=100)  # a good event after the bad ones
        await eventually(lambda: value(metrics, "voiceai_barge_ins_total") == 1, "the barge-in")
        await stop(task)

    with caplog.at_level(logging.WARNING, logger="voiceai.metrics"):
        asyncio.run(scenario())
    skipped = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(skipped) == 8

    got = samples(metrics)

    def at(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    # A rejected event counts nothing, not even its well-formed parts.
    assert at("voiceai_tts_seconds_count", engine="edge") is None
    assert at("voiceai_tts_fallbacks_total", engine="other") is None
    assert at("voiceai_turn_stage_seconds_count", stage="first_audio") == 0
    assert at("voiceai_turn_stage_seconds_count", stage="playback_started") == 0
    assert at("voiceai_turns_total", speaker="caller") == 0
    assert at("voiceai_stt_real_time_factor_count") == 0
    assert at("voiceai_esl_connected") == 0
    assert at("voiceai_active_calls") == 0
    assert at("voiceai_errors_total", kind="other") == 1
    assert at("voiceai_calls_total", direction="other", outcome="completed") == 1


def test_observe_rejects_a_malformed_event() -> None:
    metrics = Metrics()
    bad = Event(type=events.TURN_LATENCY, call_id="a", data={"transcript": "soon"})
    with pytest.raises(TypeError):
        metrics.observe(bad)
    with pytest.raises(KeyError):
        metrics.observe(Event(type=events.TTS_AUDIO, call_id="a", data={"synth_ms": 5}))
    with pytest.raises(ValueError):
        metrics.observe(Event(type=events.ESL_STATE, call_id="", data={"state": "up"}))


def test_a_call_is_forgotten_when_it_ends() -> None:
    metrics = Metrics(max_tracked_calls=2)

    def feed(type_: str, call_id: str, **data: object) -> None:
        metrics.observe(Event(type=type_, call_id=call_id, data=data))

    feed(events.CALL_STARTED, "x", direction="outbound")
    feed(events.CALL_ERROR, "x", kind="stt", message="whisper crashed")
    feed(events.CALL_ENDED, "x")
    # The same id again is a new call: neither outbound nor failed any more.
    feed(events.CALL_STARTED, "x")
    feed(events.CALL_ENDED, "x")
    assert value(metrics, "voiceai_calls_total", direction="outbound", outcome="failed") == 1
    assert value(metrics, "voiceai_calls_total", direction="inbound", outcome="completed") == 1

    # Transferred, then ended by a service shutdown (abort's call.ended has no `transferred`).
    feed(events.CALL_STARTED, "t")
    feed(events.CALL_TRANSFERRED, "t", to="+15550199", reason="caller pressed 0")
    feed(events.CALL_ENDED, "t", reason="service stopped", turns=1)
    assert value(metrics, "voiceai_calls_total", direction="inbound", outcome="transferred") == 1

    # Calls whose end never arrives: only the newest max_tracked_calls are remembered.
    for call_id in ("p", "q", "r"):
        feed(events.CALL_STARTED, call_id)
    assert value(metrics, "voiceai_active_calls") == 2
    feed(events.CALL_STARTED, "r")  # a repeated start is the same call
    assert value(metrics, "voiceai_active_calls") == 2
    for call_id in ("p", "q", "r"):
        feed(events.CALL_ENDED, call_id)
    assert value(metrics, "voiceai_active_calls") == 0
