"""TSDAE data: unlabeled sentences, their noisy copies and the per-host batches of both.

Sentences come from a text file (one per line, `.gz` allowed) or a BEIR corpus whose documents
are split into sentences. The noise is TSDAE's: delete each word with probability `del_ratio`
(0.6 in the paper), keeping at least one. Words and punctuation are split as NLTK's
`word_tokenize` does for plain text and joined with spaces: a BERT tokenizer splits punctuation
itself, so "a , b" and "a, b" give the same ids, and no NLTK download is needed. The noise of
sentence i in epoch e is drawn from rng(seed, e, i), so a resumed run sees the same batches.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from dualenc import tokenization
from dualenc.data.beir import load_corpus
from dualenc.data.stepped import SteppedBatches
from dualenc.io import InputError

WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")
# A sentence ends at . ! or ? (and any closing quotes/brackets) before whitespace and a capital,
# digit or opening quote/bracket, unless the period ends a known abbreviation or an initial.
SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s+[\"'(\[]?[A-Z0-9])")
ABBREVIATIONS = frozenset(
    "al approx cf dr e.g eq eqs etc fig figs i.e mr mrs ms no nos prof ref refs resp st vs".split()
)
BUCKET = 16  # padded lengths are multiples of this: few compiled shapes


def split_sentences(text: str) -> list[str]:
    """`text` cut after sentence-final punctuation; whitespace-only pieces dropped."""
    out, start = [], 0
    for m in SENTENCE_END.finditer(text):
        word = text[: m.start()].rsplit(None, 1)[-1] if text[: m.start()].strip() else ""
        if m.group()[0] == "." and (word.lower() in ABBREVIATIONS or re.fullmatch(r"[A-Z]", word)):
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [x for x in out if x]


def read_sentences(path: str, fmt: str, min_chars: int = 10) -> list[str]:
    """Training sentences: 'text' (one per line) or 'beir' (corpus title/text → sentences);
    shorter than `min_chars` dropped (as sentence-transformers' TSDAE example does), order
    kept, duplicates kept."""
    p = Path(path)
    if fmt == "text":
        if not p.is_file():
            raise InputError("no such sentence file", path=path)
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8") as f:
            sentences = [line.strip() for line in f]
    elif fmt == "beir":
        corpus_file = p / "corpus.jsonl" if p.is_dir() else p
        if p.is_dir() and not corpus_file.exists():
            corpus_file = p / "corpus.jsonl.gz"
        if not corpus_file.exists():
            raise InputError("no corpus.jsonl[.gz] for tsdae.format='beir'", path=path)
        sentences = []
        for doc in load_corpus(corpus_file, allow_empty=True).values():
            if doc.title.strip():
                sentences.append(doc.title.strip())
            sentences.extend(split_sentences(doc.text))
    else:
        raise ValueError(f"unknown sentence format {fmt!r} (text | beir)")
    out = [s for s in sentences if len(s) >= min_chars]
    if not out:
        raise InputError(f"no sentence of at least {min_chars} characters", path=path)
    return out


def delete_words(text: str, ratio: float, rng: np.random.Generator) -> str:
    """TSDAE's noise: each word (or punctuation mark) deleted with probability `ratio`; at least
    one kept; a text without words is returned as it is."""
    words = WORD.findall(text)
    if not words:
        return text
    keep = rng.random(len(words)) > ratio
    if not keep.any():
        keep[int(rng.integers(len(words)))] = True
    return " ".join(w for w, k in zip(words, keep, strict=True) if k)


class DenoisingPipeline(SteppedBatches):
    """Per-host batches {src_ids, src_mask (b, Ls): the noisy sentences; tgt_ids, tgt_mask
    (b, Lt): the originals}; shuffled per epoch, the last partial batch dropped."""

    def __init__(
        self,
        sentences: Sequence[str],
        tokenizer,
        *,
        global_batch_size: int,
        max_length: int,
        del_ratio: float,
        seed: int,
        process_index: int | None = None,
        process_count: int | None = None,
        source: str | None = None,
    ):
        self.sentences, self.tok = list(sentences), tokenizer
        self.global_batch, self.max_length = int(global_batch_size), int(max_length)
        self.ratio, self.seed = float(del_ratio), int(seed)
        self.pi = jax.process_index() if process_index is None else int(process_index)
        self.pc = jax.process_count() if process_count is None else int(process_count)
        if self.global_batch % self.pc:
            raise ValueError(f"batch {self.global_batch} not divisible by {self.pc} processes")
        if len(self.sentences) < self.global_batch:
            raise InputError(
                f"{len(self.sentences)} sentences are fewer than one batch "
                f"(train.batch_size={self.global_batch})",
                path=source,
            )
        self._step = 0

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sentences) // self.global_batch

    def texts_at(self, step: int) -> tuple[list[str], list[str]]:
        """(noisy, original) texts of this host's rows of global step `step`."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.sentences))
        rows = order[pos * self.global_batch : (pos + 1) * self.global_batch]
        b = self.global_batch // self.pc
        rows = rows[self.pi * b : (self.pi + 1) * b]
        originals = [self.sentences[int(i)] for i in rows]
        noisy = [
            delete_words(t, self.ratio, np.random.default_rng([self.seed, epoch, int(i), 7]))
            for t, i in zip(originals, rows, strict=True)
        ]
        return noisy, originals

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        noisy, originals = self.texts_at(step)
        pad = tokenization.pad_id(self.tok)
        out = {}
        for side, texts in (("src", noisy), ("tgt", originals)):
            seqs = tokenization.tokenize(self.tok, texts, self.max_length)
            # every host pads to max_length's bucket of its own longest: shapes must agree
            length = self._bucket(max(len(s) for s in seqs)) if self.pc == 1 else self.max_length
            out[f"{side}_ids"], out[f"{side}_mask"] = tokenization.pad_batch(seqs, length, pad)
        return out

    def _bucket(self, longest: int) -> int:
        return min(-(-longest // BUCKET) * BUCKET, self.max_length)
