"""Fixed phrases (greeting, apology) synthesized once per voice and rate, kept on disk."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from pathlib import Path

from voiceai.engines.tts import SpeechSynthesizer, write_wav


@dataclass(frozen=True)
class Prompt:
    path: Path
    text: str
    duration_s: float
    engine: str


class PromptCache:
    """Concurrent calls asking for the same phrase share one synthesis."""

    def __init__(self, tts: SpeechSynthesizer, folder: Path) -> None:
        self._tts = tts
        self._folder = folder
        self._prompts: dict[str, asyncio.Task[Prompt]] = {}

    async def get(self, text: str, language: str, rate: int) -> Prompt:
        key = hashlib.sha256(f"{language}|{rate}|{text}".encode()).hexdigest()[:16]
        task = self._prompts.get(key)
        if task is None or (task.done() and not _usable(task)):
            task = asyncio.create_task(self._make(key, text, language, rate))
            self._prompts[key] = task
        return await asyncio.shield(task)

    async def _make(self, key: str, text: str, language: str, rate: int) -> Prompt:
        audio = await self._tts.synthesize(text, language, rate)
        self._folder.mkdir(parents=True, exist_ok=True)
        path = write_wav(self._folder / f"prompt-{key}.wav", audio)
        return Prompt(path, text, audio.duration_s, audio.engine)


def _usable(made: asyncio.Task[Prompt]) -> bool:
    """A finished synthesis whose file is still there (the media folder may have been emptied)."""
    if made.cancelled() or made.exception() is not None:
        return False
    return made.result().path.exists()
