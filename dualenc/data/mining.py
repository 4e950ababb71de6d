"""Hard-negative mining for BEIR-format training data: BM25 top hits minus the judged positives.

DPR's recipe: the negatives of a query are lexically close passages that are not judged relevant.
`mine_depth` candidates per query are kept for the pipeline to sample from each epoch; the top
`mine_skip` hits are skipped (on sparse judgements they are often unjudged positives).
"""

from __future__ import annotations

from absl import logging

from dualenc.data.beir import load_beir
from dualenc.data.examples import TrainExample, passage_text
from dualenc.data.st_format import examples_from_beir
from dualenc.index.bm25 import BM25Index


def bm25_negatives(ds, depth: int, skip: int = 0) -> dict[str, list[str]]:
    """{query id: up to `depth` BM25-ranked doc ids, after `skip`, never a judged positive}.

    Documents with no title and no text are never retrieved (they share no term) and are counted
    in one warning.
    """
    doc_ids = list(ds.corpus)
    texts = [passage_text(ds.corpus[d].title, ds.corpus[d].text) for d in doc_ids]
    empty = sum(not t.strip() for t in texts)
    if empty:
        logging.warning("mining: %d of %d documents are empty (never negatives)", empty, len(texts))
    index = BM25Index.build(texts)
    qids = [q for q in ds.qrels if q in ds.queries]
    _, rows = index.search_texts([ds.queries[q] for q in qids], depth + skip + 10)
    out = {}
    for q, r in zip(qids, rows, strict=True):
        judged = ds.qrels[q]
        cand = [doc_ids[i] for i in r if i >= 0 and judged.get(doc_ids[i], 0) <= 0]
        out[q] = cand[skip : skip + depth]
    return out


def beir_examples_with_negatives(path: str, split: str, *, depth: int, skip: int = 0):
    """TrainExamples of a BEIR split whose negatives are BM25-mined (see `bm25_negatives`)."""
    ds = load_beir(path, split)
    examples: list[TrainExample] = examples_from_beir(ds, bm25_negatives(ds, depth, skip))
    return examples
