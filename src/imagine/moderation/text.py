"""Prompts folded to what they say, and operator word lists matched against them.

A word list matched on raw text is both too strict and too lax: `cock`
refuses "cocktail" (the Scunthorpe problem) while `n a k e d`, `NÄKED`,
`nаked` with a Cyrillic `а` or `n4k3d` slip through. So the prompt and every
entry are folded the same way (NFKC, case fold, marks and invisible
characters dropped, confusable letters mapped to Latin, digits and symbols
inside words read as the letters they imitate), split into words, runs of
single letters joined (`n a k e d` → `naked`), and entries match whole words
or whole phrases only.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FoldedText", "WordList", "fold", "read_entries"]

# Letters from other scripts that render like Latin ones (Unicode's confusables,
# the part that matters for Latin-script words), after NFKC and case folding.
_CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o",
    "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i",
    "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v",
    "ο": "o", "ρ": "p", "σ": "s", "ς": "s", "τ": "t", "υ": "u", "χ": "x", "ω": "w",
    # Latin lookalikes NFKC leaves alone
    "ı": "i", "ȷ": "j", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ß": "ss", "æ": "ae",
    "œ": "oe", "ſ": "s",
}  # fmt: skip

# Capitals whose small letters look different (Greek Ν is N, its ν looks like v),
# mapped before case folding.
_CAPITAL_CONFUSABLES = str.maketrans(
    "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧАВЕКМНОРСТХУЅІЈ", "ABEZHIKMNOPTYXABEKMHOPCTXYSIJ"
)

# Digits and symbols that stand for letters inside a word (`n4k3d`, `$hit`).
# "1", "!" and "|" read as "i"; `WordList` also tries them as "l".
_LEET = {
    "0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b",
    "9": "g", "@": "a", "$": "s", "!": "i", "|": "i", "+": "t", "€": "e", "£": "l",
}  # fmt: skip
_AMBIGUOUS_I = re.compile(r"[1!|]")
_AS_L = str.maketrans("1!|", "lll")

_WORD = re.compile(r"[^\W_]+")
_SPACED_RUN = 3  # this many single letters in a row are read as one word


@dataclass(frozen=True)
class FoldedText:
    """A text as the word lists see it."""

    words: tuple[str, ...]
    """The folded words, with runs of single letters joined."""
    variants: tuple[tuple[str, ...], ...]
    """`words`, and the same with ambiguous characters read the other way."""
    trimmed: tuple[str, ...] = ()
    """Joined runs of single letters without one or two letters at either end,
    since a run may take in a neighbour (`a n a k e d` → `anaked`, `naked`)."""

    @property
    def readable(self) -> str:
        """The folded words joined by spaces: what regex entries and the text
        classifier read."""
        return " ".join(self.words)


def _fold_chars(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).translate(_CAPITAL_CONFUSABLES).casefold()
    # Decompose to drop combining marks (NÄKED, nakéd); format characters such as
    # zero-width spaces and soft hyphens vanish, so `na\u200bked` is one word.
    decomposed = unicodedata.normalize("NFKD", text)
    kept = [
        _CONFUSABLES.get(char, char)
        for char in decomposed
        if unicodedata.category(char) not in ("Mn", "Me", "Cf")
    ]
    return "".join(kept)


def _leet(token: str) -> str:
    return "".join(_LEET.get(char, char) for char in token)


def _leet_words(text: str) -> Iterator[str]:
    """Words, with digits and symbols read as letters where they stand among
    letters; punctuation after a word (`naked!`) stays punctuation."""
    for piece in re.finditer(r"\S+", text):
        token = piece.group()
        if any(char.isalpha() for char in token):
            body = token.rstrip("!|.,;:?")
            token = _leet(body) + token[len(body) :]
        yield from _WORD.findall(token)


def _single_runs(words: list[str]) -> Iterator[tuple[int, int]]:
    """(start, end) of each run of at least `_SPACED_RUN` one-character words."""
    start = 0
    for index, word in enumerate([*words, ""]):
        if len(word) != 1:
            if index - start >= _SPACED_RUN:
                yield start, index
            start = index + 1


def _join_spaced(words: list[str]) -> tuple[list[str], list[str]]:
    """Runs of single characters as one word (`n a k e d`, `n 4 k 3 d`), and the
    runs' trimmed readings."""
    joined: list[str] = []
    trimmed: list[str] = []
    done = 0
    for start, end in _single_runs(words):
        joined.extend(words[done:start])
        run = _leet("".join(words[start:end]))
        joined.append(run)
        trimmed.extend(
            run[head : len(run) - tail]
            for head in range(3)
            for tail in range(3)
            if (head or tail) and len(run) - head - tail >= _SPACED_RUN
        )
        done = end
    joined.extend(words[done:])
    return joined, trimmed


def fold(text: str) -> FoldedText:
    """Fold `text` for matching (see the module's docstring)."""
    characters = _fold_chars(text)
    words, trimmed = _join_spaced(list(_leet_words(characters)))
    variants = [tuple(words)]
    if _AMBIGUOUS_I.search(characters):
        other, more = _join_spaced(list(_leet_words(characters.translate(_AS_L))))
        variants.append(tuple(other))
        trimmed.extend(more)
    return FoldedText(tuple(words), tuple(variants), tuple(trimmed))


@dataclass(frozen=True)
class _Phrase:
    words: tuple[str, ...]
    prefix: bool  # the last word may go on (`nude*` matches "nudes")
    entry: str  # as the operator wrote it


class WordList:
    """An operator's list: words, phrases, `word*` prefixes and `re:` regexes.

    Words and phrases are folded as prompts are and match whole words only;
    regexes are searched in the folded text (`FoldedText.readable`), so they
    see lower-case Latin letters and single spaces. Entries are indexed (by
    the word, the prefix, a phrase's first word), so a long list costs about
    what a short one does; regexes are tried one by one.
    """

    def __init__(self, name: str, entries: Iterable[str]) -> None:
        self.name = name
        self._words: dict[str, str] = {}
        self._prefixes: dict[str, str] = {}
        self._prefix_lengths: set[int] = set()
        self._phrases: dict[str, list[_Phrase]] = {}
        self._regexes: list[tuple[re.Pattern[str], str]] = []
        for entry in entries:
            self._add(entry)

    def _add(self, entry: str) -> None:
        if entry.startswith("re:"):
            try:
                self._regexes.append((re.compile(entry[3:]), entry))
            except re.error as exc:
                raise ValueError(f"list {self.name!r}: bad regex {entry!r}: {exc}") from None
            return
        prefix = entry.endswith("*")
        words = fold(entry.rstrip("*")).words
        if not words:
            raise ValueError(f"list {self.name!r}: entry {entry!r} has no letters")
        if len(words) > 1:
            self._phrases.setdefault(words[0], []).append(_Phrase(words, prefix, entry))
        elif prefix:
            self._prefixes.setdefault(words[0], entry)
            self._prefix_lengths.add(len(words[0]))
        else:
            self._words.setdefault(words[0], entry)

    def __len__(self) -> int:
        phrases = sum(len(group) for group in self._phrases.values())
        return len(self._words) + len(self._prefixes) + phrases + len(self._regexes)

    def _word(self, word: str) -> str | None:
        """The entry a single word matches: itself, or a prefix of it."""
        found = self._words.get(word)
        if found is None:
            for length in self._prefix_lengths:
                if length <= len(word) and (found := self._prefixes.get(word[:length])):
                    break
        return found

    def match(self, text: FoldedText) -> str | None:
        """The first entry `text` contains, as the operator wrote it, or None."""
        for words in text.variants:
            for start, word in enumerate(words):
                found = self._word(word)
                if found is not None:
                    return found
                for phrase in self._phrases.get(word, ()):
                    if _phrase_at(words, start, phrase):
                        return phrase.entry
        for word in text.trimmed:
            found = self._word(word)
            if found is not None:
                return found
        readable = text.readable
        for pattern, entry in self._regexes:
            if pattern.search(readable):
                return entry
        return None


def _phrase_at(words: tuple[str, ...], start: int, phrase: _Phrase) -> bool:
    end = start + len(phrase.words)
    if end > len(words) or words[start : end - 1] != phrase.words[:-1]:
        return False
    last, candidate = phrase.words[-1], words[end - 1]
    return candidate == last or (phrase.prefix and candidate.startswith(last))


def read_entries(path: Path) -> list[str]:
    """A list file's entries: one per line; blank lines and lines starting with
    `#` are skipped. ValueError names the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"word list {path}: {exc}") from None
    entries = (line.strip() for line in lines)
    return [entry for entry in entries if entry and not entry.startswith("#")]
