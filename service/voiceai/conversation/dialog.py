"""The conversation of one call as the LLM sees it, and what of a sentence the caller heard."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Dialog:
    system_prompt: str
    language: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def caller_said(self, text: str) -> None:
        # Consecutive caller turns (the caller went on after a pause) are one message.
        if self.history and self.history[-1]["role"] == "user":
            self.history[-1]["content"] += " " + text
        else:
            self.history.append({"role": "user", "content": text})

    def tools_used(self, exchanges: Iterable[dict[str, Any]]) -> None:
        """The model's tool calls and their results, so later turns know what they said."""
        self.history.extend(dict(m) for m in exchanges)

    def bot_said(self, text: str) -> None:
        if text:
            self.history.append({"role": "assistant", "content": text})

    def messages(self) -> list[dict[str, Any]]:
        prompt = self.system_prompt
        if self.language == "ru":
            prompt += " The caller speaks Russian: answer in Russian."
        return [{"role": "system", "content": prompt}, *self.history]


def heard_part(sentence: str, fraction: float) -> str:
    """The words of `sentence` the caller heard when playback stopped `fraction` of the way in."""
    if fraction >= 0.98:
        return sentence
    words = sentence.split()
    kept = words[: int(len(words) * max(0.0, fraction))]
    return " ".join(kept) + "…" if kept else ""
