"""Distillation wiring and bad input for the training strategies: teacher scores reach the batch
aligned with their candidates; a teacher-score file that does not match its candidates fails
naming file:line, also as exit 2 from `python -m dualenc.train`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dualenc.data.pipeline import TrainPipeline
from dualenc.data.st_format import load_st_jsonl
from dualenc.io import InputError
from dualenc.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
WORDS = "apple river stone cloud tiger piano garden rocket silver forest castle ocean".split()


def _records(n: int = 8) -> list[dict]:
    """Query i: positive 'w p<i>' (score 10+i), negatives 'w n<i>a' / 'w n<i>b' (i, i/10)."""
    out = []
    for i in range(n):
        w = WORDS[i % len(WORDS)]
        out.append(
            {
                "qid": f"q{i}",
                "query": f"{w} query {i}",
                "positive": [f"{w} p{i}"],
                "negative": [f"{w} n{i}a", f"{w} n{i}b"],
                "scores": [10.0 + i, float(i), i / 10],
            }
        )
    return out


def _write(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    "scores, what",
    [
        ([1.0, 0.5], "missing"),  # 3 candidates, 2 scores
        ([1.0, 0.5, 0.2, 0.1], "extra"),
        ([1.0, "high", 0.2], "not a number"),
        ([1.0, float("nan"), 0.2], "non-finite"),
    ],
)
def test_teacher_scores_not_matching_candidates_name_file_line(tmp_path, scores, what):
    recs = _records(3)
    recs[1]["scores"] = scores
    path = _write(tmp_path / f"{what.replace(' ', '_')}.jsonl", recs)
    with pytest.raises(InputError, match=rf"{path.name}:2 field 'scores'.*3 finite numbers"):
        load_st_jsonl(path)


def test_teacher_scores_on_some_lines_only(tmp_path):
    recs = _records(3)
    del recs[2]["scores"]
    path = _write(tmp_path / "partial.jsonl", recs)
    with pytest.raises(InputError, match=rf"{path.name}:3 field 'scores'"):
        load_st_jsonl(path)


def test_teacher_scores_reach_the_batch_with_their_candidates(tmp_path, minilm_path):
    """Every (row, column) of teacher_scores is the score of the passage in p[row, column]."""
    path = _write(tmp_path / "mined.jsonl", _records(8))
    tok = load_tokenizer(minilm_path)
    pipe = TrainPipeline(
        None, tok, path=path, format="st_jsonl", global_batch_size=4, num_negatives=2,
        q_max_length=8, p_max_length=8, seed=3, process_index=0, process_count=1,
    )  # fmt: skip
    want = {}
    for r in _records(8):
        for text, s in zip([*r["positive"], *r["negative"]], r["scores"], strict=True):
            want[text] = s
    seen = 0
    for _ in range(2):
        batch = next(pipe)
        ids, scores = batch["p_input_ids"], batch["teacher_scores"]
        assert scores.shape == ids.shape[:2] == (4, 3)
        for i in range(4):
            for j in range(3):
                text = tok.decode([int(t) for t in ids[i, j] if t not in (0, 101, 102)])
                np.testing.assert_allclose(scores[i, j], want[text], rtol=1e-6)
                seen += 1
    assert seen == 24


def test_train_cli_teacher_mismatch_is_exit_2(tmp_path):
    recs = _records(8)
    recs[4]["scores"] = recs[4]["scores"][:2]
    path = _write(tmp_path / "bad_teacher.jsonl", recs)
    cmd = [sys.executable, "-m", "dualenc.train", "--config", str(REPO / "configs/tiny.py")]
    cmd += [
        "--workdir", str(tmp_path / "w"), f"--config.data.train.path={path}",
        "--config.data.train.format=st_jsonl", "--config.loss.name=margin_mse",
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"{path}:5 field 'scores'" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
