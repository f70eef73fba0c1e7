"""A whole phone call, emulated: the FreeSWITCH emulator rings the service and a caller talks.

The service under test sees what it sees in production: an ESL client connection to
"FreeSWITCH" and a mod_audio_fork websocket per call. The caller waits for the bot to finish
before speaking again, like a polite person, unless told to talk over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from voiceai import events
from voiceai.sim.fork_client import compact_json
from voiceai.sim.freeswitch import Channel, EslServer

FORK_BUG = "voiceai"
TAKE_TIMEOUT_S = 10.0  # the dialplan's deadline for the service to take the call


@dataclass
class CallLog:
    """Everything the service published about one call."""

    call_id: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    def texts(self, type_: str) -> list[str]:
        return [e["data"]["text"] for e in self.of(type_)]


class PhoneCall:
    """One emulated call between a scripted caller and the service."""

    def __init__(
        self,
        switch: EslServer,
        service_ws: str,
        *,
        rate: int = 8000,
        call_id: str | None = None,
        token: str | None = None,
        caller: str = "+15550100",
        caller_name: str = "Caller",
        did: str = "15550199",  # the number dialled, digits only as the dialplan sends it
        switchname: str | None = None,  # FS_SWITCHNAME, as the dialplan puts it in the metadata
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.switch = switch
        self.service_ws = service_ws.rstrip("/")
        self.rate = rate
        self.call_id = call_id or str(uuidlib.uuid4())
        self.token = token
        self.caller = caller
        self.caller_name = caller_name
        self.did = did
        self.switchname = switchname
        self.log = CallLog(self.call_id)
        self.channel: Channel | None = None
        self._on_event = on_event
        self._live: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> PhoneCall:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._live = await connect(
            f"{self.service_ws}/ws/live?call={self.call_id}", additional_headers=headers
        )
        self._reader = asyncio.create_task(self._read_events())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.channel is not None and not self.channel.hung_up:
            await self.switch.hangup(self.call_id)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._live is not None:
            await self._live.close()

    async def dial(self) -> None:
        """What the public dialplan does: answer, fork the caller's audio to the service, park."""
        self.channel = self.switch.add_channel(
            uuid=self.call_id, caller_id_number=self.caller, caller_id_name=self.caller_name
        )
        await self.switch.answer(self.call_id)
        self.switch.schedule_transfer(self.channel, TAKE_TIMEOUT_S, "voiceai_unavailable")
        metadata = {
            "callId": self.call_id,
            "caller": self.caller,
            "did": self.did,
            "direction": "inbound",
            "rate": f"{self.rate // 1000}k",
        }
        if self.switchname is not None:
            metadata["switch"] = self.switchname
        self.switch.start_fork(
            self.channel,
            f"{self.service_ws}/fork/{self.call_id}",
            mix="mono",
            rate=self.rate,
            bugname=FORK_BUG,
            metadata=compact_json(metadata),
        )

    def say(self, samples: np.ndarray) -> None:
        """The caller speaks now (int16 at the call rate)."""
        assert self.channel is not None
        self.channel.caller_audio += samples.astype("<i2").tobytes()

    def press(self, digit: str) -> None:
        self.switch.press_dtmf(self.call_id, digit)

    async def hangup(self) -> None:
        await self.switch.hangup(self.call_id)

    async def wait_for(self, predicate: Callable[[CallLog], bool], limit_s: float = 60.0) -> None:
        async with asyncio.timeout(limit_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self.log))

    async def wait_event(self, type_: str, count: int = 1, limit_s: float = 60.0) -> dict[str, Any]:
        await self.wait_for(lambda log: len(log.of(type_)) >= count, limit_s)
        return self.log.of(type_)[count - 1]

    async def wait_state(self, state: str, limit_s: float = 60.0) -> None:
        """Until the call has been in `state` (listening, thinking, speaking...)."""
        await self.wait_for(
            lambda log: any(e["data"]["state"] == state for e in log.of(events.CALL_STATE)),
            limit_s,
        )

    async def wait_bot_done(self, limit_s: float = 60.0) -> None:
        """Until the bot has finished what it was saying (or never started)."""
        await self.wait_for(_bot_idle, limit_s)

    async def converse(
        self, utterances: Sequence[np.ndarray], *, reply_limit_s: float = 60
    ) -> None:
        """Say each utterance once the bot is quiet; after the last, wait for its answer."""
        for utterance in utterances:
            await self.wait_bot_done(reply_limit_s)
            answered = len(self.log.of(events.BOT_SAID))
            heard = len(self.log.of(events.TRANSCRIPT_FINAL))
            self.say(utterance)
            await self.wait_for(
                lambda log, n=heard: len(log.of(events.TRANSCRIPT_FINAL)) > n, reply_limit_s
            )
            if self.speaks:
                await self.wait_for(
                    lambda log, n=answered: len(log.of(events.BOT_SAID)) > n, reply_limit_s
                )

    @property
    def speaks(self) -> bool:
        """False when the service reported it cannot speak (no ESL, no engines)."""
        errors = self.log.of(events.CALL_ERROR)
        return not any(e["data"].get("kind") == "cannot_speak" for e in errors)

    async def end(self, limit_s: float = 60.0) -> None:
        await self.hangup()
        await self.wait_event(events.CALL_ENDED, limit_s=limit_s)

    def write_wav(self, path: Path) -> Path:
        return self.switch.write_call_wav(self.call_id, path)

    async def _read_events(self) -> None:
        assert self._live is not None
        async for raw in self._live:
            event = json.loads(raw)
            self.log.events.append(event)
            if self._on_event is not None:
                self._on_event(event)
            async with self._changed:
                self._changed.notify_all()


def _bot_idle(log: CallLog) -> bool:
    """The bot is quiet: the call has started and its last published state is not talking."""
    started = log.of(events.CALL_STARTED)
    if not started:
        return False
    states = log.of(events.CALL_STATE)
    state = states[-1]["data"]["state"] if states else started[0]["data"].get("state")
    return state not in ("thinking", "speaking")
