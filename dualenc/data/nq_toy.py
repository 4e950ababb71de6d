"""data/nq-toy: a small, real NQ retrieval training set (DPR JSON + BEIR views), built here.

From the 2,655 NQ-Open questions with their gold passage (nq-open-oracle), split by passage so
questions that share one stay together, with BM25 hard negatives mined inside each split (so
training never reads dev/test gold passages) that contain no answer string. Output is
deterministic: a rebuild is byte-identical. `answer_pattern` is also the hard-negative miner's
answer filter. The command is `python -m dualenc.data.build_nq_toy --out data/nq-toy`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from dualenc.data.examples import passage_text
from dualenc.io import InputError, atomic_dir, data_dir, read_jsonl

SPLITS = ("train", "dev", "test")


def read_source(path: Path):
    """(questions [(qid, question, answers, pid)], passages [(pid, title, text)]) in file order.

    Passage ids p<i> / query ids q<line-1> follow the shared nq-open-oracle/beir view.
    """
    questions, pid_of = [], {}
    for lineno, obj in read_jsonl(path):
        ctxs = obj.get("ctxs")
        if not isinstance(ctxs, list) or len(ctxs) != 1:
            raise InputError(
                "expected exactly one gold passage", path=path, line=lineno, field="ctxs"
            )
        key = (ctxs[0]["title"], ctxs[0]["text"])
        pid = pid_of.setdefault(key, f"p{len(pid_of)}")
        answers = [str(a) for a in obj.get("answers", [])]
        questions.append((f"q{lineno - 1}", obj["question"].strip(), answers, pid))
    passages = [(pid, title, text) for (title, text), pid in pid_of.items()]
    return questions, passages


def canonical_ids(passages) -> dict[str, str]:
    """pid → first pid with the same encoded text (two upstream passages differ only by a
    trailing newline): such passages are one passage for splitting and mining."""
    first: dict[str, str] = {}
    return {pid: first.setdefault(passage_text(t, x), pid) for pid, t, x in passages}


def split_by_passage(
    questions, canon: dict[str, str], seed: int, num_train: int, num_dev: int
) -> dict[str, set[str]]:
    """Seeded passage-group split: train until ≥ num_train questions, dev ≥ num_dev, rest test."""
    groups: dict[str, list[str]] = {}
    for qid, _, _, pid in questions:
        groups.setdefault(canon[pid], []).append(qid)
    pids = sorted(groups, key=lambda p: int(p[1:]))
    order = np.random.default_rng(seed).permutation(len(pids))
    out = {s: set() for s in SPLITS}
    for i in order:
        split = (
            "train"
            if len(out["train"]) < num_train
            else ("dev" if len(out["dev"]) < num_dev else "test")
        )
        out[split].update(groups[pids[i]])
    return out


def answer_pattern(answers: list[str]) -> re.Pattern | None:
    """Case-insensitive whole-word match of any answer (so the answer 'S' is not every 's')."""
    alts = [re.escape(a.strip()) for a in answers if a.strip()]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.I) if alts else None


def mine_negatives(
    questions, passages, canon: dict[str, str], allowed: set[str], num_neg: int
) -> dict[str, list[str]]:
    """qid → top BM25 passages among `allowed` that are not gold and contain no answer."""
    import bm25s

    cand = [p for p in passages if p[0] in allowed]
    texts = [passage_text(t, x) for _, t, x in cand]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    out = {}
    q_tokens = bm25s.tokenize(
        [q[1] for q in questions], stopwords="en", return_ids=False, show_progress=False
    )
    for (qid, _, answers, gold), toks in zip(questions, q_tokens, strict=True):
        scores = retriever.get_scores(toks) if toks else np.zeros(len(cand), np.float32)
        order = np.lexsort((np.arange(len(cand)), -scores.astype(np.float64)))
        pat = answer_pattern(answers)
        negs, used = [], {canon[gold]}
        for j in order:
            if canon[cand[j][0]] in used or (pat and pat.search(texts[j])):
                continue
            used.add(canon[cand[j][0]])
            negs.append(cand[j][0])
            if len(negs) == num_neg:
                break
        out[qid] = negs
    return out


def _ctx(p) -> dict:
    pid, title, text = p
    return {"title": title, "text": text, "passage_id": pid}


def _dpr_json(records: list[dict]) -> str:
    """A JSON list with one record per line: valid JSON, and diffs stay per question."""
    lines = [json.dumps(r, ensure_ascii=False, sort_keys=False) for r in records]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def _jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _source_commit(source_md: Path) -> str:
    m = re.search(r"commit ([0-9a-f]{40})", source_md.read_text(encoding="utf-8"))
    if not m:
        raise InputError("no source commit found", path=source_md)
    return m.group(1)


def build_files(
    src_dir: Path,
    *,
    seed: int = 0,
    num_train: int = 2000,
    num_dev: int = 300,
    num_hard_negatives: int = 3,
) -> dict[str, str]:
    """All output files as {relative path: text}, a pure function of the source and arguments."""
    src = src_dir / "nq-open-oracle.jsonl.gz"
    questions, passages = read_source(src)
    by_id = {p[0]: p for p in passages}
    canon = canonical_ids(passages)
    splits = split_by_passage(questions, canon, seed, num_train, num_dev)
    files: dict[str, str] = {}
    counts = {}
    for split in SPLITS:
        qs = [q for q in questions if q[0] in splits[split]]
        allowed = {q[3] for q in qs}
        negs = mine_negatives(qs, passages, canon, allowed, num_hard_negatives)
        records = [
            {
                "qid": qid,
                "question": question,
                "answers": answers,
                "positive_ctxs": [_ctx(by_id[pid])],
                "negative_ctxs": [],
                "hard_negative_ctxs": [_ctx(by_id[n]) for n in negs[qid]],
            }
            for qid, question, answers, pid in qs
        ]
        files[f"{split}.json"] = _dpr_json(records)
        files[f"qrels/{split}.tsv"] = "query-id\tcorpus-id\tscore\n" + "".join(
            f"{qid}\t{pid}\t1\n" for qid, _, _, pid in qs
        )
        counts[split] = (len(qs), len(allowed), sum(len(negs[q[0]]) for q in qs))
    files["corpus.jsonl"] = _jsonl({"_id": p, "title": t, "text": x} for p, t, x in passages)
    files["queries.jsonl"] = _jsonl(
        {"_id": q, "text": text, "metadata": {"answers": a}} for q, text, a, _ in questions
    )
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    files["README.md"] = _readme(
        counts,
        len(passages),
        len(questions),
        seed,
        num_hard_negatives,
        _source_commit(src_dir / "SOURCE.md"),
        sha,
    )
    return files


def _readme(counts, n_passages, n_questions, seed, k, commit, sha) -> str:
    rows = "\n".join(f"| {s} | {q:,} | {p:,} | {n:,} |" for s, (q, p, n) in counts.items())
    return f"""# nq-toy: a small real NQ retrieval set for dualenc (generated, do not edit)

Generated by `python -m dualenc.data.build_nq_toy --out data/nq-toy` (seed {seed}); a rebuild is
byte-identical. {n_questions:,} Natural Questions (NQ-Open) questions, each with its gold
passage (the NQ-annotated long-answer paragraph, chunked to about 100 words), {n_passages:,}
unique passages.

| split | questions | gold passages | hard negatives |
|---|---:|---:|---:|
{rows}

- Splits are seeded and made by passage: questions that share a gold passage are in the same split.
- `train.json`, `dev.json`, `test.json`: DPR format (a JSON list, one question per line) with
  `qid`, `question`, `answers`, 1 `positive_ctxs`, up to {k} `hard_negative_ctxs`: the top BM25
  passages (bm25s, English stop words, title + text) among the SAME split's passages, excluding
  the gold passage and every passage containing an answer string (case-insensitive, as whole
  words). Mining inside the split keeps dev/test passages out of training. `negative_ctxs` is
  empty.
- BEIR views for `dualenc.evaluate`: `corpus.jsonl` (all {n_passages:,} passages, ids as in the
  shared `nq-open-oracle/beir` view), `queries.jsonl` (all questions, `metadata.answers`),
  `qrels/{{train,dev,test}}.tsv` (one relevant passage per question).
- Retrieval over {n_passages:,} gold passages is far easier than over full Wikipedia: use it for
  demos and regression tests, not for comparison with published NQ numbers.

## ATTRIBUTION and license
- Questions and answers: Natural Questions (Kwiatkowski et al., 2019), NQ-Open setting (Lee et
  al., 2019); license CC BY-SA 3.0.
- Passages: Wikipedia text, license CC BY-SA (3.0 as distributed with Natural Questions).
- Processed file: `qa_data/nq-open-oracle.jsonl.gz` from the *Lost in the Middle* repository
  (Liu et al., 2023), github.com/nelson-liu/lost-in-the-middle, MIT license, at commit
  `{commit}`;
  sha256 of the file read: `{sha}`.
- This derived data set (splits, BM25 negatives, BEIR views) is made by
  `dualenc/data/build_nq_toy.py` and is distributed under CC BY-SA 3.0 (share-alike).
"""


def write(out: str | Path, files: dict[str, str]) -> None:
    """Writes all files into `out` atomically (a crash leaves any previous build intact)."""
    with atomic_dir(out) as tmp:
        Path(tmp).chmod(0o755)
        for rel, text in sorted(files.items()):
            path = Path(tmp) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))


def build(
    out: str | Path,
    src: str | Path | None = None,
    *,
    seed: int = 0,
    num_train: int = 2000,
    num_dev: int = 300,
    num_hard_negatives: int = 3,
) -> dict[str, str]:
    """Builds the set from `src` (default: <data_dir>/nq-open-oracle) into `out`; returns its
    files as {relative path: text}."""
    src_dir = Path(src) if src else data_dir() / "nq-open-oracle"
    files = build_files(
        src_dir,
        seed=seed,
        num_train=num_train,
        num_dev=num_dev,
        num_hard_negatives=num_hard_negatives,
    )
    write(out, files)
    return files
