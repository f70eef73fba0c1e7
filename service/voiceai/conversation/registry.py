"""The calls in progress, by id, and FreeSWITCH's events delivered to the call they name."""

from __future__ import annotations

from voiceai.conversation.playback import DEFAULT_CODEC_RATE
from voiceai.conversation.session import CallSession
from voiceai.telephony.esl import EslEvent


class CallRegistry:
    """One fork stream a call; a fork holds its place from the moment it is admitted."""

    def __init__(self) -> None:
        self._calls: dict[str, CallSession] = {}
        self._admitted: set[str] = set()  # forks accepted, their call not made yet

    def __contains__(self, call_id: str) -> bool:
        return call_id in self._calls or call_id in self._admitted

    def __len__(self) -> int:
        return len(self._calls) + len(self._admitted)

    def admit(self, call_id: str, limit: int) -> str | None:
        """Hold a place for a new fork, at once (no await between check and hold); why not."""
        if call_id in self:
            return "the call is already streaming"
        if len(self) >= limit:
            return f"over capacity ({limit} calls)"
        self._admitted.add(call_id)
        return None

    def add(self, call: CallSession) -> None:
        self._admitted.discard(call.call_id)
        self._calls[call.call_id] = call

    def remove(self, call_id: str) -> None:
        self._admitted.discard(call_id)
        self._calls.pop(call_id, None)

    def get(self, call_id: str) -> CallSession | None:
        return self._calls.get(call_id)

    def all(self) -> list[CallSession]:
        return list(self._calls.values())

    def connection_lost(self) -> None:
        """FreeSWITCH's event socket dropped: no call will hear of its playback any more."""
        for call in self.all():
            call.on_esl_lost()

    def deliver(self, event: EslEvent) -> bool:
        """Hand an event to the call whose uuid the JSON body names; False if none is ours.

        Routed by the body's Unique-ID only: caller data (a caller ID name) cannot forge it.
        """
        call = self._calls.get(event.uuid or "")
        if call is None:
            return False
        headers = event.headers
        if event.name == "PLAYBACK_START":
            call.on_playback_started(headers.get("Playback-File-Path", ""))
        elif event.name == "PLAYBACK_STOP":
            call.on_playback_stopped(
                headers.get("Playback-File-Path", ""),
                headers.get("Playback-Status", "done"),
                _int(headers.get("variable_playback_last_offset_pos")),
                _int(headers.get("Channel-Read-Codec-Rate")) or DEFAULT_CODEC_RATE,
            )
        elif event.name == "DTMF":
            call.on_dtmf(headers.get("DTMF-Digit", ""))
        elif event.name == "CHANNEL_HANGUP_COMPLETE":
            call.on_hangup(headers.get("Hangup-Cause", "NORMAL_CLEARING"))
        return True


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
