"""The one rule that says whether a paused turn is finished: its words and the model's ear."""

from __future__ import annotations

import pytest

from voiceai.audio.turns import Verdict
from voiceai.engines.turn import judge, looks_unfinished

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


def test_a_question_on_a_dangling_preposition_is_left_to_the_silence() -> None:
    # Whisper punctuated the fragment "…move my appointment to" (a pause, then "Thursday") as
    # a question; a real "Where are you calling from?" just waits for the silence rule.
    for language, text in (
        ("en", "Is it possible to move my appointment to?"),
        ("en", "Where are you calling from?"),
        ("ru", "На что?"),
    ):
        assert not looks_unfinished(text, language)
        assert judge(text, language, probability=0.99, threshold=0.5) is Verdict.UNSURE


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
