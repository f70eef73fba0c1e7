"""Prometheus metrics, fed only from the event bus, one registry per app instance."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from voiceai import events
from voiceai.events import Event, EventBus

log = logging.getLogger(__name__)

# The stages a `turn.latency` event may carry; other keys are ignored so the label set is fixed.
STAGES = events.LATENCY_STAGES
# call.error kinds that mean the bot let the caller down (other kinds are reported, not fatal).
FAILING_KINDS = frozenset({"llm", "tts", "stt", "internal", "esl", "originate"})
DIRECTIONS = frozenset({"inbound", "outbound"})
OUTCOMES = ("completed", "transferred", "failed")
ESL_STATES = {"connected": 1, "disconnected": 0, "connecting": 0}

# Turn stages are judged against a 0-5 s budget: fine below 1 s, where replies feel live.
STAGE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
# Whisper real-time factor: well below 1 is healthy, above 1 means turns queue up.
RTF_BUCKETS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
# One sentence of TTS: edge-tts is network-bound, piper/espeak are local and quick.
TTS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

# Calls remembered at most; a call whose end never arrives must not grow memory forever.
MAX_TRACKED_CALLS = 10_000
# Label values taken from event data must stay few and tidy (Prometheus keeps every series).
_LABEL = re.compile(r"[a-z][a-z0-9_-]{0,31}")


@dataclass
class _Call:
    direction: str
    started: bool = False
    failed: bool = False
    transferred: bool = False


class Metrics:
    """The service's Prometheus metrics. Each instance owns its registry: no global state."""

    def __init__(self, *, max_tracked_calls: int = MAX_TRACKED_CALLS) -> None:
        self.registry = CollectorRegistry()
        self._calls: dict[str, _Call] = {}
        self._active = 0
        self._max_tracked = max_tracked_calls
        reg = self.registry
        self.active_calls = Gauge(
            "voiceai_active_calls", "Calls in progress (started, not yet ended).", registry=reg
        )
        self.calls = Counter(
            "voiceai_calls_total",
            "Calls ended, by direction and outcome (completed, transferred, failed).",
            ["direction", "outcome"],
            registry=reg,
        )
        self.turns = Counter(
            "voiceai_turns_total", "Turns, by speaker (caller, bot).", ["speaker"], registry=reg
        )
        self.barge_ins = Counter(
            "voiceai_barge_ins_total", "Times the caller talked over the bot.", registry=reg
        )
        self.turn_stages = Histogram(
            "voiceai_turn_stage_seconds",
            "When each stage of a reply happened, in seconds after the caller's last word.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.stt_rtf = Histogram(
            "voiceai_stt_real_time_factor",
            "Transcription time divided by the audio's duration, per caller turn.",
            buckets=RTF_BUCKETS,
            registry=reg,
        )
        self.tts_fallbacks = Counter(
            "voiceai_tts_fallbacks_total",
            "Sentences spoken by a fallback TTS engine, by the engine that spoke.",
            ["engine"],
            registry=reg,
        )
        self.tts_seconds = Histogram(
            "voiceai_tts_seconds",
            "Time to synthesize one sentence, by the engine that spoke.",
            ["engine"],
            buckets=TTS_BUCKETS,
            registry=reg,
        )
        self.esl_connected = Gauge(
            "voiceai_esl_connected", "1 while FreeSWITCH's event socket is connected.", registry=reg
        )
        self.errors = Counter(
            "voiceai_errors_total", "Call errors, by kind.", ["kind"], registry=reg
        )
        # Fixed label sets are exported at 0 from the start, so rate() sees the first increment.
        for direction in sorted(DIRECTIONS):
            for outcome in OUTCOMES:
                self.calls.labels(direction, outcome)
        for speaker in ("caller", "bot"):
            self.turns.labels(speaker)
        for stage in STAGES:
            self.turn_stages.labels(stage)

    # -- feeding -------------------------------------------------------------------------------

    async def consume(self, bus: EventBus) -> None:
        """Observes every event for the app's lifetime; a malformed event is logged and skipped.

        When cancelled it first observes what is still queued, like the call recorder.
        """
        with bus.subscribe(maxsize=100_000) as sub:
            try:
                while True:
                    self._observe_safely(await sub.get())
            except asyncio.CancelledError:
                while not sub.queue.empty():
                    self._observe_safely(sub.queue.get_nowait())
                raise

    def _observe_safely(self, event: Event) -> None:
        try:
            self.observe(event)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "metrics: skipped malformed %s event (call %r): %s", event.type, event.call_id, exc
            )
        except Exception:
            log.exception("metrics: could not observe %s (call %r)", event.type, event.call_id)

    def observe(self, event: Event) -> None:
        """Updates the metrics for one event; raises ValueError/TypeError/KeyError if malformed.

        A malformed measurement event is rejected whole (nothing of it is counted); call start
        and end are never rejected, so the active-calls gauge cannot get stuck.
        """
        data = event.data
        kind = event.type
        if kind == events.CALL_DIALING:
            self._track(event.call_id).direction = "outbound"
        elif kind == events.CALL_STARTED:
            self._started(event.call_id, _direction(data.get("direction")))
        elif kind == events.CALL_ENDED:
            self._ended(event.call_id, data.get("transferred") is True)
        elif kind == events.CALL_TRANSFERRED:
            if (call := self._calls.get(event.call_id)) is not None:
                call.transferred = True
        elif kind == events.CALL_ERROR:
            label = _label(data.get("kind"))
            self.errors.labels(label).inc()
            if label in FAILING_KINDS and (call := self._calls.get(event.call_id)) is not None:
                call.failed = True
        elif kind == events.TRANSCRIPT_FINAL:
            stt_ms = _optional_number(data, "stt_ms")
            audio_s = _optional_number(data, "audio_s")
            self.turns.labels("caller").inc()
            if stt_ms is not None and audio_s is not None and audio_s > 0:
                self.stt_rtf.observe(max(stt_ms, 0.0) / 1000 / audio_s)
        elif kind == events.BOT_SAID:
            self.turns.labels("bot").inc()
        elif kind == events.BARGE_IN:
            self.barge_ins.inc()
        elif kind == events.TURN_LATENCY:
            stages = {stage: _optional_number(data, stage) for stage in STAGES}
            for stage, ms in stages.items():
                if ms is not None:
                    # The transcript is often ready before the turn officially ends: count as 0.
                    self.turn_stages.labels(stage).observe(max(ms, 0.0) / 1000)
        elif kind == events.TTS_AUDIO:
            engine = data["engine"]
            if not isinstance(engine, str):
                raise TypeError(f"engine={engine!r} is not a string")
            fallback = data.get("fallback", False)
            if not isinstance(fallback, bool):
                raise TypeError(f"fallback={fallback!r} is not a boolean")
            synth_ms = _number(data, "synth_ms")
            engine = _label(engine)
            self.tts_seconds.labels(engine).observe(max(synth_ms, 0.0) / 1000)
            if fallback:
                self.tts_fallbacks.labels(engine).inc()
        elif kind == events.ESL_STATE:
            state = data.get("state")
            if state not in ESL_STATES:
                raise ValueError(f"unknown event socket state {state!r}")
            self.esl_connected.set(ESL_STATES[state])

    def _track(self, call_id: str) -> _Call:
        call = self._calls.get(call_id)
        if call is None:
            if len(self._calls) >= self._max_tracked:
                oldest_id = next(iter(self._calls))
                oldest = self._calls.pop(oldest_id)
                self._active -= oldest.started
                log.warning(
                    "metrics: forgot call %s, never ended (over %d calls tracked)",
                    oldest_id,
                    self._max_tracked,
                )
            call = self._calls[call_id] = _Call(direction="inbound")
        return call

    def _started(self, call_id: str, direction: str | None) -> None:
        call = self._track(call_id)
        if direction is not None:
            call.direction = direction
        if not call.started:  # a repeated call.started is the same call, not a second one
            call.started = True
            self._active += 1
        self.active_calls.set(self._active)

    def _ended(self, call_id: str, transferred: bool) -> None:
        call = self._calls.pop(call_id, None) or _Call(direction="inbound")
        if call.started:
            self._active -= 1
        self.active_calls.set(self._active)
        if transferred or call.transferred:
            outcome = "transferred"
        elif call.failed:
            outcome = "failed"
        else:
            outcome = "completed"
        self.calls.labels(call.direction, outcome).inc()

    # -- exposition ----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus text format, with the content type to serve them with."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _optional_number(data: dict[str, Any], key: str) -> float | None:
    return None if data.get(key) is None else _number(data, key)


def _number(data: dict[str, Any], key: str) -> float:
    value = data[key]
    # bool is an int subclass, but True ms is a producer bug, not a measurement.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{key}={value!r} is not a finite number")
    return float(value)


def _label(value: object) -> str:
    if isinstance(value, str) and _LABEL.fullmatch(value):
        return value
    return "other"


def _direction(value: object) -> str | None:
    """None keeps what call.dialing said (or inbound); unknown words become "other"."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lower() in DIRECTIONS:
        return value.lower()
    return "other"
