"""Has the caller finished? Judged at a short pause from how the turn sounds (the Smart Turn v3
model) and from what it says (the early transcript's last words).

Smart Turn is right on most real speech but calls a synthetic voice's half sentence finished
(its prosody always falls at the end), so words like "for", "and", "the", "и", "у меня" at the
end of the transcript overrule it: such a turn is not finished, whatever the model says.
"""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from voiceai.audio.turns import Verdict
from voiceai.audio.vad import onnx_session, package_file

log = logging.getLogger(__name__)

SMART_TURN_FILES = (("pipecat", "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"),)
MODEL_RATE = 16000
MODEL_SECONDS = 8  # the model reads the last 8 s of the turn, zero-padded in front
CHECK_TIMEOUT_S = 1.0  # a late answer is worth nothing: the silence fallback ends the turn
# Whisper's probability for the last two words below which the last may be invented: "a table
# for" + line noise → "a table for it." (0.56-0.73). Such a turn waits as unfinished if it is
# unfinished without that word, else the plain silence rule ends it (never at once). Measured on
# the real clips at 8 kHz: 1/22 finished sentences fall below it clean, 4/21 in pink noise at
# 15 dB, most in babble (which is why they are not all held as unfinished).
SURE_ENDING = 0.75
# Over babble tiny.en doubts most endings it gets right (0.59-0.75 measured on finished real
# sentences at 15 dB): there, a whole sentence is ended at once unless its ending is under this.
SURE_ENDING_IN_BABBLE = 0.5
GUESSED_ENDING = 0.3  # below this Whisper is guessing ("neural network" 0.05, "Thank you." 0.21)

# A turn ending in one of these is unfinished: articles, prepositions, conjunctions, possessives
# and hesitations that (almost) never end a finished sentence. Words that can ("Yes, I can.",
# "I think so.", "I called her.", "Это я.") are left out: a missed pause costs one speculative
# reply; a wrong "unfinished" costs the caller a long wait. Lower case; multi-word entries match
# the end of the turn.
UNFINISHED = {
    "en": {
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "because",
        "if",
        "whether",
        "than",
        "to",
        "for",
        "of",
        "in",
        "on",
        "at",
        "by",
        "with",
        "from",
        "about",
        "into",
        "my",
        "your",
        "our",
        "their",
        "um",
        "uh",
        "er",
        "erm",
        "hmm",
    },
    "ru": {
        "и",
        "а",
        "но",
        "или",
        "что",
        "чтобы",
        "если",
        "когда",
        "потому",
        "в",
        "во",
        "на",
        "с",
        "со",
        "к",
        "ко",
        "по",
        "для",
        "за",
        "у",
        "от",
        "до",
        "из",
        "о",
        "об",
        "про",
        "без",
        "при",
        "мой",
        "моя",
        "моё",
        "мои",
        "не",
        "ну",
        "э",
        "эм",
        "у меня",
        "у нас",
        "потому что",
        "так как",
        "то есть",
    },
}
_WORDS = re.compile(r"[\w']+", re.UNICODE)


class TurnCompletion(Protocol):
    """How likely a turn that just paused is finished, from its sound."""

    name: str

    async def complete_probability(self, audio: np.ndarray) -> float:
        """`audio`: float32 mono at 16 kHz, the turn so far; 0..1."""
        ...


def ends_on_a_function_word(text: str, language: str | None) -> bool:
    """The last word (or two) is one of UNFINISHED's, whatever the punctuation."""
    words = [w.lower() for w in _WORDS.findall(text)]
    if not words:
        return False
    endings = UNFINISHED["ru"] if language == "ru" else UNFINISHED["en"]
    return words[-1] in endings or " ".join(words[-2:]) in endings


def looks_unfinished(text: str, language: str | None) -> bool:
    """The transcript ends mid-sentence: a trailing comma, dash or one of UNFINISHED's words
    (unless Whisper heard a question or an exclamation)."""
    stripped = text.strip()
    if stripped.endswith(("?", "!")):
        return False
    if stripped.endswith((",", "-", "—", "…", "...")):
        return True
    return ends_on_a_function_word(stripped, language)


def without_last_word(text: str) -> str:
    """The text up to its last word (punctuation after that word dropped with it)."""
    words = list(_WORDS.finditer(text))
    return text[: words[-1].start()].rstrip() if words else text


def judge(
    text: str | None,
    language: str | None,
    probability: float | None,
    threshold: float,
    tail_confidence: float = 1.0,
    babble: bool = False,  # other voices behind the caller (TurnDetector.babble_behind)
) -> Verdict:
    """The one rule that combines what the turn says with how it sounds."""
    if text is None:
        return Verdict.UNSURE  # nothing understood (noise?): let the silence decide
    if looks_unfinished(text, language):
        return Verdict.INCOMPLETE
    if tail_confidence < GUESSED_ENDING or (
        tail_confidence < SURE_ENDING and looks_unfinished(without_last_word(text), language)
    ):
        # Whisper may have invented the last word ("a table for" + line noise → "a table for
        # it."): without it, the turn ends mid-sentence; or it hardly heard the ending at all.
        return Verdict.INCOMPLETE
    if ends_on_a_function_word(text, language):
        # "Is it possible to move my appointment to?" was a fragment Whisper punctuated as a
        # question; "Where are you calling from?" is a whole one. The words cannot tell them
        # apart, and Smart Turn hears both as finished questions (measured): the silence rule
        # decides, unless the ear says unfinished.
        unfinished = probability is not None and probability < threshold
        return Verdict.INCOMPLETE if unfinished else Verdict.UNSURE
    if tail_confidence < (SURE_ENDING_IN_BABBLE if babble else SURE_ENDING):
        # Whole without its doubtful last word, but that word may be a mishearing of the
        # caller's next one ("…near the" heard as "…near that?"): not ended at once.
        return Verdict.UNSURE
    if probability is None or probability >= threshold:
        return Verdict.COMPLETE
    return Verdict.UNSURE


def worth_a_listen(verdict: Verdict, text: str | None, language: str | None = None) -> bool:
    """Whether the turn model can still change the verdict: a finished-looking statement, or
    a question on a dangling function word (a question Whisper punctuated is otherwise
    finished; unfinished words win anyway)."""
    if text is None:
        return False
    if verdict is Verdict.UNSURE:
        return ends_on_a_function_word(text, language)
    return verdict is Verdict.COMPLETE and not text.rstrip().endswith("?")


class SmartTurn:
    """Smart Turn v3.2 (Daily's ONNX end-of-turn model, BSD-2, shipped in the pipecat-ai wheel)
    on Whisper log-mel features (faster-whisper's extractor computes the same ones)."""

    name = "smart-turn-v3.2"

    def __init__(self, path: Path | None = None) -> None:
        from faster_whisper.feature_extractor import FeatureExtractor

        path = path or package_file(SMART_TURN_FILES)
        if path is None:
            raise FileNotFoundError(
                "Smart Turn model not found: install it with `pip install --no-deps "
                "pipecat-ai==1.14.0`, or set VOICEAI_TURN_MODEL=off"
            )
        self.path = path
        self._session = onnx_session(path)
        self._features = FeatureExtractor(feature_size=80, chunk_length=MODEL_SECONDS)
        # One check at a time, off the event loop; a queue of stale checks is pointless.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="smart-turn")

    def _run(self, audio: np.ndarray) -> float:
        size = MODEL_RATE * MODEL_SECONDS
        audio = audio[-size:].astype(np.float32)
        audio = np.pad(audio, (size - len(audio), 0))
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        features = self._features(audio, padding=0)[None, :, : size // 160].astype(np.float32)
        (probability,) = self._session.run(None, {"input_features": features})
        return float(probability[0][0])

    async def complete_probability(self, audio: np.ndarray) -> float:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            loop.run_in_executor(self._thread, self._run, audio), CHECK_TIMEOUT_S
        )

    def close(self) -> None:
        self._thread.shutdown(wait=False)
