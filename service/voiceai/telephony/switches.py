"""Every FreeSWITCH this replica serves: one event socket (and its call control) each, known by
the name the fork metadata gives a call (the switch's switchname, VOICEAI_FREESWITCHES)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from voiceai.telephony.control import EslCallControl
from voiceai.telephony.esl import EslClient

log = logging.getLogger(__name__)

MAX_WARNED = 100  # unknown names remembered (warned once each); a fork client cannot grow it


@dataclass
class Switch:
    """One FreeSWITCH: its event socket and the commands a call on it is given."""

    name: str
    esl: EslClient
    control: EslCallControl = field(init=False)

    def __post_init__(self) -> None:
        self.control = EslCallControl(self.esl)

    @property
    def connected(self) -> bool:
        return self.esl.connected

    @property
    def state(self) -> str:
        return self.esl.state


class Switches:
    """The switches by name, the first one the default, and which calls are on which."""

    def __init__(self, switches: Sequence[Switch] = ()) -> None:
        self._by_name = {s.name: s for s in switches}
        self._calls: dict[str, Switch] = {}  # calls in progress, by id
        self._warned: set[str | None] = set()

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Switch]:
        return iter(self._by_name.values())

    @property
    def default(self) -> Switch | None:
        """The first switch configured: calls that name no switch (or an unknown one) go there."""
        return next(iter(self._by_name.values()), None)

    def named(self, name: str) -> Switch | None:
        return self._by_name.get(name)

    def get(self, name: str | None) -> Switch | None:
        """The switch a call is on: the one named, else the default (with one warning a name
        when there are several, for then the call's commands may go to the wrong switch)."""
        switch = self._by_name.get(name) if name is not None else None
        if switch is not None or len(self._by_name) < 2:
            return switch or self.default
        if name not in self._warned and len(self._warned) < MAX_WARNED:
            self._warned.add(name)
            what = f"names FreeSWITCH {name!r}, not one of" if name else "names no FreeSWITCH of"
            log.warning(
                "a call's fork metadata %s VOICEAI_FREESWITCHES (%s): such calls are given to %s",
                what,
                ", ".join(self._by_name),
                self.default.name if self.default else "none",
            )
        return self.default

    @property
    def connected(self) -> bool:
        """Any switch up: a replica serves the calls of the switches it reaches."""
        return any(s.connected for s in self)

    def summary(self) -> str:
        """One word for them all: disabled, or connected/disconnected, or degraded (some up)."""
        if not self._by_name:
            return "disabled"
        states = {s.state for s in self}
        if len(states) == 1:
            return states.pop()
        return "degraded" if self.connected else "disconnected"

    def last_error(self) -> str | None:
        """Why sockets are down (each named when there are several), None when none says."""
        errors = [(s.name, s.esl.last_error) for s in self if s.esl.last_error]
        if len(self._by_name) < 2:
            return errors[0][1] if errors else None
        return "; ".join(f"{name}: {error}" for name, error in errors) or None

    def states(self) -> dict[str, dict[str, str | None]]:
        return {s.name: {"state": s.state, "error": s.esl.last_error} for s in self}

    # calls

    def attach(self, call_id: str, switch: Switch) -> None:
        self._calls[call_id] = switch

    def detach(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def serving(self, call_id: str) -> Switch | None:
        """The switch a call in progress is on."""
        return self._calls.get(call_id)

    def calls_on(self, switch: Switch) -> list[str]:
        return [call_id for call_id, on in self._calls.items() if on is switch]

    # lifecycle

    async def start(self) -> None:
        await asyncio.gather(*(s.esl.start() for s in self))

    async def stop(self) -> None:
        await asyncio.gather(*(s.esl.stop() for s in self), return_exceptions=True)
