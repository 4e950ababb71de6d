"""Derived BEIR splits for honest model selection: a dev split carved from train, and the check
that a mined file only holds queries of the split it trains on.

SciFact (and other BEIR sets) ship no dev split, so a dev split is carved from TRAIN (a seeded
permutation of its query ids) and written as a derived BEIR dir with the corpus and queries
symlinked: recipes and studies choose on dev, never on test (`configs/scifact.py`, the study).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dualenc import io
from dualenc.data.beir import load_qrels, qrels_path
from dualenc.io import InputError
from dualenc.training.config import ConfigError

TRAIN_SPLIT, DEV_SPLIT = "train_carved", "dev_carved"


def carve_dev(root, out, *, source_split: str, test_split: str, fraction: float, seed: int):
    """Writes the derived BEIR dir `out`: train_carved / dev_carved from `source_split` (a
    seeded permutation of its sorted query ids; queries also judged in the test split are
    dropped), the test split copied. Returns (train qids, dev qids), both sorted."""
    if not 0 < fraction < 1:
        raise ConfigError(f"carve.fraction={fraction} must be in (0, 1)")
    root, out = Path(root), Path(out)
    source = load_qrels(qrels_path(root, source_split))
    test = load_qrels(qrels_path(root, test_split))
    qids = sorted(q for q in source if q not in test)
    perm = np.random.default_rng(int(seed)).permutation(len(qids))
    n_dev = max(1, int(round(fraction * len(qids))))
    dev = sorted(qids[i] for i in perm[:n_dev])
    train = sorted(qids[i] for i in perm[n_dev:])
    if not train:
        raise ConfigError(f"carve.fraction={fraction} leaves no training query")
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "corpus.jsonl.gz", "queries.jsonl", "queries.jsonl.gz"):
        src, dst = root / name, out / name
        if src.exists() and not dst.exists():
            dst.symlink_to(src.resolve())
    for split, keep, qrels in ((TRAIN_SPLIT, train, source), (DEV_SPLIT, dev, source)):
        write_qrels(out / "qrels" / f"{split}.tsv", {q: qrels[q] for q in keep})
    write_qrels(out / "qrels" / f"{test_split}.tsv", test)
    return train, dev


# The SciFact dev carve shared by the study, configs/scifact.py and configs/armargin_scifact.py.
SCIFACT_CARVE = {"source_split": "train", "test_split": "test", "fraction": 0.2, "seed": 20261123}


def ensure_carved(root, out, **carve) -> str:
    """`out` holding the carve of `root` (written once; same seed => same split); for configs
    that train on the carved train split and evaluate on the carved dev."""
    out = Path(out)
    if not (out / "qrels" / f"{DEV_SPLIT}.tsv").exists():
        carve_dev(root, out, **{**SCIFACT_CARVE, **carve})
    return str(out)


def write_qrels(path: Path, qrels: dict) -> None:
    """A BEIR qrels TSV (header, one judged pair a line), written atomically."""
    with io.atomic_write(path) as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q, docs in qrels.items():
            for d, s in docs.items():
                f.write(f"{q}\t{d}\t{s}\n")


def check_mined_qids(path, qids: set[str]) -> None:
    """Raises InputError (file:line field 'qid') at the first record of a mined DPR JSON / ST
    JSONL file whose query id is not in `qids`, or that has no qid."""
    path = Path(path)
    if not path.exists():
        raise InputError("mined file not found", path=path)
    with io.open_text(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            items = list(enumerate(json.loads(text)))  # entry index, as the DPR reader names it
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON ({e.msg})", path=path, line=e.lineno) from None
    else:
        items = [(n, json.loads(ln)) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    for line, obj in items:
        qid = obj.get("qid") if isinstance(obj, dict) else None
        if qid is None or str(qid) not in qids:
            raise InputError(
                f"query id {qid!r} is not a query of the training split", path=path, line=line,
                field="qid",
            )  # fmt: skip
