"""One call's commands to FreeSWITCH, each allowed or refused by the state table first."""

from __future__ import annotations

from voiceai.conversation.states import Effect, Refused, StateMachine
from voiceai.telephony.control import CallControl


class NoLine(Exception):
    """FreeSWITCH's event socket is not there: nothing can be sent."""


class CallLine:
    def __init__(self, call_id: str, control: CallControl | None, machine: StateMachine) -> None:
        self.call_id = call_id
        self._control = control
        self._machine = machine

    @property
    def connected(self) -> bool:
        return self._control is not None and self._control.connected

    def _gate(self, effect: Effect) -> CallControl:
        self._machine.check(effect)
        if self._control is None:
            raise NoLine("FreeSWITCH event socket not configured")
        return self._control

    async def play(self, path: str) -> None:
        await self._gate(Effect.PLAY).play(self.call_id, path)

    async def break_playback(self) -> None:
        await self._gate(Effect.BREAK).break_playback(self.call_id)

    async def transfer(self, number: str) -> None:
        await self._gate(Effect.TRANSFER).transfer(self.call_id, number)

    async def hangup(self, cause: str) -> None:
        await self._gate(Effect.HANGUP).hangup(self.call_id, cause)

    async def cancel_scheduled(self) -> None:
        if self._control is None:
            raise NoLine("FreeSWITCH event socket not configured")
        await self._control.cancel_scheduled(self.call_id)

    async def record(self, path: str) -> None:
        if self._control is None:
            raise NoLine("FreeSWITCH event socket not configured")
        await self._control.record(self.call_id, path)


__all__ = ["CallLine", "NoLine", "Refused"]
