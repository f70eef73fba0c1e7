"""A call's conversation states, what moves between them, and what each state lets reach
FreeSWITCH: the one table every action of a call goes through.

Nothing else changes a call's state. A trigger that the table does not list for the current
state is refused and logged, never applied; a side effect (play, break, transfer, hang up)
the current state does not allow never reaches FreeSWITCH.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


class State(enum.StrEnum):
    LISTENING = "listening"  # the caller has the floor
    THINKING = "thinking"  # a reply is being written and synthesized; nothing plays yet
    SPEAKING = "speaking"  # the bot's audio is queued or playing
    TRANSFERRED = "transferred"  # bridged to a person: the bot stays quiet for good
    ENDED = "ended"


class Trigger(enum.StrEnum):
    GREET = "greet"  # the call is taken: say hello
    TURN_COMPLETE = "turn_complete"  # the caller finished a turn that gets an answer
    AUDIO_READY = "audio_ready"  # a reply's audio is about to be played
    REPLY_DONE = "reply_done"  # everything queued has played (or there was nothing to play)
    RESUMED = "resumed"  # the caller speaks again before any reply audio went out
    BARGE_IN = "barge_in"  # the caller talks over the bot
    SILENCE = "silence"  # the bot is stopped without a barge-in (mute, lost event socket)
    SAY = "say"  # an operator's words replace whatever the bot was doing
    APOLOGISE = "apologise"  # an engine failed: the apology is spoken before handing over
    TRANSFER = "transfer"  # to a person (operator, DTMF, failure)
    TRANSFER_FAILED = "transfer_failed"  # FreeSWITCH refused: the bot has the call again
    HANGUP = "hangup"  # FreeSWITCH hung up, or the caller's audio ended


class Effect(enum.StrEnum):
    """Commands that change what the caller hears or where the call goes."""

    PLAY = "play"
    BREAK = "break"
    TRANSFER = "transfer"
    HANGUP = "hangup"


L, T, S, X, E = State.LISTENING, State.THINKING, State.SPEAKING, State.TRANSFERRED, State.ENDED

# (from state) → {trigger: to state}. Anything not listed is refused.
TRANSITIONS: dict[State, dict[Trigger, State]] = {
    L: {
        Trigger.GREET: S,
        Trigger.TURN_COMPLETE: T,
        Trigger.SAY: S,
        Trigger.APOLOGISE: S,
        Trigger.REPLY_DONE: L,
        Trigger.SILENCE: L,
        Trigger.TRANSFER: X,
        Trigger.HANGUP: E,
    },
    T: {
        Trigger.AUDIO_READY: S,
        Trigger.REPLY_DONE: L,
        Trigger.RESUMED: L,
        Trigger.BARGE_IN: L,
        Trigger.SILENCE: L,
        Trigger.SAY: S,
        Trigger.APOLOGISE: S,
        Trigger.TRANSFER: X,
        Trigger.HANGUP: E,
    },
    S: {
        Trigger.AUDIO_READY: S,
        Trigger.REPLY_DONE: L,
        Trigger.BARGE_IN: L,
        Trigger.SILENCE: L,
        Trigger.SAY: S,
        Trigger.APOLOGISE: S,
        Trigger.TRANSFER: X,
        Trigger.HANGUP: E,
    },
    X: {
        Trigger.TRANSFER_FAILED: L,
        Trigger.HANGUP: E,
    },
    E: {},
}

# In which states each effect may reach FreeSWITCH.
ALLOWED: dict[Effect, frozenset[State]] = {
    Effect.PLAY: frozenset({T, S}),  # only a reply, a greeting or an operator's words, never after
    Effect.BREAK: frozenset({L, T, S, X}),  # stopping audio is always safe on a live call
    Effect.TRANSFER: frozenset({X}),  # the TRANSFER trigger comes first: nothing plays meanwhile
    Effect.HANGUP: frozenset({L, T, S, X}),
}


class Refused(Exception):
    """The call's state does not allow this (already logged)."""


class StateMachine:
    """The one holder of a call's state; every change goes through `fire`."""

    def __init__(
        self, call_id: str, on_change: Callable[[State, State, Trigger], None] | None = None
    ) -> None:
        self.call_id = call_id
        self._state = L
        self._on_change = on_change

    @property
    def state(self) -> State:
        return self._state

    def can(self, trigger: Trigger) -> bool:
        return trigger in TRANSITIONS[self._state]

    def fire(self, trigger: Trigger) -> bool:
        """Apply `trigger`; False (and a log line) if the current state does not allow it."""
        target = TRANSITIONS[self._state].get(trigger)
        if target is None:
            log.info("call %s: %s refused while %s", self.call_id, trigger, self._state)
            return False
        previous, self._state = self._state, target
        if target is not previous and self._on_change is not None:
            self._on_change(previous, target, trigger)
        return True

    def allows(self, effect: Effect) -> bool:
        return self._state in ALLOWED[effect]

    def check(self, effect: Effect) -> None:
        """Raise Refused (after a log line) if `effect` may not reach FreeSWITCH now."""
        if not self.allows(effect):
            log.info("call %s: %s refused while %s", self.call_id, effect, self._state)
            raise Refused(f"{effect} refused while the call is {self._state}")


def table_markdown() -> str:
    """The transition and effect tables as Markdown (README, "Conversation states")."""
    triggers = [t for t in Trigger if any(t in moves for moves in TRANSITIONS.values())]
    head = "| state | " + " | ".join(f"`{t}`" for t in triggers) + " |"
    rows = [head, "|---" * (len(triggers) + 1) + "|"]
    for state in State:
        cells = [f"→ {TRANSITIONS[state][t]}" if t in TRANSITIONS[state] else "" for t in triggers]
        rows.append(f"| **{state}** | " + " | ".join(cells) + " |")
    effects = ["", "| effect | allowed while |", "|---|---|"]
    for effect, states in ALLOWED.items():
        effects.append(f"| `{effect}` | " + ", ".join(s for s in State if s in states) + " |")
    return "\n".join(rows + effects) + "\n"


if __name__ == "__main__":
    print(table_markdown(), end="")
