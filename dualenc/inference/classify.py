"""Sentence-pair classification with a cross-encoder (the library behind `python -m
dualenc.classify`; also what cross-encoder training evaluates with).

MODEL is a transformers `*ForSequenceClassification` dir (BERT / DistilBERT / DeBERTa). For two
labels the score is logit[1] - logit[0] (one label: the logit) and a pair is positive when the
score reaches the threshold: 0 (the argmax) by default, or the one that maximises F1 on a dev
file, applied unchanged to the test file. With more labels the prediction is the argmax.
`classify_files` writes metrics.json, report.md, confusion.png and predictions.jsonl atomically
from process 0; `graded_files` reads graded labels (STS-B 0-5) and reports the Spearman and
Pearson x 100 of a 1-logit model's sigmoid scores (the `cross.label_scale` training figure).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from dualenc import metrics, multihost, tokenization
from dualenc.data import pairs as pairs_lib
from dualenc.inference import rerank
from dualenc.inference.batching import Placer, default_mesh, put
from dualenc.io import InputError, atomic_write, write_json
from dualenc.models import loading


def label_names(model_dir: str | os.PathLike, num_labels: int) -> list[str]:
    """Class names by id from the model's config.json `id2label` (LABEL_i where unset); a
    one-logit model is a binary classifier with classes '0' and '1'."""
    if num_labels == 1:
        return ["0", "1"]
    root = loading.resolve_model_dir(model_dir)
    cfg = loading.read_json(root / "config.json", what="config.json (the model config)")
    id2label = {int(k): str(v) for k, v in (cfg.get("id2label") or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]


def predict_logits(
    rr: rerank.Reranker,
    text_a: Sequence[str],
    text_b: Sequence[str],
    *,
    batch_size: int = 64,
    mesh: Mesh | None = None,
    buckets: Sequence[int] = tokenization.DEFAULT_BUCKETS,
    progress: bool = False,
    symmetric: bool = False,
) -> np.ndarray:
    """(N, num_labels) float32 logits in input order: length-bucketed jitted batches, sharded
    over all devices (of all hosts) like `encode.encode_texts`, so shapes stay few.
    `symmetric`: the mean of the logits of (a, b) and (b, a) (paraphrase / duplicate tasks)."""
    if symmetric:
        kw = dict(batch_size=batch_size, mesh=mesh, buckets=buckets, progress=progress)
        both = predict_logits(rr, list(text_a) + list(text_b), list(text_b) + list(text_a), **kw)
        n = len(text_a)
        return (both[:n] + both[n:]) / 2
    ids, types = tokenization.tokenize_pairs(rr.tokenizer, text_a, text_b, rr.max_length)
    out = np.zeros((len(ids), rr.ce.num_labels), np.float32)
    placer = Placer(rr.params, mesh if mesh is not None else default_mesh())
    pad = tokenization.pad_id(rr.tokenizer)
    batches = tokenization.bucket_batches(
        [len(s) for s in ids], batch_size, buckets, max_length=rr.max_length
    )
    bar = tqdm(total=len(ids), desc="classify", disable=not progress or not multihost.is_main())
    for idx, padded in batches:
        b_ids, mask = tokenization.pad_batch([ids[i] for i in idx], padded, pad)
        b_types, _ = tokenization.pad_batch([types[i] for i in idx], padded, 0)
        rows, n = placer.rows(len(idx), batch_size), len(idx)
        if rows > n:  # filler rows: one attended [PAD] each, discarded below
            fill = ((0, rows - n), (0, 0))
            b_ids, mask, b_types = (
                np.pad(a, fill, constant_values=c)
                for a, c in ((b_ids, pad), (mask, 0), (b_types, 0))
            )
            mask[n:, 0] = 1
        params, d_ids, d_mask = placer.put(b_ids, mask)
        logits = rr.score_logits(params, d_ids, d_mask, put(b_types, d_ids.sharding))
        out[idx] = multihost.to_host(logits)[:n]
        bar.update(n)
    bar.close()
    return out


def scores_of(logits: np.ndarray) -> np.ndarray:
    """Binary decision score: the logit (1 label) or logit[1] - logit[0] (2 labels)."""
    return rerank.relevance(logits)


def graded_scores(logits: np.ndarray) -> np.ndarray:
    """A 1-logit model's graded score in [0, 1]: sigmoid(logit), as 0.5 (1 + tanh(z / 2)) (no
    exp overflow for very negative logits)."""
    return 0.5 * (1 + np.tanh(np.asarray(logits)[:, 0] / 2))


def predict(logits: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class ids: score >= threshold for binary models, else the argmax."""
    if threshold is None:
        return np.argmax(logits, axis=-1).astype(np.int32)
    return (scores_of(logits) >= threshold).astype(np.int32)


def split_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> dict:
    """Accuracy, binary (positive = class 1) and macro P/R/F1, per-class figures, confusion."""
    ids = list(range(max(len(names), 2)))
    names = [*names, *(f"LABEL_{i}" for i in range(len(names), len(ids)))]
    m = metrics.classification_metrics(y_true.tolist(), y_pred.tolist(), ids)
    m["labels"] = list(names)
    m["per_class"] = {names[int(k)]: v for k, v in m["per_class"].items()}
    if len(ids) == 2:
        m["binary"] = metrics.binary_metrics(y_true, y_pred)
    m["num_examples"] = len(y_true)
    return m


def classify_files(
    model: str,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dev: str | os.PathLike | None = None,
    columns: tuple[str | None, str | None, str | None] = (None, None, None),
    names: Sequence[str] | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    symmetric: bool = False,
) -> dict:
    """Scores `data` (threshold from `dev` when given), writes OUT_DIR; returns metrics.json."""
    a, b, y = columns
    test = pairs_lib.read_pairs(data, text_a=a, text_b=b, label=y)  # bad input fails first
    dev_pairs = pairs_lib.read_pairs(dev, text_a=a, text_b=b, label=y) if dev else None
    rr = rerank.load_reranker(model, dtype=dtype, max_length=max_length)
    k = rr.ce.num_labels
    names = list(names) if names else label_names(model, k)
    if len(names) != max(k, 2):
        raise InputError(f"{len(names)} label names for a {k}-label model", field="label_names")
    y_test = pairs_lib.label_ids(test, names)
    y_dev = pairs_lib.label_ids(dev_pairs, names) if dev_pairs else None
    run = dict(batch_size=batch_size, progress=progress, symmetric=symmetric)
    logits = predict_logits(rr, test.text_a, test.text_b, **run)
    binary = k <= 2
    threshold, source, dev_m = (0.0 if binary else None), "argmax", None
    if dev_pairs is not None:
        dev_logits = predict_logits(rr, dev_pairs.text_a, dev_pairs.text_b, **run)
        if binary:
            threshold, _ = metrics.best_f1_threshold(scores_of(dev_logits), y_dev)
            source = "dev (max F1)"
        dev_m = split_metrics(y_dev, predict(dev_logits, threshold), names)
    y_pred = predict(logits, threshold)
    result = {
        "model": str(model),
        "data": str(data),
        "dev": str(dev) if dev else None,
        "columns": list(test.columns),
        "labels": names,
        "threshold": threshold,
        "threshold_source": source if binary else "argmax (multi-class)",
        "symmetric": symmetric,
        "test": split_metrics(y_test, y_pred, names),
        "dev_metrics": dev_m,
    }
    multihost.write_on_main(
        _write_outputs, Path(output), result, test, logits, y_pred, barrier_name="classify:out"
    )
    return result


def graded_files(
    model: str,
    data: str | os.PathLike,
    output: str | os.PathLike,
    *,
    label_scale: float,
    columns: tuple[str | None, str | None, str | None] = (None, None, None),
    batch_size: int = 64,
    max_length: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    symmetric: bool = False,
) -> dict:
    """Graded pairs (STS): Pearson and Spearman x 100 of a 1-logit model's sigmoid scores vs the
    gold scores in [0, label_scale]; writes metrics.json, report.md, predictions.jsonl."""
    a, b, y = columns
    test = pairs_lib.read_pairs(data, text_a=a, text_b=b, label=y)  # bad input fails first
    gold = pairs_lib.label_scores(test, float(label_scale))
    rr = rerank.load_reranker(model, dtype=dtype, max_length=max_length)
    if rr.ce.num_labels != 1:
        raise InputError(
            f"graded pairs need a 1-logit model; {model} has {rr.ce.num_labels} labels",
            field="label_scale",
        )
    run = dict(batch_size=batch_size, progress=progress, symmetric=symmetric)
    logits = predict_logits(rr, test.text_a, test.text_b, **run)
    z, score = logits[:, 0], graded_scores(logits)
    result = {
        "model": str(model),
        "data": str(data),
        "columns": list(test.columns),
        "label_scale": float(label_scale),
        "symmetric": symmetric,
        "test": metrics.correlations(score, gold),
    }

    def write(out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "predictions.jsonl") as f:
            for i in range(len(test)):
                rec = {"line": test.lines[i], "label": test.labels[i], "logit": float(z[i])}
                rec["score"] = float(score[i]) * float(label_scale)  # on the gold's scale
                f.write(json.dumps(rec) + "\n")
        m = result["test"]
        with atomic_write(out / "report.md") as f:
            f.write(
                f"# Graded pairs\n\n- model: `{model}`\n- data: `{data}` (labels / "
                f"{label_scale:g})\n\n| split | n | Spearman | Pearson |\n|---|---:|---:|---:|\n"
                f"| test | {m['n']} | {m['spearman']:.2f} | {m['pearson']:.2f} |\n"
            )
        write_json(out / "metrics.json", result)  # last: its presence means the run completed

    multihost.write_on_main(write, Path(output), barrier_name="classify:out")
    return result


def _write_outputs(out: Path, result: dict, test, logits, y_pred) -> None:
    """metrics.json, report.md, confusion.png and predictions.jsonl, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "predictions.jsonl") as f:
        for i in range(len(test)):
            rec = {"line": test.lines[i], "label": test.labels[i], "pred": int(y_pred[i])}
            rec["logits"] = [float(v) for v in logits[i]]
            f.write(json.dumps(rec) + "\n")
    with atomic_write(out / "confusion.png", "wb") as f:
        f.write(_confusion_png(result["test"]["confusion"], result["labels"]))
    with atomic_write(out / "report.md") as f:
        f.write(report_markdown(result))
    write_json(out / "metrics.json", result)  # last: its presence means the run completed


def _confusion_png(confusion, labels: Sequence[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        color = "white" if v > cm.max() / 2 else "black"
        ax.text(j, i, str(v), ha="center", va="center", color=color)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _figures_row(name: str, m: dict) -> str:
    bi = m.get("binary") or {}
    cells = [m["accuracy"], *(bi.get(k, float("nan")) for k in ("precision", "recall", "f1"))]
    cells += [m["macro"][k] for k in ("precision", "recall", "f1")]
    return f"| {name} | {m['num_examples']} | " + " | ".join(f"{v:.4f}" for v in cells) + " |"


def report_markdown(result: dict) -> str:
    """The Markdown report: figures table, threshold, confusion matrix (text and PNG)."""
    t = result["threshold"]
    lines = [
        "# Pair classification",
        "",
        f"- model: `{result['model']}`",
        f"- data: `{result['data']}`" + (f"; dev: `{result['dev']}`" if result["dev"] else ""),
        f"- columns: {', '.join(f'`{c}`' for c in result['columns'])}; labels: "
        + ", ".join(f"{i} = `{n}`" for i, n in enumerate(result["labels"])),
        f"- decision: {result['threshold_source']}"
        + (f", score ≥ {t:.6g} is positive (`{result['labels'][1]}`)" if t is not None else ""),
        "",
        "| split | n | accuracy | precision | recall | F1 | macro P | macro R | macro F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        _figures_row("test", result["test"]),
    ]
    if result["dev_metrics"]:
        lines.append(_figures_row("dev", result["dev_metrics"]))
    cm = metrics.confusion_text(result["test"]["confusion"], result["labels"])
    lines += ["", "## Confusion matrix (test)", "", "```", cm, "```", ""]
    lines += ["![confusion matrix](confusion.png)", ""]
    return "\n".join(lines)
