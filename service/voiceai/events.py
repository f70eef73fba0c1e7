"""The in-process event bus and its typed events: calls publish, the store, /ws/live and the
metrics listen.

One pydantic model per event type. Producers build the model; consumers match on its class. On
the wire (`/ws/live`) every event is `{"type", "call_id", "at", "data"}`, `data` holding the
model's own fields: `Event.wire()` / `parse_event()` convert, and docs/events.md is generated
from these models (`python -m voiceai.events`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import types
from collections.abc import AsyncIterator, Collection
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter

log = logging.getLogger(__name__)

# The stages of a reply, in order, as `turn.latency` and `bot.said` timings name them
# (milliseconds after the caller's last word).
LATENCY_STAGES = (
    "end_of_turn",
    "transcript",
    "llm_first_token",
    "first_sentence",
    "first_audio",
    "play_sent",
    "playback_started",
)


class BaseEvent(BaseModel):
    """What every event carries: which call (empty for service-wide events) and when."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ENVELOPE: ClassVar[frozenset[str]] = frozenset({"type", "call_id", "at"})

    type: str
    call_id: str = ""
    at: float = Field(default_factory=time.time, description="Unix time, seconds")
    # The replica an event came from when another published it (cluster.py); not on the wire.
    _replica: str | None = PrivateAttr(default=None)

    @property
    def remote(self) -> bool:
        """Published by another replica: shown to viewers, never recorded or counted here."""
        return self._replica is not None

    @property
    def replica(self) -> str | None:
        return self._replica

    def from_replica(self, replica: str) -> Self:
        """Marks the event as another replica's, before it is published here."""
        self._replica = replica
        return self

    @property
    def data(self) -> dict[str, Any]:
        """The event's own fields, as `data` on the wire."""
        return self.model_dump(mode="json", exclude=self.ENVELOPE)

    def wire(self) -> dict[str, Any]:
        return {"type": self.type, "call_id": self.call_id, "at": self.at, "data": self.data}

    @cached_property
    def wire_text(self) -> str:
        """The wire form as JSON text, made once however many viewers are sent it."""
        return _WIRE.dump_json(self.wire()).decode()

    def wire_json(self) -> str:
        return self.wire_text


_WIRE: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


class CallDialing(BaseEvent):
    """An outbound call is being placed (POST /api/calls)."""

    type: Literal["call.dialing"] = "call.dialing"
    to: str


class CallStarted(BaseEvent):
    """The fork connected: the call is live and the bot has it."""

    type: Literal["call.started"] = "call.started"
    caller: str | None = None
    caller_name: str | None = None
    callee: str | None = None
    direction: str = "inbound"
    language: str | None = None
    sample_rate: int = 16000
    channels: int = 1
    metadata: dict[str, Any] = Field(default_factory=dict, description="fork metadata kept as-is")
    state: str = "listening"
    engines: dict[str, str] = Field(
        default_factory=dict, description="engine names in use: stt, llm, tts"
    )


class CallState(BaseEvent):
    """The conversation moved from one state to another (see conversation/states.py)."""

    type: Literal["call.state"] = "call.state"
    state: str
    previous: str | None = None
    trigger: str | None = None


class SpeechStarted(BaseEvent):
    type: Literal["speech.started"] = "speech.started"
    at_ms: int = Field(description="position in the call's audio")


class TranscriptPartial(BaseEvent):
    """What the caller has said so far in a turn still going on."""

    type: Literal["transcript.partial"] = "transcript.partial"
    text: str
    start_ms: int


class TranscriptFinal(BaseEvent):
    """A whole caller turn."""

    type: Literal["transcript.final"] = "transcript.final"
    text: str
    language: str | None = None
    start_ms: int
    end_ms: int
    stt_ms: int | None = None
    audio_s: float | None = None
    end_reason: str | None = None
    backchannel: bool = Field(False, description="said over the bot; kept, not answered")


class ForkText(BaseEvent):
    """A TEXT frame from mod_audio_fork after the metadata."""

    type: Literal["fork.text"] = "fork.text"
    text: str


class CallError(BaseEvent):
    type: Literal["call.error"] = "call.error"
    kind: str = Field(
        description="stt, llm, tts, media, playback, reply, apology, transfer, esl, greeting, "
        "recording, tool, …"
    )
    message: str


class CallHangup(BaseEvent):
    """FreeSWITCH reported the hang-up (CHANNEL_HANGUP_COMPLETE)."""

    type: Literal["call.hangup"] = "call.hangup"
    cause: str | None = None


class CallTransferred(BaseEvent):
    type: Literal["call.transferred"] = "call.transferred"
    to: str
    reason: str


class ToolCalled(BaseEvent):
    """The model used a tool during a reply: what it asked, what came back, how long it took."""

    type: Literal["tool.called"] = "tool.called"
    name: str
    arguments: dict[str, Any]
    result: str = Field(description="what the model was told: the answer, or why it failed")
    ok: bool
    duration_ms: int


class MessageTaken(BaseEvent):
    """A message for the business, taken by the `take_message` tool (listed by /api/messages)."""

    type: Literal["message.taken"] = "message.taken"
    name: str
    callback_number: str
    message: str


class ReplyDelta(BaseEvent):
    """A piece of the bot's reply as the LLM writes it."""

    type: Literal["reply.delta"] = "reply.delta"
    text: str


class BotSaid(BaseEvent):
    """A reply ended: what the caller heard of it."""

    type: Literal["bot.said"] = "bot.said"
    text: str = Field(description="what the caller heard")
    reply: str = Field("", description="what the LLM wrote")
    interrupted: bool = False
    timings: dict[str, int] = Field(default_factory=dict, description="ms after the last word")


class BargeIn(BaseEvent):
    type: Literal["barge_in"] = "barge_in"
    at_ms: int
    state: str


class TurnLatency(BaseEvent):
    """Each stage of one reply, in ms after the caller's last word (absent: not reached)."""

    type: Literal["turn.latency"] = "turn.latency"
    end_of_turn: int | None = None
    transcript: int | None = None
    llm_first_token: int | None = None
    first_sentence: int | None = None
    first_audio: int | None = None
    play_sent: int | None = None
    playback_started: int | None = None

    @property
    def stages(self) -> dict[str, int]:
        return {s: v for s in LATENCY_STAGES if (v := getattr(self, s)) is not None}


class Dtmf(BaseEvent):
    type: Literal["dtmf"] = "dtmf"
    digit: str


class TtsAudio(BaseEvent):
    """One sentence synthesized."""

    type: Literal["tts.audio"] = "tts.audio"
    engine: str
    fallback: bool = False
    synth_ms: int
    audio_s: float


class CallMuted(BaseEvent):
    type: Literal["call.muted"] = "call.muted"
    muted: bool


class CallRecording(BaseEvent):
    type: Literal["call.recording"] = "call.recording"
    path: str


class CallEnded(BaseEvent):
    type: Literal["call.ended"] = "call.ended"
    reason: str
    turns: int = 0
    hangup_cause: str | None = None
    transferred: bool = False


class EslState(BaseEvent):
    """FreeSWITCH's event socket connected or disconnected (service-wide: call_id is "")."""

    type: Literal["esl.state"] = "esl.state"
    state: Literal["connected", "disconnected", "connecting"]


class Snapshot(BaseEvent):
    """First message on /ws/live: the calls in progress, whole."""

    type: Literal["snapshot"] = "snapshot"
    calls: list[dict[str, Any]] = Field(default_factory=list)


EVENT_TYPES: tuple[type[BaseEvent], ...] = (
    CallDialing,
    CallStarted,
    CallState,
    SpeechStarted,
    TranscriptPartial,
    TranscriptFinal,
    ForkText,
    CallError,
    CallHangup,
    CallTransferred,
    ToolCalled,
    MessageTaken,
    ReplyDelta,
    BotSaid,
    BargeIn,
    TurnLatency,
    Dtmf,
    TtsAudio,
    CallMuted,
    CallRecording,
    CallEnded,
    EslState,
    Snapshot,
)

Event = Annotated[
    CallDialing
    | CallStarted
    | CallState
    | SpeechStarted
    | TranscriptPartial
    | TranscriptFinal
    | ForkText
    | CallError
    | CallHangup
    | CallTransferred
    | ToolCalled
    | MessageTaken
    | ReplyDelta
    | BotSaid
    | BargeIn
    | TurnLatency
    | Dtmf
    | TtsAudio
    | CallMuted
    | CallRecording
    | CallEnded
    | EslState
    | Snapshot,
    Field(discriminator="type"),
]
_EVENT: TypeAdapter[Event] = TypeAdapter(Event)


def type_of(model: type[BaseEvent]) -> str:
    return model.model_fields["type"].default


# The wire names, for code that reads /ws/live JSON (tests, the viewer's docs).
CALL_DIALING = type_of(CallDialing)
CALL_STARTED = type_of(CallStarted)
CALL_STATE = type_of(CallState)
SPEECH_STARTED = type_of(SpeechStarted)
TRANSCRIPT_PARTIAL = type_of(TranscriptPartial)
TRANSCRIPT_FINAL = type_of(TranscriptFinal)
FORK_TEXT = type_of(ForkText)
CALL_ERROR = type_of(CallError)
CALL_HANGUP = type_of(CallHangup)
CALL_TRANSFERRED = type_of(CallTransferred)
TOOL_CALLED = type_of(ToolCalled)
MESSAGE_TAKEN = type_of(MessageTaken)
REPLY_DELTA = type_of(ReplyDelta)
BOT_SAID = type_of(BotSaid)
BARGE_IN = type_of(BargeIn)
TURN_LATENCY = type_of(TurnLatency)
DTMF = type_of(Dtmf)
TTS_AUDIO = type_of(TtsAudio)
CALL_MUTED = type_of(CallMuted)
CALL_RECORDING = type_of(CallRecording)
CALL_ENDED = type_of(CallEnded)
ESL_STATE = type_of(EslState)
SNAPSHOT = type_of(Snapshot)


def parse_event(wire: dict[str, Any]) -> BaseEvent:
    """The model of one wire-format event; raises pydantic.ValidationError if malformed."""
    flat = {
        **(wire.get("data") or {}),
        **{k: wire[k] for k in ("type", "call_id", "at") if k in wire},
    }
    return _EVENT.validate_python(flat)


class Subscription:
    """One listener's bounded queue. When it is full the oldest event is dropped, so a slow
    listener never slows a call down."""

    def __init__(self, bus: EventBus, call_id: str | None, maxsize: int) -> None:
        self._bus = bus
        self.call_id = call_id
        self.queue: asyncio.Queue[BaseEvent] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0

    def offer(self, event: BaseEvent) -> None:
        if self.call_id is not None and event.call_id != self.call_id:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> BaseEvent:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[BaseEvent]:
        while True:
            yield await self.queue.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def subscribe(self, *, call_id: str | None = None, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, call_id, maxsize)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def publish(self, event: BaseEvent) -> BaseEvent:
        for sub in list(self._subscriptions):
            sub.offer(event)
        return event


# -- reference documentation ---------------------------------------------------------------------


def reference_markdown() -> str:
    """docs/events.md: every event type with its fields, generated from the models above."""
    lines = [
        "# Events",
        "",
        "<!-- Generated from service/voiceai/events.py by "
        "`python -m voiceai.events > docs/events.md`; do not edit by hand. -->",
        "",
        "Calls publish these events on the service's event bus; the call records, the metrics",
        "and `/ws/live` read them. On `/ws/live` each event is one JSON text message:",
        "",
        "```json",
        '{"type": "bot.said", "call_id": "…", "at": 1718000000.25, "data": {"text": "…"}}',
        "```",
        "",
        *_field_table(BaseEvent, BaseEvent.ENVELOPE, _ENVELOPE_NOTES),
        "| `data` | `dict[str, any]` | the event's own fields, below | `{}` |",
        "",
        "`data` holds the event's own fields, listed below per type. A field whose default is",
        "given may be absent when an event is read back; `null` means no value.",
        "",
        "With several replicas on one PostgreSQL (README, 'Running several replicas'),",
        "`/ws/live` on any replica carries the events of every replica's calls, in this same",
        "form; an event too large to cross (over about 7,900 bytes) arrives with its long texts",
        "cut (ending in `…`) and its large maps and lists emptied.",
    ]
    for model in EVENT_TYPES:
        lines += ["", f"## `{type_of(model)}`", ""]
        if model.__doc__:
            lines += [inspect.cleandoc(model.__doc__), ""]
        fields = [name for name in model.model_fields if name not in BaseEvent.ENVELOPE]
        lines += _field_table(model, fields) if fields else ["No data fields."]
    return "\n".join(lines) + "\n"


_ENVELOPE_NOTES = {
    "type": "which event: one of the headings below",
    "call_id": "the call; empty for service-wide events",
}


def _field_table(
    model: type[BaseModel], names: Collection[str], notes: dict[str, str] | None = None
) -> list[str]:
    rows = ["| Field | Type | Description | Default |", "| --- | --- | --- | --- |"]
    for name in (n for n in model.model_fields if n in names):
        field = model.model_fields[name]
        if field.is_required():
            default = "required"
        elif field.default_factory is time.time:
            default = "when published"
        else:
            default = f"`{json.dumps(field.get_default(call_default_factory=True))}`"
        kind = f"`{_type_name(field.annotation)}`"
        note = field.description or (notes or {}).get(name, "")
        cells = [f"`{name}`", kind, note, default]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return rows


def _type_name(annotation: Any) -> str:
    """A field's type, short: `str | null`, `dict[str, any]`, `"connected" | "disconnected"`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(arg) for arg in args)}]"
    return getattr(annotation, "__name__", str(annotation))


if __name__ == "__main__":
    print(reference_markdown(), end="")
