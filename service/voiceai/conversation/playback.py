"""What the bot is saying in one call: files queued on FreeSWITCH, confirmed by its PLAYBACK
events (see docs/design.md, "Measured on FreeSWITCH 1.10.12")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from voiceai.conversation.dialog import heard_part
from voiceai.conversation.line import CallLine

log = logging.getLogger(__name__)

DEFAULT_CODEC_RATE = 8000  # PCMU/PCMA; offsets in PLAYBACK_STOP count channel-rate samples


@dataclass
class Utterance:
    path: Path
    text: str
    duration_s: float
    keep_file: bool = False  # cached prompts (the greeting) outlive the call
    started: bool = False
    finished: bool = False
    heard_fraction: float = 0.0

    @property
    def heard(self) -> str:
        return heard_part(self.text, self.heard_fraction) if self.started else ""


class PlaybackQueue:
    """Sentences play in the order queued (sendmsg playback with event-lock).

    FreeSWITCH's PLAYBACK_START/STOP events are the only proof the caller heard anything. A
    file is deleted once FreeSWITCH is done with it (its PLAYBACK_STOP, or the break that
    flushed it), never while it may still be playing; the call's end removes the rest.
    """

    def __init__(self, line: CallLine) -> None:
        self._line = line
        self._items: list[Utterance] = []
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    async def play(self, utterance: Utterance) -> None:
        self._items.append(utterance)
        self._idle.clear()
        try:
            await self._line.play(str(utterance.path))
        except BaseException:
            self._items.remove(utterance)
            self._update_idle()
            raise

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def on_start(self, path: str) -> bool:
        """FreeSWITCH started a file; True if it is one of ours."""
        item = self._find(path, started=False)
        if item is not None:
            item.started = True
        return item is not None

    def on_stop(self, path: str, status: str, offset_samples: int, codec_rate: int) -> None:
        item = self._find(path, finished=False)
        if item is None:
            return
        item.started = True
        item.finished = True
        if status == "break" and item.duration_s > 0:
            item.heard_fraction = offset_samples / codec_rate / item.duration_s
        else:
            item.heard_fraction = 1.0
        _remove_file(item)
        if status == "break":
            # `uuid_break all` flushes the queue; the flushed files get no events.
            for rest in self._items:
                if not rest.finished:
                    rest.finished = True
                    _remove_file(rest)
        self._update_idle()

    async def interrupt(self) -> None:
        """Stop the bot now: `uuid_break all` ends the current file and flushes the rest."""
        if not self.busy:
            return
        try:
            await self._line.break_playback()
        except Exception as exc:
            log.warning("call %s: could not break playback: %s", self._line.call_id, exc)
            self.give_up()

    def remaining_s(self) -> float:
        """Audio queued and not yet finished, in seconds (an upper bound on the wait)."""
        return sum(item.duration_s for item in self._items if not item.finished)

    def take_heard(self) -> str:
        """What the caller heard since the last call, and forget those utterances."""
        heard = " ".join(t for t in (item.heard for item in self._items) if t).strip()
        self._items = [item for item in self._items if not item.finished]
        return heard

    def give_up(self) -> None:
        """No more events will confirm what is queued (event socket lost, FreeSWITCH silent).

        Waiters are released; the files stay, since FreeSWITCH may still be playing them.
        """
        for item in self._items:
            item.finished = True
        self._update_idle()

    def _find(self, path: str, **state: bool) -> Utterance | None:
        for item in self._items:
            if str(item.path) == path and all(getattr(item, k) == v for k, v in state.items()):
                return item
        return None

    def _update_idle(self) -> None:
        if all(item.finished for item in self._items):
            self._idle.set()


def _remove_file(item: Utterance) -> None:
    if not item.keep_file:
        with contextlib.suppress(OSError):
            item.path.unlink()
