"""Chunking long documents into overlapping token windows, and MaxP back to documents.

A tower truncates a passage at its max length (256 tokens for all-MiniLM-L6-v2), so the tail
of a long document is never seen. `chunk_corpus` cuts each document's text into windows of
`size` tokens that overlap by `overlap` (slices of the original string, by the fast tokenizer's
offsets: no decode round trip), each prefixed with the document's title; `max_p` scores a
document by its best chunk (MaxP, Dai & Callan 2019). `chunk_depth` is the number of chunks to
retrieve so that the top-k documents by MaxP are exact: the k-th document's best chunk is
outranked only by chunks of the k - 1 documents above it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import tokenizers

from dualenc.inference.encode import doc_fields

SEP = "#"  # chunk id = f"{doc_id}{SEP}{i}"


@dataclasses.dataclass
class Chunks:
    """Chunk ids and texts in corpus order; `parent[j]` indexes the document of chunk j."""

    ids: list[str]
    texts: list[str]
    parent: list[int]
    doc_ids: list[str]

    @property
    def max_per_doc(self) -> int:
        counts: dict[int, int] = {}
        for p in self.parent:
            counts[p] = counts.get(p, 0) + 1
        return max(counts.values(), default=0)


def windows(tok: tokenizers.Tokenizer, text: str, size: int, overlap: int) -> list[str]:
    """`text` as substrings of at most `size` tokens, consecutive ones sharing `overlap`
    tokens; the last window ends at the text's end. An empty text is one empty chunk."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got {size}, {overlap}")
    offsets = tok.encode(text, add_special_tokens=False).offsets
    if len(offsets) <= size:
        return [text.strip()]
    out, stride = [], size - overlap
    for start in range(0, len(offsets), stride):
        end = min(start + size, len(offsets))
        out.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            break
    return out


def chunk_corpus(
    tok: tokenizers.Tokenizer,
    corpus: Mapping[str, object],
    size: int,
    overlap: int,
) -> Chunks:
    """Chunks of every document (`.title` / `.text`, or BEIR dicts: `encode.doc_fields`),
    title + ' ' + window.

    `size` counts the text's tokens; the title's come on top (keep size + title <= the tower's
    max length)."""
    ids, texts, parent, doc_ids = [], [], [], list(corpus)
    for i, d in enumerate(doc_ids):
        title, text = doc_fields(corpus[d])
        for j, w in enumerate(windows(tok, text, size, overlap)):
            ids.append(f"{d}{SEP}{j}")
            texts.append(f"{title} {w}".strip())
            parent.append(i)
    return Chunks(ids, texts, parent, doc_ids)


def chunk_depth(k: int, chunks: Chunks) -> int:
    """Chunks to retrieve for an exact MaxP top-k: (k - 1) * max chunks per doc + 1."""
    return min(len(chunks.ids), (max(k, 1) - 1) * chunks.max_per_doc + 1)


def max_p(
    run: Mapping[str, Mapping[str, float]], chunks: Chunks, k: int
) -> dict[str, dict[str, float]]:
    """A chunk run (query -> {chunk id: score}) as a document run: each document's best chunk
    score, top `k` per query."""
    parent_of = dict(zip(chunks.ids, chunks.parent, strict=True))
    out = {}
    for q, hits in run.items():
        best: dict[str, float] = {}
        for cid, s in hits.items():
            d = chunks.doc_ids[parent_of[cid]]
            if d not in best or s > best[d]:
                best[d] = float(s)
        top = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        out[q] = dict(top)
    return out


def chunk_stats(chunks: Chunks) -> dict[str, float]:
    """Docs, chunks, chunks per doc (mean, max) for logs and reports."""
    n = len(chunks.doc_ids)
    return {
        "docs": n,
        "chunks": len(chunks.ids),
        "chunks_per_doc": round(len(chunks.ids) / max(n, 1), 3),
        "max_chunks_per_doc": chunks.max_per_doc,
    }
