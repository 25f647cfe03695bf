"""Cut a reply, as it streams in, into pieces that can be spoken one by one.

A piece ends at a sentence end (`.`, `!`, `?`, `…` or a run of them, then any closing quotes
or brackets, then whitespace) or at a line break. Whether a period ends a sentence is decided
only once the next word has begun, so that an abbreviation ("Mr. Smith", "esim. näin"), an
initial ("J. R. R. Tolkien") or a Finnish ordinal ("24. joulukuuta") is not cut; a doubtful
period is never a piece's end: a piece comes late rather than wrong.

The pieces hold the reply's words, each once and in order, one space between them:
`" ".join(pieces) == " ".join(reply.split())`.
"""

from __future__ import annotations

import re

TERMINATORS = ".!?…"
# Closing quotes and brackets that may follow a sentence's end ('"Yes." He left.'), and what
# may open a word: Finnish quotes open with the closing marks too. Markdown emphasis as well
# ("**Sure!** Take..."), for a stream that is cleaned piece by piece. (\u201d and \u2019 are
# the right double and single quotation marks, \u2018 the left single, \u201a the low single;
# \u2013 is the en dash.)
CLOSERS = "\"'\u201d\u2019»)]}*_`"


def ends_sentence(sentence: str) -> bool:
    """Whether `sentence` ends as a sentence does (its closing quotes or brackets aside)."""
    return sentence.rstrip(CLOSERS).endswith(tuple(TERMINATORS))


_OPENERS = "\"'“\u201d\u2018\u2019«»„\u201a([{*_`"
CLAUSE_ENDS = (",", ";", ":", "—", "\u2013")
_DASHES = frozenset({"-", "--", "—", "\u2013"})
_RUN = re.compile(r"\S+|\s+")  # \s is str.isspace(), the whitespace str.split() splits at
_LINE_BREAK = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")  # as str.splitlines()


def _abbreviations(*lines: str) -> frozenset[str]:
    return frozenset(" ".join(lines).split())


# Abbreviations, lowercase and without their last period. After one in NEVER, a period never
# ends a sentence: it stands before a name, a number or the rest of its sentence. One in MAYBE
# may end a sentence ("..., etc. Then"), so its period ends one only when a capital letter
# follows, not a digit ("No. 5", "Jan. 5", "max. 5 kg") nor a lowercase word.
_NEVER_EN = _abbreviations(
    "mr mrs ms mx dr prof st mt rev hon gen col lt capt sgt vs cf approx ca e.g i.e u.s u.k",
    "u.s.a",
)
_MAYBE_EN = _abbreviations(
    "etc a.m p.m inc ltd co corp jr sr no nos nr vol fig ch pp art tel min max sec hr hrs",
    "jan feb mar apr jun jul aug sep sept oct nov dec",
)
_NEVER_FI = _abbreviations(
    "esim mm ns ks kts ts vrt klo prof tri os engl lyh huom ko em ao yl ent nyk vs",
)
_MAYBE_FI = _abbreviations(
    "jne yms tms jms tjsp ym tm kpl milj mrd tuh ekr jkr ap ip vk kk pvm nro puh sek min",
    "alk synt",
)


class SentenceSplitter:
    """Cuts a reply's token stream into pieces to speak, as each is complete."""

    def __init__(
        self, language: str | None = None, *, first_min_chars: int = 20, max_chars: int = 250
    ) -> None:
        """`language` ("fi", "en", "fi-FI"...) chooses the abbreviations known; any other,
        or None, knows both lists. The first piece has at least `first_min_chars`
        characters (a short first sentence is joined to the next), except the reply's
        last; a piece longer than `max_chars` is cut at a clause (comma, semicolon, colon,
        dash) or else a space, where it has one."""
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        base = (language or "").lower().replace("_", "-").split("-")[0]
        self._never: frozenset[str] = frozenset()
        self._maybe: frozenset[str] = frozenset()
        if base != "en":
            self._never |= _NEVER_FI
            self._maybe |= _MAYBE_FI
        if base != "fi":
            self._never |= _NEVER_EN
            self._maybe |= _MAYBE_EN
        self._maybe -= self._never
        self._first_min = first_min_chars
        self._max = max_chars
        self._reset()

    def _reset(self) -> None:
        self._words: list[str] = []  # the piece so far: whole words, none of it a piece's end
        self._length = 0  # of " ".join(self._words)
        self._word: list[str] = []  # the word being read, in the fragments it came in
        self._emitted = False

    def feed(self, delta: str) -> list[str]:
        """The pieces `delta` completes (stripped, non-empty), in order."""
        pieces: list[str] = []
        for match in _RUN.finditer(delta):
            run = match.group()
            if run[0].isspace():
                if self._word:
                    self._end_word(pieces)
                if self._words and _LINE_BREAK.search(run):
                    self._end_piece(pieces)
            else:
                if not self._word and self._words and self._ends_sentence(run[0]):
                    self._end_piece(pieces)
                self._word.append(run)
        return pieces

    def flush(self) -> list[str]:
        """Whatever is left, at the end of the reply (stripped; [] if nothing).

        The splitter is then empty, ready for another reply."""
        pieces: list[str] = []
        if self._word:
            self._end_word(pieces)
        if self._words:
            pieces.append(" ".join(self._words))
        self._reset()
        return pieces

    def _end_word(self, pieces: list[str]) -> None:
        word = "".join(self._word)
        self._word = []
        self._length += len(word) + (1 if self._words else 0)
        self._words.append(word)
        while self._length > self._max and len(self._words) > 1:
            self._cut(pieces)

    def _end_piece(self, pieces: list[str]) -> None:
        """A boundary before the next word: the piece ends here unless it is a short first."""
        if self._emitted or self._length >= self._first_min:
            self._emit(len(self._words), pieces)

    def _emit(self, count: int, pieces: list[str]) -> None:
        pieces.append(" ".join(self._words[:count]))
        del self._words[:count]
        self._length = sum(len(word) for word in self._words) + max(len(self._words) - 1, 0)
        self._emitted = True

    def _cut(self, pieces: list[str]) -> None:
        """End an over-long piece, in which no sentence ends, at its last clause or space."""
        length = -1
        spaces = 0  # words before the last space that keeps the piece within max_chars
        clause = clause_length = 0
        for count, word in enumerate(self._words[:-1], start=1):
            length += len(word) + 1
            if length > self._max:
                break
            spaces = count
            if word in _DASHES or word.rstrip(CLOSERS).endswith(CLAUSE_ENDS):
                clause, clause_length = count, length
        if clause and clause_length > self._max // 3:
            self._emit(clause, pieces)
        else:  # the first word alone may be longer: it ends at its space
            self._emit(max(spaces, 1), pieces)

    def _ends_sentence(self, following: str) -> bool:
        """Whether the last word ends a sentence, the next word beginning with `following`."""
        if following.islower():  # '"Really?" she asked', "24. joulukuuta", "3. sijalle"
            return False
        word = self._words[-1].rstrip(CLOSERS)
        if not word or word[-1] not in TERMINATORS:
            return False
        stem = word.rstrip(TERMINATORS)
        if len(word) - len(stem) > 1 or word[-1] != ".":  # ! ? … ?! ...
            return True
        core = stem.lstrip(_OPENERS)
        if not core:
            return True
        if _is_number(core):  # "It was 42. Then", not "5. 12. 2026" nor a list's "1. Do"
            return following.isupper() and len(self._words) > 1
        if len(core) == 1 and core.isalpha():  # initials; Finnish s. (sivu), n. (noin)
            return False
        if core.isupper() and "." not in core:  # an acronym: "Update the OS. Then"
            return True
        lower = core.lower()
        if lower in self._never:
            return False
        if lower in self._maybe or _is_dotted(core):  # "a.m.", "Ph.D."
            return following.isupper()
        return True


def split_sentences(text: str, language: str | None = None) -> list[str]:
    """A whole text's sentences and lines, by `SentenceSplitter`'s rules, none joined or cut."""
    splitter = SentenceSplitter(language, first_min_chars=0, max_chars=len(text) + 1)
    return splitter.feed(text) + splitter.flush()


def _is_number(core: str) -> bool:
    """12, 24, 12.30, 5.12, 1,5: digits and the separators inside a number."""
    return core[0].isdigit() and all(ch.isdigit() or ch in ".,:" for ch in core)


def _is_dotted(core: str) -> bool:
    """Letters in groups of one or two between periods: "a.m", "U.S.A", "Ph.D"."""
    parts = core.split(".")
    return len(parts) > 1 and all(0 < len(part) <= 2 and part.isalpha() for part in parts)
