"""What a call needs from FreeSWITCH, as one small interface, and its event-socket
implementation. The conversation core only sees `CallControl`, so it can be tested with a fake.
"""

from __future__ import annotations

from typing import Protocol

from voiceai.telephony import commands
from voiceai.telephony.esl import EslClient


class CallControl(Protocol):
    """Commands for one call's channel, by its uuid."""

    @property
    def connected(self) -> bool: ...

    async def play(self, uuid: str, path: str) -> None:
        """Queue a file; it plays after those queued before it (PLAYBACK_START/STOP follow)."""
        ...

    async def break_playback(self, uuid: str) -> None:
        """Stop the current file and flush the queue."""
        ...

    async def transfer(self, uuid: str, number: str) -> None: ...

    async def hangup(self, uuid: str, cause: str) -> None: ...

    async def cancel_scheduled(self, uuid: str) -> None:
        """Drop the dialplan's safety net (apology + transfer if the service never answers)."""
        ...

    async def record(self, uuid: str, path: str) -> None: ...


class EslCallControl:
    """CallControl over FreeSWITCH's inbound event socket."""

    def __init__(self, esl: EslClient) -> None:
        self.esl = esl

    @property
    def connected(self) -> bool:
        return self.esl.connected

    async def play(self, uuid: str, path: str) -> None:
        await commands.play(self.esl, uuid, path)

    async def break_playback(self, uuid: str) -> None:
        await commands.break_playback(self.esl, uuid)

    async def transfer(self, uuid: str, number: str) -> None:
        await commands.transfer(self.esl, uuid, number)

    async def hangup(self, uuid: str, cause: str) -> None:
        await commands.hangup(self.esl, uuid, cause)

    async def cancel_scheduled(self, uuid: str) -> None:
        await commands.cancel_scheduled(self.esl, uuid)

    async def record(self, uuid: str, path: str) -> None:
        await commands.record(self.esl, uuid, path)
