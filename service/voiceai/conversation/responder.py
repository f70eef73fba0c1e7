"""The bot's side of a call: LLM tokens → sentences → TTS → files played over FreeSWITCH.

It speaks when asked and says what was heard; whether it may speak at all is the session's
call (`before_audio` fires the state table's AUDIO_READY and raises Refused if it is refused).
A step that fails raises LLMError or SpeechFailed, saying which step and why; what then reaches
the caller (the apology, a person) is the session's rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from voiceai import events
from voiceai.conversation.playback import PlaybackQueue, Utterance
from voiceai.conversation.sentences import SentenceSplitter
from voiceai.conversation.states import Refused
from voiceai.conversation.timing import TurnTiming
from voiceai.conversation.tools import Handover, ToolRunner
from voiceai.engines.llm import LanguageModel, Message, ToolCall
from voiceai.engines.tts import SpeechSynthesizer, TTSError, speakable, write_wav
from voiceai.events import EventBus
from voiceai.prompts import PromptCache

log = logging.getLogger(__name__)

PLAYBACK_SLACK_S = 5.0  # beyond the queued audio's length, before playback counts as lost


class SpeechFailed(Exception):
    """Words could not reach the caller; `kind` names the step: tts, media, playback, reply."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Reply:
    """What the bot said, and how the call goes on when a tool ended the reply."""

    text: str
    handover: Handover | None = None
    reason: str = ""
    # The model's tool calls and their results, for the history of later turns.
    exchanges: tuple[Message, ...] = ()


@dataclass(frozen=True)
class _Prompt:
    text: str  # a fixed phrase (a tool's filler or apology), from the prompt cache


_Item = str | _Prompt | None  # a sentence, a fixed phrase, or the end of the reply


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
        before_audio: Callable[[], Awaitable[None]],
        tools: ToolRunner | None = None,
        max_tool_rounds: int = 3,
    ) -> None:
        self.call_id = call_id
        self._tools = (
            tools if tools is not None and llm is not None and llm.supports_tools else None
        )
        self._max_tool_rounds = max_tool_rounds
        self._llm = llm
        self._tts = tts
        self._prompts = prompts
        self._playback = playback
        self._bus = bus
        self._rate = rate
        self._media = media
        self._before_audio = before_audio
        self._files = itertools.count(1)

    async def reply(self, messages: list[Message], language: str, timing: TurnTiming) -> Reply:
        """Speak the LLM's reply sentence by sentence as it is written; return its whole text,
        and the handover (transfer, end of call) when a tool asked for one.

        Raises LLMError when the model fails (what was already written is still said first), and
        SpeechFailed when the audio cannot reach FreeSWITCH (the model is stopped at once) or
        when not one sentence could be synthesized.
        """
        sentences: asyncio.Queue[_Item] = asyncio.Queue()
        speaker = asyncio.create_task(self._speak_sentences(sentences, language, timing))
        writer = asyncio.create_task(self._write(messages, language, timing, sentences))
        try:
            await asyncio.wait({writer, speaker}, return_when=asyncio.FIRST_EXCEPTION)
            if speaker.done() and speaker.exception() is not None:
                writer.cancel()  # the audio path is broken: stop generating at once
                await asyncio.gather(writer, return_exceptions=True)
                speaker.result()
            spoken, lost = await speaker  # after a model failure, what was written is said
            full = writer.result()
        except BaseException:
            for task in (writer, speaker):
                task.cancel()
            await asyncio.gather(writer, speaker, return_exceptions=True)
            raise
        if spoken == 0 and lost:
            raise SpeechFailed(
                "reply", f"not one sentence of the reply could be spoken: {lost[-1]}"
            )
        return full

    async def _write(
        self,
        messages: list[Message],
        language: str,
        timing: TurnTiming,
        sentences: asyncio.Queue[_Item],
    ) -> Reply:
        """The LLM's tokens, cut into sentences for the speaker as each completes; between
        rounds, the tools it called, whose results go back to it for the next round."""
        assert self._llm is not None
        splitter = SentenceSplitter(language)
        full = ""
        messages = list(messages)
        exchanges: list[Message] = []

        async def say(text: str) -> None:
            sentences.put_nowait(_Prompt(text))

        try:
            for round_ in itertools.count():
                # The last round offers no tools: the model must answer in words.
                offered = (
                    self._tools.specs() if self._tools and round_ < self._max_tool_rounds else []
                )
                calls: list[ToolCall] = []
                written = ""
                async with contextlib.aclosing(self._llm.stream_reply(messages, offered)) as pieces:
                    async for piece in pieces:  # leaving the block stops generation
                        timing.mark("llm_first_token")
                        if isinstance(piece, ToolCall):
                            calls.append(piece)
                            continue
                        written += piece
                        self._bus.publish(events.ReplyDelta(call_id=self.call_id, text=piece))
                        for sentence in splitter.push(piece):
                            timing.mark("first_sentence")
                            sentences.put_nowait(sentence)
                if rest := splitter.flush():
                    timing.mark("first_sentence")
                    sentences.put_nowait(rest)
                full = f"{full} {written}".strip() if full else written
                if not calls or self._tools is None:
                    return Reply(full, exchanges=tuple(exchanges))
                messages.append(assistant_calling(written, calls))
                exchanges.append(assistant_calling("", calls))  # its words are in the reply
                for call in calls:
                    outcome = await self._tools.run(call, language, say)
                    result = {"role": "tool", "content": outcome.result, "tool_name": call.name}
                    messages.append(result)
                    exchanges.append(result)
                    if outcome.handover is not None:
                        return Reply(full, outcome.handover, outcome.reason, tuple(exchanges))
            raise AssertionError("unreachable")  # itertools.count() never ends
        finally:
            sentences.put_nowait(None)  # the speaker ends after what was written

    async def _speak_sentences(
        self, sentences: asyncio.Queue[_Item], language: str, timing: TurnTiming
    ) -> tuple[int, list[str]]:
        """Each sentence in turn; returns how many were queued and why the others were lost."""
        spoken, lost = 0, []
        while (sentence := await sentences.get()) is not None:
            if isinstance(sentence, _Prompt):
                await self.speak_prompt(sentence.text, language)
                spoken += 1
                continue
            if text := speakable(sentence):
                try:
                    await self.speak(text, language, timing)
                except SpeechFailed as exc:
                    if exc.kind != "tts":
                        raise  # the media folder or FreeSWITCH: the next sentence fails alike
                    # One sentence lost; the next may still be spoken.
                    log.error("call %s: could not speak %r: %s", self.call_id, text[:60], exc)
                    self._bus.publish(
                        events.CallError(call_id=self.call_id, kind="tts", message=str(exc))
                    )
                    lost.append(str(exc))
                    continue
                spoken += 1
        return spoken, lost

    async def speak(self, text: str, language: str, timing: TurnTiming | None = None) -> None:
        """Synthesize `text` and queue it after what is already playing (or SpeechFailed)."""
        assert self._tts is not None
        started = time.perf_counter()
        try:
            audio = await self._tts.synthesize(text, language, self._rate)
        except TTSError as exc:
            raise SpeechFailed("tts", str(exc)) from exc
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
        path = self._media / f"say-{next(self._files)}.wav"
        try:
            self._media.mkdir(parents=True, exist_ok=True)
            write_wav(path, audio)
        except OSError as exc:
            raise SpeechFailed("media", media_problem(path, exc)) from exc
        await self._before_audio()
        await self._play(Utterance(path, text, audio.duration_s))
        if timing is not None:
            timing.mark("play_sent")

    async def speak_prompt(self, text: str, language: str) -> None:
        """A fixed phrase (greeting, apology): synthesized once, shared by every call."""
        if not text or self._prompts is None:
            return
        try:
            prompt = await self._prompts.get(text, language, self._rate)
        except TTSError as exc:
            raise SpeechFailed("tts", str(exc)) from exc
        except OSError as exc:
            raise SpeechFailed("media", media_problem(Path(exc.filename or "?"), exc)) from exc
        await self._before_audio()
        await self._play(Utterance(prompt.path, text, prompt.duration_s, keep_file=True))

    async def _play(self, utterance: Utterance) -> None:
        try:
            await self._playback.play(utterance)
        except Refused:
            raise
        except Exception as exc:  # the event socket: timed out, refused, gone
            message = f"FreeSWITCH did not take {utterance.path.name} to play: {exc}"
            raise SpeechFailed("playback", message) from exc

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


def assistant_calling(text: str, calls: list[ToolCall]) -> Message:
    """The model's own turn that called tools, as Ollama expects it back in the history."""
    return {
        "role": "assistant",
        "content": text,
        "tool_calls": [{"function": {"name": c.name, "arguments": c.arguments}} for c in calls],
    }


def media_problem(path: Path, exc: OSError) -> str:
    """What went wrong writing an audio file, and the setting to check."""
    why = exc.strerror or type(exc).__name__
    return f"could not write {path}: {why} (is VOICEAI_MEDIA_DIR a writable folder?)"
