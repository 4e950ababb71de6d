"""STS-B test set: dualenc's all-MiniLM-L6-v2 reproduces the published Spearman of 82.03."""

import numpy as np
import pytest

from dualenc.inference.encode import encode_texts
from dualenc.io import data_dir
from dualenc.models.loading import load_encoder


def read_sts(path) -> tuple[list[str], list[str], np.ndarray]:
    """(sentences 1, sentences 2, gold scores) from an STS-B csv: tab-separated, no quoting.

    Columns: genre, file, year, id, score, s1, s2 (some rows carry two extra source columns).
    """
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 7:
                raise ValueError(f"{path}:{lineno}: expected ≥ 7 tab-separated columns")
            scores.append(float(cols[4]))
            s1.append(cols[5])
            s2.append(cols[6])
    return s1, s2, np.asarray(scores)


@pytest.mark.slow
@pytest.mark.data
def test_stsb_spearman_minilm(minilm_path):
    from scipy.stats import spearmanr

    s1, s2, gold = read_sts(data_dir() / "stsbenchmark" / "sts-test.csv")
    assert len(gold) == 1379 and gold.min() >= 0 and gold.max() <= 5
    enc = load_encoder(minilm_path)
    emb = encode_texts(enc, s1 + s2, batch_size=64, progress=False)  # (2N, D), unit norm
    a, b = emb[: len(s1)], emb[len(s1) :]
    cos = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    rho = spearmanr(cos, gold).statistic * 100
    print(f"STS-B test Spearman(cos) x 100 = {rho:.3f}")
    assert rho == pytest.approx(82.03, abs=0.05), rho
