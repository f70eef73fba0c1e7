"""The in-process event bus: calls publish, the store, the live socket and metrics listen."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

# Event types, so producers and consumers agree on one spelling.
CALL_STARTED = "call.started"
CALL_ENDED = "call.ended"
SPEECH_STARTED = "speech.started"
TRANSCRIPT_FINAL = "transcript.final"
FORK_TEXT = "fork.text"
CALL_ERROR = "call.error"
CALL_HANGUP = "call.hangup"
CALL_STATE = "call.state"
CALL_TRANSFERRED = "call.transferred"
REPLY_DELTA = "reply.delta"
BOT_SAID = "bot.said"
BARGE_IN = "barge_in"
TURN_LATENCY = "turn.latency"
DTMF = "dtmf"
TRANSCRIPT_PARTIAL = "transcript.partial"
TTS_AUDIO = "tts.audio"
CALL_MUTED = "call.muted"
CALL_DIALING = "call.dialing"
CALL_RECORDING = "call.recording"
ESL_STATE = "esl.state"
SNAPSHOT = "snapshot"

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


class Event(BaseModel):
    type: str
    call_id: str
    at: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict)


class Subscription:
    """One listener's bounded queue. When it is full the oldest event is dropped, so a slow
    listener never slows a call down."""

    def __init__(self, bus: EventBus, call_id: str | None, maxsize: int) -> None:
        self._bus = bus
        self.call_id = call_id
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0

    def offer(self, event: Event) -> None:
        if self.call_id is not None and event.call_id != self.call_id:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
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

    def publish(self, type_: str, call_id: str, **data: Any) -> Event:
        event = Event(type=type_, call_id=call_id, data=data)
        for sub in list(self._subscriptions):
            sub.offer(event)
        return event
