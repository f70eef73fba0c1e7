"""The streaming sentence splitter: each reply → the sentences TTS gets, however it was streamed."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest

from voiceai.conversation.sentences import (
    MAX_SENTENCE_CHARS,
    MIN_SENTENCE_CHARS,
    SentenceSplitter,
)


def _words(prefix: str, first: int, last: int) -> str:
    """ "w000 w001 …": 4-char words, so lengths and cut points are easy to count."""
    return " ".join(f"{prefix}{i:03d}" for i in range(first, last))


# (id, language, reply text, expected sentences)
CASES: list[tuple[str, str, str, list[str]]] = [
    # --- plain ends: . ! ? … ... ?!
    (
        "period_then_capital_ends_a_sentence",
        "en",
        "The kitchen opens at noon. The bar opens at five.",
        ["The kitchen opens at noon.", "The bar opens at five."],
    ),
    (
        "question_and_exclamation_end_sentences",
        "en",
        "Can I help you with anything else? Have a great evening!",
        ["Can I help you with anything else?", "Have a great evening!"],
    ),
    (
        "interrobang_run_is_one_end",
        "en",
        "You booked it already?! That is wonderful news.",
        ["You booked it already?!", "That is wonderful news."],
    ),
    (
        "ellipsis_char_then_capital_ends_a_sentence",
        "en",
        "Let me think about that… Yes, we have a table.",
        ["Let me think about that…", "Yes, we have a table."],
    ),
    (
        "three_dots_then_capital_end_a_sentence",
        "en",
        "Let me check that for you... Yes, we have one left.",
        ["Let me check that for you...", "Yes, we have one left."],
    ),
    (
        "ellipsis_then_lowercase_is_no_end",
        "en",
        "I was thinking… maybe we could meet on Friday. Would that work?",
        ["I was thinking… maybe we could meet on Friday.", "Would that work?"],
    ),
    (
        "period_then_lowercase_is_no_end",
        "en",
        "The file is on the server. it is not ready yet. Sorry about that.",
        ["The file is on the server. it is not ready yet.", "Sorry about that."],
    ),
    (
        "period_without_space_is_no_end",
        "en",
        "Visit example.com for details. It is free.",
        ["Visit example.com for details.", "It is free."],
    ),
    (
        "closing_quote_stays_with_its_sentence",
        "en",
        'He said "See you soon." Then he left the building.',
        ['He said "See you soon."', "Then he left the building."],
    ),
    (
        "closing_bracket_stays_with_its_sentence",
        "en",
        "We are open daily (except Mondays!) Book online any time.",
        ["We are open daily (except Mondays!)", "Book online any time."],
    ),
    (
        "period_after_closing_quote_ends_a_sentence",
        "en",
        'She called it "the best pizza in town". I agree with her.',
        ['She called it "the best pizza in town".', "I agree with her."],
    ),
    (
        "text_without_an_end_comes_from_flush",
        "en",
        "Sure thing",
        ["Sure thing"],
    ),
    (
        "trailing_whitespace_is_stripped",
        "en",
        "  All set for tonight.\n\n",
        ["All set for tonight."],
    ),
    # --- English abbreviations
    (
        "title_dr_is_no_end",
        "en",
        "Please call Dr. Smith tomorrow morning. She is expecting you.",
        ["Please call Dr. Smith tomorrow morning.", "She is expecting you."],
    ),
    (
        "titles_mr_mrs_ms_prof_are_no_end",
        "en",
        "Mr. and Mrs. Brown will meet Ms. Green and Prof. Black at noon. Thanks.",
        ["Mr. and Mrs. Brown will meet Ms. Green and Prof. Black at noon.", "Thanks."],
    ),
    (
        "titles_st_jr_are_no_end",
        "en",
        "Our clinic is on St. Mark's Place, next to the Martin Luther King Jr. Library. "
        "Parking is free.",
        [
            "Our clinic is on St. Mark's Place, next to the Martin Luther King Jr. Library.",
            "Parking is free.",
        ],
    ),
    (
        "title_sr_is_no_end",
        "en",
        "You will speak with John Smith Sr. Himself, not his son. He is the owner.",
        ["You will speak with John Smith Sr. Himself, not his son.", "He is the owner."],
    ),
    (
        "versus_is_no_end",
        "en",
        "It is the Lakers vs. Celtics game tonight. Tickets are sold out.",
        ["It is the Lakers vs. Celtics game tonight.", "Tickets are sold out."],
    ),
    (
        "eg_before_capital_is_no_end",
        "en",
        "You can pay by card, e.g. Visa or Mastercard. Cash works too.",
        ["You can pay by card, e.g. Visa or Mastercard.", "Cash works too."],
    ),
    (
        "ie_before_capital_is_no_end",
        "en",
        "We close early on holidays, i.e. Christmas and New Year. Sorry about that.",
        ["We close early on holidays, i.e. Christmas and New Year.", "Sorry about that."],
    ),
    (
        "etc_before_capital_ends_a_sentence",
        "en",
        "We have pasta, pizza, salads, etc. The desserts are homemade.",
        ["We have pasta, pizza, salads, etc.", "The desserts are homemade."],
    ),
    (
        "etc_before_lowercase_is_no_end",
        "en",
        "We have pasta, pizza, etc. and a few desserts too. Enjoy!",
        ["We have pasta, pizza, etc. and a few desserts too.", "Enjoy!"],
    ),
    (
        "etc_before_comma_is_no_end",
        "en",
        "Bring towels, sunscreen, etc., because the pool is outdoors. See you.",
        ["Bring towels, sunscreen, etc., because the pool is outdoors.", "See you."],
    ),
    (
        "pm_before_capital_ends_a_sentence",
        "en",
        "Your table is booked for 7 p.m. See you tonight!",
        ["Your table is booked for 7 p.m.", "See you tonight!"],
    ),
    (
        "am_before_lowercase_is_no_end",
        "en",
        "The meeting is at 10 a.m. tomorrow in room five. Please be on time.",
        ["The meeting is at 10 a.m. tomorrow in room five.", "Please be on time."],
    ),
    (
        "capital_am_before_capital_ends_a_sentence",
        "en",
        "We open at 9 A.M. Every day except Sunday.",
        ["We open at 9 A.M.", "Every day except Sunday."],
    ),
    (
        "initials_are_no_end",
        "en",
        "My favourite author is J. R. R. Tolkien. His books are long.",
        ["My favourite author is J. R. R. Tolkien.", "His books are long."],
    ),
    (
        "title_then_initial_are_no_end",
        "en",
        "Your appointment is with Mr. J. Smith on Monday. He is very kind.",
        ["Your appointment is with Mr. J. Smith on Monday.", "He is very kind."],
    ),
    (
        "pronoun_i_then_capital_ends_a_sentence",
        "en",
        "Nobody knows that better than I. Let me check the calendar.",
        ["Nobody knows that better than I.", "Let me check the calendar."],
    ),
    (
        "acronyms_before_lowercase_are_no_end",
        "en",
        "Our U.S. office opens at nine. The U.K. office opens at ten.",
        ["Our U.S. office opens at nine.", "The U.K. office opens at ten."],
    ),
    (
        "acronym_before_capital_is_kept_together",  # a missed cut is cheaper than a wrong one
        "en",
        "She served at a U.S. Army base for years. I live in the U.S. The weather is nice.",
        ["She served at a U.S. Army base for years.", "I live in the U.S. The weather is nice."],
    ),
    (
        "list_numbers_after_a_colon_are_no_end",
        "en",
        "Here are the steps: 1. Open the app. 2. Tap Settings. 3. Choose your language.",
        ["Here are the steps: 1. Open the app.", "2. Tap Settings.", "3. Choose your language."],
    ),
    (
        "list_number_at_reply_start_is_no_end",
        "en",
        "1. Open the app and sign in. 2. Tap the booking tab.",
        ["1. Open the app and sign in.", "2. Tap the booking tab."],
    ),
    (
        "list_numbers_at_line_start_are_no_end",
        "en",
        "You will need the following:\n1. A passport.\n2. A printed ticket.",
        ["You will need the following:\n1. A passport.", "2. A printed ticket."],
    ),
    (
        "number_at_sentence_end_ends_it",
        "en",
        "Your booking code is 4417. The table seats 12. Would you like it?",
        ["Your booking code is 4417.", "The table seats 12.", "Would you like it?"],
    ),
    (
        "number_abbreviation_before_digit_is_no_end",
        "en",
        "Take bus No. 5 to the station. It stops outside.",
        ["Take bus No. 5 to the station.", "It stops outside."],
    ),
    (
        "no_as_an_answer_ends_a_sentence",
        "en",
        "No. Unfortunately we are fully booked tonight. Maybe tomorrow?",
        ["No. Unfortunately we are fully booked tonight.", "Maybe tomorrow?"],
    ),
    (
        "extension_before_digits_is_no_end",
        "en",
        "Please call 555 0100, ext. 204 for the front desk. Thank you.",
        ["Please call 555 0100, ext. 204 for the front desk.", "Thank you."],
    ),
    (
        "month_before_day_is_no_end",
        "en",
        "Your visit is on Jan. 5 at noon. See you then.",
        ["Your visit is on Jan. 5 at noon.", "See you then."],
    ),
    (
        "decimals_are_no_end",
        "en",
        "The price is 3.5 dollars and the tax is 3,5 percent. Anything else?",
        ["The price is 3.5 dollars and the tax is 3,5 percent.", "Anything else?"],
    ),
    (
        "prices_and_percents_are_no_end",
        "en",
        "The soup costs $3.50 today. A salad is 3.5% cheaper. That comes to $12.50. Card?",
        [
            "The soup costs $3.50 today.",
            "A salad is 3.5% cheaper.",
            "That comes to $12.50.",
            "Card?",
        ],
    ),
    # --- Russian
    (
        "ru_period_question_exclamation_end_sentences",
        "ru",
        "Здравствуйте, чем могу помочь? Я запишу вас на завтра. Спасибо за звонок!",
        ["Здравствуйте, чем могу помочь?", "Я запишу вас на завтра.", "Спасибо за звонок!"],
    ),
    (
        "ru_interrobang_and_ellipsis_end_sentences",
        "ru",
        "Вы уже забронировали?! Отлично… Тогда до встречи.",
        ["Вы уже забронировали?!", "Отлично… Тогда до встречи."],
    ),
    (
        "ru_closing_guillemet_stays_with_its_sentence",
        "ru",
        "Он сказал: «Приходите завтра.» Потом ушёл домой.",
        ["Он сказал: «Приходите завтра.»", "Потом ушёл домой."],
    ),
    (
        "ru_decimals_are_no_end",
        "ru",
        "Цена 3,5 тысячи, скидка 2.5 процента. Оформить заказ?",
        ["Цена 3,5 тысячи, скидка 2.5 процента.", "Оформить заказ?"],
    ),
    (
        "ru_that_is_te_is_no_end",
        "ru",
        "Встреча в главном офисе, т. е. Москва, Тверская улица. Будем ждать.",
        ["Встреча в главном офисе, т. е. Москва, Тверская улица.", "Будем ждать."],
    ),
    (
        "ru_that_is_te_compact_is_no_end",
        "ru",
        "Приходите послезавтра, т.е. Пятница подходит. Будем ждать.",
        ["Приходите послезавтра, т.е. Пятница подходит.", "Будем ждать."],
    ),
    (
        "ru_etc_td_before_capital_ends_a_sentence",
        "ru",
        "У нас есть пицца, паста, салаты и т. д. Десерты готовим сами.",
        ["У нас есть пицца, паста, салаты и т. д.", "Десерты готовим сами."],
    ),
    (
        "ru_etc_td_compact_before_capital_ends_a_sentence",
        "ru",
        "Есть пицца, паста и т.д. Что выберете?",
        ["Есть пицца, паста и т.д.", "Что выберете?"],
    ),
    (
        "ru_etc_tp_before_lowercase_is_no_end",
        "ru",
        "Возьмите паспорт, полис и т. п. документы с собой. Спасибо.",
        ["Возьмите паспорт, полис и т. п. документы с собой.", "Спасибо."],
    ),
    (
        "ru_and_others_dr_before_capital_ends_a_sentence",
        "ru",
        "Приедут Иванов, Петров и др. Начало в семь часов.",
        ["Приедут Иванов, Петров и др.", "Начало в семь часов."],
    ),
    (
        "ru_year_g_after_number_ends_a_sentence",
        "ru",
        "Ресторан открылся в 2015 г. С тех пор мы работаем без выходных.",
        ["Ресторан открылся в 2015 г.", "С тех пор мы работаем без выходных."],
    ),
    (
        "ru_years_gg_before_capital_ends_a_sentence",
        "ru",
        "Мы работали там в 2019–2021 гг. Потом переехали в центр.",
        ["Мы работали там в 2019–2021 гг.", "Потом переехали в центр."],
    ),
    (
        "ru_city_g_before_name_is_no_end",
        "ru",
        "Наш офис находится в г. Москва, на Тверской улице. Приезжайте.",
        ["Наш офис находится в г. Москва, на Тверской улице.", "Приезжайте."],
    ),
    (
        "ru_address_ul_d_kv_are_no_end",
        "ru",
        "Адрес: ул. Ленина, д. 5, кв. 12. Домофон не работает.",
        ["Адрес: ул. Ленина, д. 5, кв. 12.", "Домофон не работает."],
    ),
    (
        "ru_imeni_is_no_end",
        "ru",
        "Мы находимся в парке им. Горького, у фонтана. Ждём вас.",
        ["Мы находимся в парке им. Горького, у фонтана.", "Ждём вас."],
    ),
    (
        "ru_rub_before_digit_is_no_end_kop_before_capital_ends",
        "ru",
        "Итого 350 руб. 50 коп. Оплата картой или наличными?",
        ["Итого 350 руб. 50 коп.", "Оплата картой или наличными?"],
    ),
    (
        "ru_rub_before_capital_ends_a_sentence",
        "ru",
        "С вас 500 руб. Спасибо за заказ!",
        ["С вас 500 руб.", "Спасибо за заказ!"],
    ),
    (
        "ru_thousands_millions_billions",
        "ru",
        "Бюджет 5 тыс. руб. в месяц, оборот 2 млн. Прибыль 1 млрд. в год.",
        ["Бюджет 5 тыс. руб. в месяц, оборот 2 млн.", "Прибыль 1 млрд. в год."],
    ),
    (
        "ru_see_sm_is_no_end",
        "ru",
        "Подробности на сайте, см. Раздел «Доставка». Там всё написано.",
        ["Подробности на сайте, см. Раздел «Доставка».", "Там всё написано."],
    ),
    (
        "ru_centimetres_sm_after_number_end_a_sentence",
        "ru",
        "Ширина стола 80 см. Этого хватит на двоих.",
        ["Ширина стола 80 см.", "Этого хватит на двоих."],
    ),
    (
        "ru_for_example_napr_is_no_end",
        "ru",
        "Можно оплатить картой, напр. Мир или Visa. Наличные тоже принимаем.",
        ["Можно оплатить картой, напр. Мир или Visa.", "Наличные тоже принимаем."],
    ),
    (
        "ru_page_str_before_digit_is_no_end",
        "ru",
        "Меню на стр. 5 вашего буклета. Там же цены.",
        ["Меню на стр. 5 вашего буклета.", "Там же цены."],
    ),
    (
        "ru_professor_is_no_end",
        "ru",
        "Вас примет проф. Иванов в среду. Не опаздывайте.",
        ["Вас примет проф. Иванов в среду.", "Не опаздывайте."],
    ),
    (
        "ru_hours_ch_before_capital_ends_a_sentence",
        "ru",
        "Приходите в 3 ч. Мы будем ждать.",
        ["Приходите в 3 ч.", "Мы будем ждать."],
    ),
    (
        "ru_hours_ch_before_lowercase_is_no_end",
        "ru",
        "Приходите в 3 ч. дня, мы будем ждать. До встречи!",
        ["Приходите в 3 ч. дня, мы будем ждать.", "До встречи!"],
    ),
    (
        "ru_initials_are_no_end",
        "ru",
        "Мой любимый поэт А. С. Пушкин. Его стихи прекрасны.",
        ["Мой любимый поэт А. С. Пушкин.", "Его стихи прекрасны."],
    ),
    (
        "ru_list_numbers_after_a_colon_are_no_end",
        "ru",
        "Порядок такой: 1. Откройте приложение. 2. Выберите время.",
        ["Порядок такой: 1. Откройте приложение.", "2. Выберите время."],
    ),
    # --- MIN_SENTENCE_CHARS: short pieces wait and join the next sentence
    (
        "short_first_sentence_joins_the_next",
        "en",
        "Hi. How can I help you today?",
        ["Hi. How can I help you today?"],
    ),
    (
        "short_sentences_join_until_min_chars",
        "en",
        "Sure! Thanks. I booked the table for you.",
        ["Sure! Thanks.", "I booked the table for you."],
    ),
    (
        "sentence_one_char_under_min_joins_the_next",
        "en",
        "Okay, sure. See you soon.",  # "Okay, sure." is 11 chars
        ["Okay, sure. See you soon."],
    ),
    (
        "sentence_of_exactly_min_chars_is_emitted",
        "en",
        "Great, sure. See you soon.",  # "Great, sure." is 12 chars
        ["Great, sure.", "See you soon."],
    ),
    (
        "short_last_sentence_comes_alone_from_flush",
        "en",
        "I booked your table for two. Bye.",
        ["I booked your table for two.", "Bye."],
    ),
    # --- MAX_SENTENCE_CHARS: no end in sight, cut so speech starts
    (
        "long_text_without_end_is_cut_at_the_last_space_before_max",
        "en",
        _words("w", 0, 60),  # words start every 5 chars: w043 ends at 219, its space is the cut
        [_words("w", 0, 44), _words("w", 44, 60)],
    ),
    (
        "long_sentence_is_cut_after_a_comma_in_its_second_half",
        "en",
        f"{_words('w', 0, 30)}, {_words('x', 0, 20)}.",  # the comma is at 149
        [f"{_words('w', 0, 30)},", f"{_words('x', 0, 20)}."],
    ),
    (
        "long_sentence_with_only_an_early_comma_is_cut_at_a_space",
        "en",
        f"{_words('w', 0, 10)}, {_words('x', 0, 50)}.",  # comma at 49: too early; x032 ends at 214
        [f"{_words('w', 0, 10)}, {_words('x', 0, 33)}", f"{_words('x', 33, 50)}."],
    ),
    (
        "long_text_without_spaces_is_cut_at_max",
        "en",
        "a" * 250,
        ["a" * MAX_SENTENCE_CHARS, "a" * (250 - MAX_SENTENCE_CHARS)],
    ),
    (
        "sentence_of_exactly_max_chars_is_kept_whole",
        "en",
        f"{_words('w', 0, 43)} abcd. Short one here.",  # 214 + 6 = 220 chars
        [f"{_words('w', 0, 43)} abcd.", "Short one here."],
    ),
    (
        "sentence_one_char_over_max_is_cut_at_a_space",
        "en",
        f"{_words('w', 0, 43)} abcde. Short one here.",  # 221 chars
        [_words("w", 0, 43), "abcde. Short one here."],
    ),
]


def _whole(text: str) -> list[str]:
    return [text]


def _chars(text: str) -> list[str]:
    return list(text)


def _random_pieces(seed: int) -> Callable[[str], list[str]]:
    def pieces(text: str) -> list[str]:
        rng = random.Random(seed)
        out: list[str] = []
        position = 0
        while position < len(text):
            size = rng.randint(1, 8)
            out.append(text[position : position + size])
            position += size
        return out

    return pieces


STREAMINGS: dict[str, Callable[[str], list[str]]] = {
    "one_piece": _whole,
    "char_by_char": _chars,
    "random_pieces_seed1": _random_pieces(1),
    "random_pieces_seed2": _random_pieces(2),
    "random_pieces_seed3": _random_pieces(3),
}


def split(text: str, pieces: list[str], language: str = "en") -> list[str]:
    splitter = SentenceSplitter(language)
    sentences = [sentence for piece in pieces for sentence in splitter.push(piece)]
    rest = splitter.flush()
    return [*sentences, rest] if rest is not None else sentences


@pytest.mark.parametrize("streaming", list(STREAMINGS), ids=list(STREAMINGS))
@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [pytest.param(language, text, expected, id=name) for name, language, text, expected in CASES],
)
def test_reply_is_cut_into_expected_sentences_however_it_is_streamed(
    language: str, text: str, expected: list[str], streaming: str
) -> None:
    assert split(text, STREAMINGS[streaming](text), language) == expected


@pytest.mark.parametrize("language", ["en", "ru"])
def test_all_replies_in_one_stream_split_the_same_however_streamed(language: str) -> None:
    # One long reply mixing every case: cuts fall at other places than in the table.
    text = " ".join(case[2] for case in CASES if case[1] == language)
    expected = split(text, [text], language)
    for streaming in STREAMINGS.values():
        assert split(text, streaming(text), language) == expected
    assert "".join("".join(expected).split()) == "".join(text.split())  # nothing lost
    assert max(len(sentence) for sentence in expected) <= MAX_SENTENCE_CHARS


def test_case_table_lengths_match_the_limits_they_prove() -> None:
    assert len("Okay, sure.") == MIN_SENTENCE_CHARS - 1
    assert len("Great, sure.") == MIN_SENTENCE_CHARS
    assert len(f"{_words('w', 0, 43)} abcd.") == MAX_SENTENCE_CHARS
    assert f"{_words('w', 0, 30)}, {_words('x', 0, 20)}.".index(",") == 149


def test_sentence_waits_for_the_next_non_space_character() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Your table is ready.") == []
    assert splitter.push("  ") == []
    assert splitter.push("E") == ["Your table is ready."]
    assert splitter.flush() == "E"


def test_possible_abbreviation_waits_for_the_next_token() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("Please call Dr.") == []
    assert splitter.push(" ") == []
    assert splitter.push("Smith now. She") == ["Please call Dr. Smith now."]
    assert splitter.flush() == "She"


def test_decimal_split_across_tokens_is_no_end() -> None:
    splitter = SentenceSplitter()
    assert splitter.push("It costs 3.") == []
    assert splitter.push("5 dollars today. And") == ["It costs 3.5 dollars today."]


def test_flush_of_nothing_or_whitespace_is_none() -> None:
    splitter = SentenceSplitter()
    assert splitter.flush() is None
    splitter.push("  \n")
    assert splitter.flush() is None


def test_splitter_starts_afresh_after_flush() -> None:
    splitter = SentenceSplitter()
    splitter.push("Call me at 3 p.")
    assert splitter.flush() == "Call me at 3 p."
    assert splitter.push("m. Thanks") == []  # no "3 p.m.": the last reply is gone
    assert splitter.flush() == "m. Thanks"


def test_unknown_language_uses_english_rules() -> None:
    text = "Он живёт на ул. Ленина, это рядом."
    assert split(text, [text], "ru") == [text]
    assert (
        split(text, [text], "de")
        == split(text, [text], "en")
        == [
            "Он живёт на ул.",
            "Ленина, это рядом.",
        ]
    )


def test_push_costs_well_under_a_millisecond_per_token() -> None:
    reply = (
        "Of course! Dr. Smith can see you on Jan. 5 at 3 p.m. in our U.S. office, i.e. the one "
        "on St. James Street. The visit costs $49.50, which is 3.5% less than last year. "
        "Please bring your ID, insurance card, etc. If you need to cancel, call ext. 204 at "
        "least 24 hours ahead. Is there anything else I can help you with today?"
    )
    tokens = _random_pieces(7)(reply)  # ~4.5 chars a token, like an LLM's
    rounds = 200
    began = time.perf_counter()
    for _ in range(rounds):
        splitter = SentenceSplitter()
        for token in tokens:
            splitter.push(token)
        splitter.flush()
    per_push = (time.perf_counter() - began) / (rounds * len(tokens))
    assert per_push < 0.2e-3, f"{per_push * 1e6:.1f} µs per push"
