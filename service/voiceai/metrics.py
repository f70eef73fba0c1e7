"""Prometheus metrics, fed only from the event bus, one registry per app instance."""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voiceai import events
from voiceai.engines.stt_scheduler import Priority, TranscriptionScheduler
from voiceai.events import (
    BargeIn,
    BaseEvent,
    BotSaid,
    CallDialing,
    CallEnded,
    CallError,
    CallStarted,
    CallTransferred,
    EventBus,
    TranscriptFinal,
    TtsAudio,
    TurnLatency,
)
from voiceai.store import CallStore

if TYPE_CHECKING:  # the event sockets themselves are not needed to count
    from voiceai.telephony.switches import Switches

log = logging.getLogger(__name__)

# The stages a `turn.latency` event may carry: the fixed set of `stage` label values.
STAGES = events.LATENCY_STAGES
# call.error kinds that mean the bot let the caller down (other kinds are reported, not fatal).
FAILING_KINDS = frozenset({"llm", "tts", "stt", "internal", "esl", "originate"})
DIRECTIONS = frozenset({"inbound", "outbound"})
OUTCOMES = ("completed", "transferred", "failed")

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
    dialled: bool = False  # placed by us (call.dialing): outbound, whatever call.started says
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
        # Capacity: measured where it happens (the STT scheduler, the fork socket, the loop),
        # since none of it belongs to one call's events.
        self.stt_queue = Gauge(
            "voiceai_stt_queue",
            "Transcriptions waiting for a worker, by priority.",
            ["priority"],
            registry=reg,
        )
        self.stt_wait = Histogram(
            "voiceai_stt_wait_seconds",
            "Time a transcription waited for a worker.",
            ["priority"],
            buckets=STAGE_BUCKETS,
            registry=reg,
        )
        self.partials_dropped = Counter(
            "voiceai_stt_partials_dropped_total",
            "Partial transcriptions dropped unrun (stale, or replaced by a newer one).",
            registry=reg,
        )
        self.calls_refused = Counter(
            "voiceai_calls_refused_total",
            "Forks refused at once, by why (over VOICEAI_MAX_CALLS, ...).",
            ["reason"],
            registry=reg,
        )
        self.loop_lag = Histogram(
            "voiceai_event_loop_lag_seconds",
            "How late the event loop wakes a 0.25 s timer: what every call's work waits behind.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=reg,
        )

    def watch_stt(self, scheduler: TranscriptionScheduler) -> None:
        """Queue depth read at each scrape; waits and drops reported by the scheduler."""
        for priority in Priority:
            self.stt_queue.labels(priority.name.lower()).set_function(
                lambda p=priority: scheduler.waiting(p)
            )
            self.stt_wait.labels(priority.name.lower())
        scheduler.on_wait = lambda p, s: self.stt_wait.labels(p.name.lower()).observe(s)
        scheduler.on_drop = self.partials_dropped.inc

    def watch_store(self, store: CallStore) -> None:
        """The call records' health, read from the store at each scrape."""
        self.registry.register(_StoreCollector(store))

    def watch_switches(self, switches: Switches) -> None:
        """Each FreeSWITCH's event socket, read at each scrape (several: one series a switch)."""
        self.registry.register(_SwitchesCollector(switches))

    async def watch_loop(self, every_s: float = 0.25) -> None:
        """Measures event-loop lag for the app's lifetime."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + every_s
            await asyncio.sleep(every_s)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    # -- feeding -------------------------------------------------------------------------------

    async def consume(self, bus: EventBus) -> None:
        """Observes every event for the app's lifetime; one that fails is logged and skipped.

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

    def _observe_safely(self, event: BaseEvent) -> None:
        if event.remote:
            return  # another replica's call: counted by that replica's metrics
        try:
            self.observe(event)
        except Exception:
            log.exception("metrics: could not observe %s (call %r)", event.type, event.call_id)

    def observe(self, event: BaseEvent) -> None:
        """Updates the metrics for one event. The models guarantee the fields' types; what is
        left to check is that a measurement is finite and that a label value is one of few."""
        match event:
            case CallDialing():
                call = self._track(event.call_id)
                call.direction, call.dialled = "outbound", True
            case CallStarted():
                self._started(event.call_id, _direction(event.direction))
            case CallEnded():
                self._ended(event.call_id, event.transferred)
            case CallTransferred():
                if (call := self._calls.get(event.call_id)) is not None:
                    call.transferred = True
            case CallError():
                label = _label(event.kind)
                self.errors.labels(label).inc()
                if label in FAILING_KINDS and (call := self._calls.get(event.call_id)) is not None:
                    call.failed = True
            case TranscriptFinal():
                self.turns.labels("caller").inc()
                if (rtf := _real_time_factor(event)) is not None:
                    self.stt_rtf.observe(rtf)
            case BotSaid():
                self.turns.labels("bot").inc()
            case BargeIn():
                self.barge_ins.inc()
            case TurnLatency():
                for stage, ms in event.stages.items():
                    # The transcript is often ready before the turn officially ends: count as 0.
                    self.turn_stages.labels(stage).observe(max(ms, 0) / 1000)
            case TtsAudio():
                engine = _label(event.engine)
                self.tts_seconds.labels(engine).observe(max(event.synth_ms, 0) / 1000)
                if event.fallback:
                    self.tts_fallbacks.labels(engine).inc()

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
        if direction is not None and not call.dialled:
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


class _StoreCollector(Collector):
    """The store keeps its own counts (it writes on its own thread); exported as they are."""

    def __init__(self, store: CallStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        health = self._store.health
        yield GaugeMetricFamily(
            "voiceai_store_healthy",
            "1 while call records can be written (the last write or probe worked), else 0.",
            value=float(health.healthy),
        )
        yield GaugeMetricFamily(
            "voiceai_store_events_held",
            "Call events held until the database can be written again.",
            value=health.held_events,
        )
        yield CounterMetricFamily(
            "voiceai_store_write_failures",
            "Writes of call records the database failed (retries and probes included).",
            value=health.write_failures,
        )
        yield CounterMetricFamily(
            "voiceai_store_events_lost",
            "Call events given up on: never recorded (each call's loss is logged once).",
            value=health.lost_events,
        )


class _SwitchesCollector(Collector):
    """voiceai_esl_connected{switch=...}: the sockets know their state; read, not counted."""

    def __init__(self, switches: Switches) -> None:
        self._switches = switches

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "voiceai_esl_connected",
            "1 while the event socket of this FreeSWITCH (its VOICEAI_FREESWITCHES name, or "
            "default) is connected, else 0.",
            labels=["switch"],
        )
        for switch in self._switches:
            family.add_metric([switch.name], float(switch.connected))
        yield family


def _finite(value: float | None) -> float | None:
    """None for a missing or non-finite number (NaN and infinities are valid pydantic floats,
    but would poison a histogram's sum for good)."""
    return value if value is not None and math.isfinite(value) else None


def _real_time_factor(turn: TranscriptFinal) -> float | None:
    """Transcription time over the audio's duration; None when either is unknown or unusable."""
    audio_s = _finite(turn.audio_s)
    if turn.stt_ms is None or audio_s is None or audio_s <= 0:
        return None
    return _finite(max(turn.stt_ms, 0) / 1000 / audio_s)  # a denormal audio_s gives inf


def _label(value: str) -> str:
    """`value` as a label if it is a tidy word, else "other" (free text must not make series)."""
    return value if _LABEL.fullmatch(value) else "other"


def _direction(value: str) -> str | None:
    """None (empty) keeps what the call was (inbound by default); unknown words are "other"."""
    if not value:
        return None
    return value.lower() if value.lower() in DIRECTIONS else "other"
