"""The one rule that says whether a paused turn is finished: its words and the model's ear."""

from __future__ import annotations

import pytest

from voiceai.audio.turns import Verdict
from voiceai.engines.turn import judge, looks_unfinished, worth_a_listen

UNFINISHED = [
    ("en", "I would like to book a table for"),
    ("en", "My name is John and"),
    ("en", "Could you tell me whether the"),
    ("en", "I need to change my"),
    ("en", "I'm calling about,"),
    ("en", "So I was wondering if um"),
    ("en", "I want to talk to"),
    ("ru", "Я хотел бы записаться на"),
    ("ru", "Меня зовут Иван и"),
    ("ru", "Дело в том, что у меня"),
    ("ru", "Я звоню, потому что"),
]
FINISHED = [
    ("en", "I would like to book a table for four people."),
    ("en", "Yes, I can."),
    ("en", "I think so."),
    ("en", "Thank you, goodbye."),
    ("ru", "Это я."),
    ("ru", "Запишите меня на завтра."),
]


@pytest.mark.parametrize(("language", "text"), UNFINISHED, ids=[t for _, t in UNFINISHED])
def test_a_turn_ending_mid_sentence_is_unfinished_whatever_the_model_hears(
    language: str, text: str
) -> None:
    assert looks_unfinished(text, language)
    assert judge(text, language, probability=0.99, threshold=0.5) is Verdict.INCOMPLETE


@pytest.mark.parametrize(("language", "text"), FINISHED, ids=[t for _, t in FINISHED])
def test_a_finished_sentence_ends_the_turn_when_the_model_agrees(language: str, text: str) -> None:
    assert not looks_unfinished(text, language)
    assert judge(text, language, probability=0.8, threshold=0.5) is Verdict.COMPLETE


DANGLING_QUESTIONS = [
    # Whisper punctuated the fragment "…move my appointment to" (a pause, then "Thursday") as
    # a question; "Where are you calling from?" is a whole one. Only the ear tells them apart.
    ("en", "Is it possible to move my appointment to?"),
    ("en", "Where are you calling from?"),
    ("ru", "На что?"),
]


@pytest.mark.parametrize(("language", "text"), DANGLING_QUESTIONS)
def test_a_question_on_a_dangling_function_word_waits_longer_when_the_ear_says_unfinished(
    language: str, text: str
) -> None:
    assert not looks_unfinished(text, language)
    assert worth_a_listen(judge(text, language, None, 0.5), text, language)
    assert judge(text, language, probability=0.1, threshold=0.5) is Verdict.INCOMPLETE
    # Never ended at once on the ear's word: it hears the fragment as a finished question too.
    assert judge(text, language, probability=0.99, threshold=0.5) is Verdict.UNSURE
    assert judge(text, language, probability=None, threshold=0.5) is Verdict.UNSURE


def test_a_whole_question_is_not_worth_the_models_time() -> None:
    verdict = judge("What time do you open?", "en", None, 0.5)
    assert verdict is Verdict.COMPLETE and not worth_a_listen(verdict, "What time do you open?")


def test_finished_words_that_do_not_sound_finished_leave_it_to_the_silence() -> None:
    assert judge("I'd like a table", "en", probability=0.2, threshold=0.5) is Verdict.UNSURE


def test_without_a_turn_model_the_words_alone_decide() -> None:
    assert judge("I'd like a table", "en", probability=None, threshold=0.5) is Verdict.COMPLETE
    assert judge("I'd like a table for", "en", None, 0.5) is Verdict.INCOMPLETE


def test_a_pause_nobody_understood_is_left_to_the_silence() -> None:
    assert judge(None, "en", probability=0.99, threshold=0.5) is Verdict.UNSURE


def test_russian_rules_do_not_leak_into_english() -> None:
    assert not looks_unfinished("I said и", "en")
    assert looks_unfinished("Я сказал и", "ru")


def test_an_ending_whisper_may_have_invented_waits_like_an_unfinished_turn() -> None:
    # On a noisy line tiny.en heard "a table for" + noise as "a table for it." (p("it") low).
    verdict = judge("I'd like a table for it.", "en", 0.97, 0.5, tail_confidence=0.3)
    assert verdict is Verdict.INCOMPLETE
    assert judge("I'd like a table for it.", "en", 0.97, 0.5, tail_confidence=0.9) is (
        Verdict.COMPLETE
    )


@pytest.mark.parametrize(
    "text",
    ["Is the garage door open?", "She had your dark suit in greasy wash water all year."],
)
def test_an_unsure_ending_of_a_whole_sentence_is_left_to_the_silence_rule(text: str) -> None:
    # In babble, tiny.en is unsure of most finished sentences' last words (0.46-0.72 measured):
    # without the last word they do not end mid-sentence, so they do not wait as unfinished;
    # but that word may be a mishearing of the caller's next one, so they do not end at once.
    assert judge(text, "en", 0.9, 0.5, tail_confidence=0.5) is Verdict.UNSURE
    assert judge(text, "en", 0.2, 0.5, tail_confidence=0.5) is Verdict.UNSURE
    assert judge(text, "en", 0.9, 0.5, tail_confidence=0.9) is Verdict.COMPLETE
    # Over babble tiny.en doubts most endings it gets right: only a weaker one is doubted there.
    assert judge(text, "en", 0.9, 0.5, tail_confidence=0.6, babble=True) is Verdict.COMPLETE
    assert judge(text, "en", 0.9, 0.5, tail_confidence=0.4, babble=True) is Verdict.UNSURE
    # An ending it hardly heard (babble turned into "Thank you.") still waits.
    assert judge(text, "en", 0.9, 0.5, tail_confidence=0.2) is Verdict.INCOMPLETE


def test_an_invented_ending_still_waits_over_babble() -> None:
    verdict = judge("I'd like a table for it.", "en", 0.97, 0.5, tail_confidence=0.6, babble=True)
    assert verdict is Verdict.INCOMPLETE
