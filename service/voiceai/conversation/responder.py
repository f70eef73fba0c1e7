"""The bot's side of a call: LLM tokens → sentences → TTS → files played over FreeSWITCH.

It speaks when asked and says what was heard; whether it may speak at all is the session's
call (`before_audio` fires the state table's AUDIO_READY and raises Refused if it is refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

from voiceai import events
from voiceai.conversation.playback import PlaybackQueue, Utterance
from voiceai.conversation.sentences import SentenceSplitter
from voiceai.conversation.timing import TurnTiming
from voiceai.engines.llm import LanguageModel, LLMError
from voiceai.engines.tts import SpeechSynthesizer, TTSError, speakable, write_wav
from voiceai.events import EventBus
from voiceai.prompts import PromptCache

log = logging.getLogger(__name__)

PLAYBACK_SLACK_S = 5.0  # beyond the queued audio's length, before playback counts as lost


class Responder:
    def __init__(
        self,
        call_id: str,
        *,
        llm: LanguageModel | None,
        tts: SpeechSynthesizer | None,
        prompts: PromptCache | None,
        playback: PlaybackQueue,
        bus: EventBus,
        rate: int,
        media: Path,
        before_audio: Callable[[], None],
    ) -> None:
        self.call_id = call_id
        self._llm = llm
        self._tts = tts
        self._prompts = prompts
        self._playback = playback
        self._bus = bus
        self._rate = rate
        self._media = media
        self._before_audio = before_audio
        self._files = itertools.count(1)

    async def reply(self, messages: list[dict[str, str]], language: str, timing: TurnTiming) -> str:
        """Speak the LLM's reply sentence by sentence as it is written; return its whole text.

        Raises LLMError when the model fails (what was already queued still plays).
        """
        assert self._llm is not None
        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_sentences(sentences, language, timing))
        splitter = SentenceSplitter(language)
        full = ""
        try:
            async with contextlib.aclosing(self._llm.stream_reply(messages)) as pieces:
                async for piece in pieces:  # leaving the block stops generation
                    timing.mark("llm_first_token")
                    full += piece
                    self._bus.publish(events.ReplyDelta(call_id=self.call_id, text=piece))
                    for sentence in splitter.push(piece):
                        timing.mark("first_sentence")
                        sentences.put_nowait(sentence)
            if rest := splitter.flush():
                timing.mark("first_sentence")
                sentences.put_nowait(rest)
        except LLMError:
            sentences.put_nowait(None)
            await speaker  # what was written before the failure is still said
            raise
        except BaseException:
            speaker.cancel()
            await asyncio.gather(speaker, return_exceptions=True)
            raise
        sentences.put_nowait(None)
        await speaker
        return full

    async def _speak_sentences(
        self, sentences: asyncio.Queue[str | None], language: str, timing: TurnTiming
    ) -> None:
        while (sentence := await sentences.get()) is not None:
            if text := speakable(sentence):
                try:
                    await self.speak(text, language, timing)
                except TTSError as exc:  # one sentence lost; the next may still be spoken
                    log.error("call %s: could not speak %r: %s", self.call_id, text[:60], exc)
                    self._bus.publish(
                        events.CallError(call_id=self.call_id, kind="tts", message=str(exc))
                    )

    async def speak(self, text: str, language: str, timing: TurnTiming | None = None) -> None:
        """Synthesize `text` and queue it after what is already playing."""
        assert self._tts is not None
        started = time.perf_counter()
        audio = await self._tts.synthesize(text, language, self._rate)
        self._bus.publish(
            events.TtsAudio(
                call_id=self.call_id,
                engine=audio.engine,
                fallback=audio.fallback,
                synth_ms=round((time.perf_counter() - started) * 1000),
                audio_s=round(audio.duration_s, 3),
            )
        )
        if timing is not None:
            timing.mark("first_audio")
        self._media.mkdir(parents=True, exist_ok=True)
        path = write_wav(self._media / f"say-{next(self._files)}.wav", audio)
        self._before_audio()
        await self._playback.play(Utterance(path, text, audio.duration_s))
        if timing is not None:
            timing.mark("play_sent")

    async def speak_prompt(self, text: str, language: str) -> None:
        """A fixed phrase (greeting, apology): synthesized once, shared by every call."""
        if not text or self._prompts is None:
            return
        prompt = await self._prompts.get(text, language, self._rate)
        self._before_audio()
        await self._playback.play(Utterance(prompt.path, text, prompt.duration_s, keep_file=True))

    async def wait_played(self) -> None:
        """Until FreeSWITCH has played everything queued; never longer than it could take."""
        limit = self._playback.remaining_s() + PLAYBACK_SLACK_S
        try:
            await asyncio.wait_for(self._playback.wait_idle(), limit)
        except TimeoutError:
            # FreeSWITCH sends no PLAYBACK events for a file it cannot open.
            message = (
                f"FreeSWITCH did not play the reply within {limit:.0f} s; is "
                "VOICEAI_MEDIA_DIR the same folder (same path) for FreeSWITCH and the service?"
            )
            log.error("call %s: %s", self.call_id, message)
            self._bus.publish(
                events.CallError(call_id=self.call_id, kind="playback", message=message)
            )
            self._playback.give_up()
