"""Snippets for the result list: the window of a document's text richest in query terms, with
the character spans of those terms, so that a client marks them without parsing HTML."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by can do does for from has have how in is it its of on or that the "
    "their there these this to was were what when where which who why will with".split()
)


def query_terms(query: str) -> frozenset[str]:
    """Lower-cased query words worth marking: two characters or more, not stopwords."""
    return (
        frozenset(w for w in (m.group().lower() for m in _WORD.finditer(query)) if len(w) > 1)
        - STOPWORDS
    )


def _matches(word: str, terms: frozenset[str]) -> bool:
    """A word matches a term exactly, or extends a term of 4+ characters (fever -> fevers)."""
    w = word.lower()
    return w in terms or any(len(t) >= 4 and w.startswith(t) for t in terms)


def term_spans(text: str, terms: frozenset[str]) -> list[tuple[int, int]]:
    """[(start, end)] of every word of `text` that matches a query term."""
    return [m.span() for m in _WORD.finditer(text) if _matches(m.group(), terms)]


def snippet(text: str, terms: frozenset[str], width: int = 240) -> tuple[str, list[list[int]]]:
    """(at most ~`width` characters of `text` around its densest run of query terms, the marked
    spans within it). Ellipses show where the text was cut."""
    text = " ".join(text.split())
    spans = term_spans(text, terms)
    if len(text) <= width:
        return text, [list(s) for s in spans]
    start = 0
    if spans:
        best, j = 0, 0
        for s, _ in spans:  # the window [s, s + width) holding most matches
            while spans[j][0] < s:
                j += 1
            count = sum(1 for a, b in spans[j:] if b <= s + width)
            if count > best:
                best, start = count, s
        start = max(0, start - width // 6)  # some context before the first match
        while start > 0 and not text[start - 1].isspace():
            start -= 1
    end = min(len(text), start + width)
    while end < len(text) and not text[end - 1].isspace() and end - start < width + 20:
        end += 1
    prefix = "… " if start > 0 else ""
    suffix = " …" if end < len(text) else ""
    body = text[start:end].rstrip()  # starts on a word: `text` has single spaces only
    offset = len(prefix) - start
    marks = [[a + offset, b + offset] for a, b in spans if a >= start and b <= start + len(body)]
    return prefix + body + suffix, marks
