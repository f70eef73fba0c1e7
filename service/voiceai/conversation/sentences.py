"""Sentences cut from an LLM's streamed reply (English, Russian), each sent to TTS when complete.

A rule set over stdlib regexes, not a segmentation library: the rules must be streaming (decide
from the text seen so far, or say "wait") and cost microseconds per token.

Rules, for a candidate end: a run of . ! ? … (or 。！？) plus any closing quotes/brackets:
  1. It needs whitespace after it ("3.5", "3,5", "example.com", "e.g," are not ends) and the next
     non-space character must have arrived; until then nothing is emitted (flush() ends the text).
  2. A lowercase next letter means no end ("10 a.m. tomorrow", "Hmm… maybe", "т. е. завтра").
  3. ! ? … and multi-dot runs ("?!", "...") end the sentence otherwise; so does a period after a
     closing quote/bracket.
  4. A single period after these words does not end the sentence, whatever follows:
     titles (Mr. Dr. Prof. St. Jr. vs. …; ул. им. проф. г. and см. when not after a number),
     Latin e.g. i.e. cf. (напр., т. е.), an initial ("J. R. R. Tolkien", "А. С. Пушкин"), a dotted
     acronym ("U.S.", "U.K.") and a list number opening the reply or a line or after a colon
     ("Steps: 1. Open the app.").
  5. Before a digit these don't end a sentence either: "No. 5", "ext. 204", "Jan. 5", "д. 5",
     "стр. 3", units after a number ("5 тыс. 300", "3 ч. 15 мин.", "2024 г.").
  6. Everything else ends before an uppercase letter, a digit or other punctuation: "etc.", "a.m.",
     "p.m.", "и т. д.", "и др.", "руб." end a sentence when a capitalised one follows.
When in doubt the rules keep text together: a missed cut only delays speech by one sentence, a
wrong one makes TTS speak a fragment with a pause ("I live in the U.S. The…" stays one piece).
Russian rules apply with language "ru" (on top of the English ones, for names and acronyms).

A sentence shorter than MIN_SENTENCE_CHARS (stripped) waits and joins the next; one longer than
MAX_SENTENCE_CHARS is cut at its last clause break (, ; : —) in the second half of the limit,
else at its last space, else at the limit.
"""

from __future__ import annotations

import re

MIN_SENTENCE_CHARS = 12  # shorter pieces ("Hi.") wait for the next one: fewer, fuller TTS calls
MAX_SENTENCE_CHARS = 220  # no end in sight: cut at a comma or space so speech starts early

# Terminator run, then closing quotes/brackets that belong to the sentence.
_CANDIDATE = re.compile(r"([.!?…。！？]+)[\"'”’“»)\]}]*")
_NON_SPACE = re.compile(r"\S")
# The token before a period: "Dr", "U.S", "e.g", "3.50", "т.е" (an endpos-bounded search).
_WORD = re.compile(r"(?:[^\W_]+\.)*[^\W_]+$")
_CLAUSE_END = re.compile(r"[,;:—–](?=\s)")

_EN_TITLES = frozenset({
    "Mr", "Mrs", "Ms", "Messrs", "Mx", "Dr", "Prof", "St", "Jr", "Sr", "Mt", "Rev", "Gen", "Capt",
    "Sgt", "Lt", "Col", "Gov", "Sen", "Rep", "Hon", "Fr", "Pres", "Maj", "Adm", "Cmdr", "Supt",
})  # fmt: skip
_EN_LATIN = frozenset({"e.g", "i.e", "eg", "ie", "cf", "viz", "vs", "approx"})
_EN_BEFORE_NUMBER = frozenset({
    "no", "nos", "nr", "p", "pp", "vol", "ch", "fig", "tel", "ext", "art", "sec", "secs", "apt",
    "ste", "rm", "bldg", "para", "min", "mins", "hr", "hrs", "oz", "lb", "lbs", "ft", "sq",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
})  # fmt: skip
_RU_NEVER = frozenset({
    "ул", "им", "проф", "акад", "доц", "пр", "просп", "пер", "пл", "наб", "гр", "св", "напр",
})  # fmt: skip
_RU_BEFORE_NUMBER = frozenset({
    "д", "стр", "с", "рис", "гл", "п", "ст", "кв", "корп", "тел", "т", "ч", "мин", "сек", "руб",
    "коп", "тыс", "млн", "млрд", "трлн", "км", "кг", "мм", "гг", "табл",
})  # fmt: skip
_RU_YEAR_OR_UNIT = frozenset(("г", "см"))  # after a number "2024 г.", "5 см."; else "г. Москва"
# "и т. д.", "и т. п.", "и др.", "и пр." are "etc.": they end a sentence like any word.
_RU_ETC = re.compile(r"(?:(?<![^\W_])т\.\s?[дп]|(?<![^\W_])и\s+(?:др|пр))$", re.IGNORECASE)
_RU_THAT_IS = re.compile(r"(?<![^\W_])т\.\s?е$", re.IGNORECASE)
_RU_AFTER_NUMBER = re.compile(r"\d\s*[^\W\d_]+$")


class SentenceSplitter:
    """Cuts an LLM's streamed text into sentences as soon as each is complete.

    The output depends only on the text, not on how it was cut into pieces.
    """

    def __init__(self, language: str = "en") -> None:
        self._russian = language.lower().partition("-")[0] == "ru"  # anything else: English rules
        self._reset()

    def push(self, piece: str) -> list[str]:
        """Add a piece of the reply; return the sentences it completed, stripped."""
        self._text += piece
        sentences: list[str] = []
        while (cut := self._next_cut()) is not None:
            sentence = self._text[self._start : cut].strip()
            self._start = self._scan = cut
            if sentence:
                sentences.append(sentence)
        return sentences

    def flush(self) -> str | None:
        """The rest of the reply once it has ended; the splitter is then ready for the next one."""
        rest = self._text[self._start :].strip()
        self._reset()
        return rest or None

    def _reset(self) -> None:
        # The whole reply is kept (a few KB at most): rules look back past the last cut.
        self._text = ""
        self._start = 0  # where the pending sentence starts
        self._scan = 0  # candidates before this are decided and were not cuts

    def _next_cut(self) -> int | None:
        text = self._text
        first = _NON_SPACE.search(text, self._start)
        if first is None:
            return None
        start = self._start = first.start()
        limit = start + MAX_SENTENCE_CHARS
        for match in _CANDIDATE.finditer(text, max(self._scan, start)):
            if match.end() > limit:
                break
            is_end = self._is_end(text, match)
            if is_end is None:
                self._scan = match.start()  # resume here when more text arrives
                return None
            self._scan = match.end()
            if is_end and len(text[start : match.end()].strip()) >= MIN_SENTENCE_CHARS:
                return match.end()
        if len(text) > limit:
            return self._overflow_cut(text, start)
        return None

    def _is_end(self, text: str, match: re.Match[str]) -> bool | None:
        """Whether this candidate ends a sentence; None: not known until more text arrives."""
        end = match.end()
        if end == len(text):
            return None  # the run, its closers or a decimal may go on
        if not text[end].isspace():
            return False
        following = _NON_SPACE.search(text, end)
        if following is None:
            return None
        next_char = following.group()
        if next_char.islower():
            return False
        if match.group(1) != "." or end > match.end(1):
            return True  # "!", "?", "…", "..." or a quote/bracket closed after the period
        return not self._is_abbreviation(text, match.start(), next_char)

    def _is_abbreviation(self, text: str, dot: int, next_char: str) -> bool:
        """Whether the period at `dot` (followed by space and a non-lowercase char) is no end."""
        found = _WORD.search(text, max(0, dot - 40), dot)
        if found is None:
            return False
        word = found.group()
        if word.isupper() and all(len(letter) == 1 for letter in word.split(".")):
            # An initial ("J. R. R. Tolkien", "А. С.") or a dotted acronym ("U.S."); "I" is "I".
            return word != "I" and word not in ("A.M", "P.M")
        lower = word.lower()
        before_digit = next_char.isdigit()
        if self._russian:
            head = text[max(0, dot - 12) : dot]
            if _RU_THAT_IS.search(head):
                return True
            if _RU_ETC.search(head):
                return False
            if lower in _RU_YEAR_OR_UNIT:
                return before_digit or not _RU_AFTER_NUMBER.search(head)
            if lower in _RU_NEVER:
                return True
            if lower in _RU_BEFORE_NUMBER:
                return before_digit
        if word in _EN_TITLES or lower in _EN_LATIN:
            return True
        if lower in _EN_BEFORE_NUMBER:
            return before_digit
        return word.isdigit() and len(word) <= 2 and _starts_list_item(text, found.start())

    @staticmethod
    def _overflow_cut(text: str, start: int) -> int:
        """Where to cut a sentence longer than MAX_SENTENCE_CHARS: a clause break, else a space."""
        head = text[start : start + MAX_SENTENCE_CHARS]
        clause = max((m.end() for m in _CLAUSE_END.finditer(head)), default=0)
        if clause >= MAX_SENTENCE_CHARS // 2:  # an early comma would leave a tiny first piece
            return start + clause
        space = max(head.rfind(" "), head.rfind("\n"))
        return start + space if space > 0 else start + MAX_SENTENCE_CHARS


def _starts_list_item(text: str, position: int) -> bool:
    """Whether `position` begins the reply or a line, or follows a colon: a list item's number.

    After a sentence end a number needs no rule: "2." alone is under MIN_SENTENCE_CHARS, so it
    joins "Tap Settings." anyway; and "кв. 12. Домофон…" must still end after "12.".
    """
    before = text[:position]
    stripped = before.rstrip()
    return not stripped or stripped[-1] == ":" or "\n" in before[len(stripped) :]
