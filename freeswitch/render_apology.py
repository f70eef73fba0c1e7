"""Render freeswitch/conf/voiceai/voiceai-unavailable.wav, the apology FreeSWITCH plays when the
service does not take a call (dialplan/voiceai_public.xml), with the service's offline piper
voice. Run it again only to change the words, then commit the WAV:

    HF_HUB_OFFLINE=1 .venv/bin/python freeswitch/render_apology.py
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from voiceai.engines.tts import PiperTTS, write_wav

TEXT = "We're sorry, our assistant can't take your call right now."
RATE = 8000  # the rate of the G.711 calls it is played on: FreeSWITCH need not resample it
TARGET = Path(__file__).resolve().parent / "conf" / "voiceai" / "voiceai-unavailable.wav"


async def render() -> None:
    tts = PiperTTS()
    try:
        audio = await tts.synthesize(TEXT, "en", RATE)
    finally:
        await tts.aclose()
    write_wav(TARGET, audio)
    print(f"{TARGET}: {audio.duration_s:.2f} s, {RATE} Hz, 16-bit mono, {TARGET.stat().st_size} B")


if __name__ == "__main__":
    asyncio.run(render())
