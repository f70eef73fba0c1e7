"""What a call says: the LLM's prompt and history, and sentences cut from its token stream."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A sentence ends at . ! ? … (or CJK 。！？) followed by space; digits like "3.5" don't end one.
_SENTENCE_END = re.compile(r"(?<!\d[.,])(?<=[.!?…。！？])[\"')\]]*\s+")
MIN_SENTENCE_CHARS = 12  # shorter pieces ("Hi.") wait for the next one: fewer, fuller TTS calls
MAX_SENTENCE_CHARS = 220  # no end in sight: cut at a comma or space so speech starts early


class SentenceSplitter:
    """Cuts an LLM's streamed text into sentences as soon as each is complete."""

    def __init__(self) -> None:
        self._buffer = ""

    def push(self, piece: str) -> list[str]:
        self._buffer += piece
        sentences: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            sentence, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if sentence:
                sentences.append(sentence)
        return sentences

    def flush(self) -> str | None:
        rest, self._buffer = self._buffer.strip(), ""
        return rest or None

    def _next_cut(self) -> int | None:
        for match in _SENTENCE_END.finditer(self._buffer):
            if match.end() >= MIN_SENTENCE_CHARS:
                return match.end()
        if len(self._buffer) > MAX_SENTENCE_CHARS:
            head = self._buffer[:MAX_SENTENCE_CHARS]
            cut = max(head.rfind(", "), head.rfind("; "), head.rfind(" "))
            return cut + 1 if cut > 0 else MAX_SENTENCE_CHARS
        return None


@dataclass
class Dialog:
    """The conversation of one call as the LLM sees it."""

    system_prompt: str
    language: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def caller_said(self, text: str) -> None:
        # Consecutive caller turns (the caller went on after a pause) are one message.
        if self.history and self.history[-1]["role"] == "user":
            self.history[-1]["content"] += " " + text
        else:
            self.history.append({"role": "user", "content": text})

    def bot_said(self, text: str) -> None:
        if text:
            self.history.append({"role": "assistant", "content": text})

    def messages(self) -> list[dict[str, str]]:
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
