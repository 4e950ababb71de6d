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


def matcher(terms: frozenset[str]) -> re.Pattern | None:
    """One regex finding the words that match a query term: the term itself, or, for terms of
    4+ characters, any word it starts (fever -> fevers); None when there are no terms."""
    if not terms:
        return None
    alts = [
        re.escape(t) + (r"\w*" if len(t) >= 4 else r"(?!\w)")
        for t in sorted(terms, key=lambda t: (-len(t), t))
    ]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + ")", re.IGNORECASE)


def term_spans(text: str, pattern: re.Pattern | None) -> list[tuple[int, int]]:
    """[(start, end)] of every word of `text` that matches a query term (see `matcher`)."""
    return [m.span() for m in pattern.finditer(text)] if pattern is not None else []


def snippet(text: str, pattern: re.Pattern | None, width: int = 240) -> tuple[str, list[list[int]]]:
    """(at most ~`width` characters of `text` around its densest run of query terms, the marked
    spans within it). Ellipses show where the text was cut."""
    text = " ".join(text.split())
    spans = term_spans(text, pattern)
    if len(text) <= width:
        return text, [list(s) for s in spans]
    start = 0
    if spans:
        best, j = 0, 0
        for i, (s, _) in enumerate(spans):  # the window [s, s + width) holding most matches
            j = max(j, i)
            while j < len(spans) and spans[j][1] <= s + width:
                j += 1
            if j - i > best:
                best, start = j - i, s
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
