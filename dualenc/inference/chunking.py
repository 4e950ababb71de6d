"""Chunking long documents into overlapping token windows, and MaxP back to documents.

A tower truncates a passage at its max length (256 tokens for all-MiniLM-L6-v2), so the tail
of a long document is never seen. `ChunkSource` cuts each document's text into windows of
`size` tokens that overlap by `overlap` (slices of the original string, by the fast tokenizer's
offsets: no decode round trip), each prefixed with the document's title; `max_p` scores a
document by its best chunk (MaxP, Dai & Callan 2019). `chunk_depth` is the number of chunks to
retrieve so that the top-k documents by MaxP are exact: the k-th document's best chunk is
outranked only by chunks of the k - 1 documents above it.

The chunks are never held (issue 25: they outweigh the corpus itself). `ChunkSource` is a
`CorpusSource` over another one: one streaming pass counts each document's windows into a
numpy array (4 B a document, plus 8 B of cumulative offsets), and `read` re-reads the
documents of the asked chunk rows and cuts their windows again. A chunk row maps to its
document and window index arithmetically (a binary search in the offsets), so neither the
chunk ids nor their parents are ever lists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np
import tokenizers

from dualenc.data.beir import Doc

SEP = "#"  # chunk id = f"{doc_id}{SEP}{i}"
READ_BLOCK = 4096  # documents read (and tokenised) at a time by the counting pass


def check_window(size: int, overlap: int) -> None:
    """Raises unless windows of `size` tokens overlapping by `overlap` advance (stride > 0)."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need size >= 1 and 0 <= overlap < size, got {size}, {overlap}")


def window_count(n_tokens: int, size: int, overlap: int) -> int:
    """How many windows `cut` makes of a text of `n_tokens` tokens (the count alone, so that
    the counting pass keeps no strings)."""
    if n_tokens <= size:
        return 1
    return -(-(n_tokens - size) // (size - overlap)) + 1


def cut(text: str, offsets, size: int, overlap: int) -> list[str]:
    """`text` (whose tokens have these character `offsets`) as windows: see `windows`."""
    if len(offsets) <= size:
        return [text.strip()]
    out, stride = [], size - overlap
    for start in range(0, len(offsets), stride):
        end = min(start + size, len(offsets))
        out.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            break
    return out


def windows(tok: tokenizers.Tokenizer, text: str, size: int, overlap: int) -> list[str]:
    """`text` as substrings of at most `size` tokens, consecutive ones sharing `overlap`
    tokens; the last window ends at the text's end. An empty text is one empty chunk."""
    check_window(size, overlap)
    return cut(text, tok.encode(text, add_special_tokens=False).offsets, size, overlap)


def tokenizer_hash(tok: tokenizers.Tokenizer) -> str:
    """sha256 of the tokenizer's JSON: another vocabulary cuts other windows."""
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()


class ChunkSource:
    """The chunks of `source`'s documents as a `CorpusSource`, computed on read.

    Row r is window j of document i, where offsets[i] <= r < offsets[i + 1] and
    j = r - offsets[i]; its id is f"{doc_id}#{j}" and its text f"{title} {window}".strip()
    (a Doc with an empty title). `size` counts the text's tokens; the title's come on top (keep
    size + title <= the tower's max length). Every host builds the same counts from the same
    source, so a host's chunk range [lo, hi) names the same chunks everywhere.

    The tokenizer must not pad (`tokenization.load_tokenizer` switches padding off): windows
    are cut from batch encodings."""

    def __init__(self, source, tok: tokenizers.Tokenizer, size: int, overlap: int):
        check_window(size, overlap)
        self.source, self.tok, self.size, self.overlap = source, tok, int(size), int(overlap)
        n = len(source)
        self.counts = np.zeros(n, np.int32)
        for lo in range(0, n, READ_BLOCK):  # tokenised once; only the counts are kept
            hi = min(lo + READ_BLOCK, n)
            texts = [d.text or "" for d in source.read(lo, hi)[1]]
            encs = tok.encode_batch(texts, add_special_tokens=False)
            self.counts[lo:hi] = [window_count(len(e.offsets), size, overlap) for e in encs]
        self.offsets = np.zeros(n + 1, np.int64)
        np.cumsum(self.counts, out=self.offsets[1:])
        self._fp = None
        self._last = None  # (row, id, Doc): the document a straddling read starts with

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def num_docs(self) -> int:
        return len(self.counts)

    @property
    def max_per_doc(self) -> int:
        return int(self.counts.max(initial=0))

    def parent(self, rows) -> np.ndarray:
        """Document row of each chunk row."""
        return np.searchsorted(self.offsets, np.asarray(rows, np.int64), side="right") - 1

    def read(self, start: int, stop: int) -> tuple[list[str], list[Doc]]:
        start, stop = max(int(start), 0), min(int(stop), len(self))
        if start >= stop:
            return [], []
        first, last = (int(p) for p in self.parent([start, stop - 1]))
        rows, docs = self._docs(first, last + 1)
        encs = self.tok.encode_batch([d.text or "" for d in docs], add_special_tokens=False)
        ids, out = [], []
        for i, doc_id, doc, enc in zip(range(first, last + 1), rows, docs, encs, strict=True):
            ws = cut(doc.text or "", enc.offsets, self.size, self.overlap)
            if len(ws) != self.counts[i]:
                raise ValueError(f"document {doc_id!r} changed since its windows were counted")
            base = int(self.offsets[i])
            for j in range(max(start - base, 0), min(stop - base, len(ws))):
                ids.append(f"{doc_id}{SEP}{j}")
                out.append(Doc("", f"{doc.title or ''} {ws[j]}".strip()))
        return ids, out

    def _docs(self, lo: int, hi: int):
        """Documents [lo, hi) of the source. A chunk range that starts inside the document the
        previous read ended with reuses it, so consecutive reads stay a forward pass (a gzipped
        source reopens its file on any backward read)."""
        if self._last is not None and self._last[0] == lo:
            ids, docs = self.source.read(lo + 1, hi) if hi > lo + 1 else ([], [])
            ids, docs = [self._last[1], *ids], [self._last[2], *docs]
        else:
            ids, docs = self.source.read(lo, hi)
        self._last = (hi - 1, ids[-1], docs[-1])
        return ids, docs

    def chunk_id(self, row: int, doc_ids) -> str:
        """The id of chunk `row`, from the documents' ids (no chunk id list)."""
        i = int(self.parent([row])[0])
        return f"{doc_ids[i]}{SEP}{row - int(self.offsets[i])}"

    def fingerprint(self) -> str:
        """The source's fingerprint + tokenizer + size + overlap (embedding cache keys)."""
        if self._fp is None:
            key = ["chunks-v1", self.source.fingerprint(), tokenizer_hash(self.tok)]
            self._fp = hashlib.sha256(json.dumps([*key, self.size, self.overlap]).encode())
            self._fp = self._fp.hexdigest()
        return self._fp

    def stats(self) -> dict[str, float]:
        """Docs, chunks, chunks per doc (mean, max) for logs and reports."""
        n = self.num_docs
        return {
            "docs": n,
            "chunks": len(self),
            "chunks_per_doc": round(len(self) / max(n, 1), 3),
            "max_chunks_per_doc": self.max_per_doc,
        }


class ChunkIds:
    """The chunk ids of a `ChunkSource` as a read-only sequence, computed per item: what an
    index saved with `--save_index` names its rows with."""

    def __init__(self, chunks: ChunkSource, doc_ids):
        self.chunks, self.doc_ids = chunks, doc_ids

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, row: int) -> str:
        if not 0 <= row < len(self):
            raise IndexError(row)
        return self.chunks.chunk_id(row, self.doc_ids)

    def __iter__(self):
        for doc_id, m in zip(self.doc_ids, self.chunks.counts, strict=True):
            for j in range(int(m)):
                yield f"{doc_id}{SEP}{j}"


def chunk_depth(k: int, chunks: ChunkSource) -> int:
    """Chunks to retrieve for an exact MaxP top-k: (k - 1) * max chunks per doc + 1."""
    return min(len(chunks), (max(k, 1) - 1) * chunks.max_per_doc + 1)


def max_p(
    run: Mapping[str, Mapping[int, float]], chunks: ChunkSource, doc_ids, k: int
) -> dict[str, dict[str, float]]:
    """A run over chunk ROWS (query -> {chunk row: score}) as a document run: each document's
    best chunk score, top `k` per query (ties keep the chunk run's order)."""
    out = {}
    for q, hits in run.items():
        parents = chunks.parent(list(hits))
        best: dict[str, float] = {}
        for p, s in zip(parents, hits.values(), strict=True):
            d = doc_ids[int(p)]
            if d not in best or s > best[d]:
                best[d] = float(s)
        top = sorted(best.items(), key=lambda kv: -kv[1])[:k]
        out[q] = dict(top)
    return out
