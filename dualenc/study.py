"""A training-strategy study: several strategies × seeds at EQUAL steps, one table.

python -m dualenc.study --config configs/study/scifact.py --workdir W

For BEIR data without a dev split (SciFact) a dev split is carved from TRAIN (`carve.fraction` of
the train queries, permuted by `carve.seed`), written as a derived BEIR dir W/data (corpus and
queries symlinked; qrels/train_carved.tsv, dev_carved.tsv and the test split): strategies are
compared and chosen on dev, never on test. Each strategy names where its negatives come from
(`negatives`: '' = the training data's own, 'bm25' / 'dense' = mined once with dualenc.mine,
'teacher' = mined and scored by a teacher) and trainer overrides; 'zero_shot' trains nothing.
Every trained model encodes the corpus once for both dev and test queries; every run writes TREC
run files. Results: W/runs/<name>/s<seed>/result.json (a rerun skips runs that have one),
W/study.json, W/study.md and W/study.png (mean ± std over seeds).
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from dualenc import io, runs
from dualenc.data import mining, negatives
from dualenc.data.beir import load_qrels, qrels_path
from dualenc.index.exact import ExactIndex
from dualenc.inference import corpus_cache
from dualenc.io import InputError
from dualenc.metrics import answer_accuracy, evaluate_run
from dualenc.retrieval import engine
from dualenc.training import config as config_lib
from dualenc.training import loop
from dualenc.training.config import ConfigError

NEGATIVES = ("", "bm25", "dense", "teacher")
TRAIN_SPLIT, DEV_SPLIT = "train_carved", "dev_carved"


# ----------------------------------------------------------------------------- dev carve


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
        _write_qrels(out / "qrels" / f"{split}.tsv", {q: qrels[q] for q in keep})
    _write_qrels(out / "qrels" / f"{test_split}.tsv", test)
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


def _write_qrels(path: Path, qrels: dict) -> None:
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


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(q_enc, p_enc, splits: dict, out_dir: Path, cfg, *, cache_dir=None) -> dict:
    """{split: metrics} for BEIR splits sharing one corpus: the corpus is encoded ONCE; each
    split's run is written to out_dir/<split>.trec. `splits` maps name -> (dataset, answers)."""
    e = cfg.eval
    first = next(iter(splits.values()))[0]
    doc_ids, texts = engine.corpus_texts(first)
    kw = {"batch_size": int(e.batch_size), "max_length": int(e.max_length) or None}
    p_emb, _ = engine.encode_corpus(p_enc, doc_ids, texts, cache_dir=cache_dir, **kw)
    index = ExactIndex(p_emb, similarity="dot")
    k = min(max(max(int(x) for x in e.k_values), 10), len(doc_ids))
    out, by_id = {}, None
    for split, (ds, answers) in splits.items():
        if list(ds.corpus) != doc_ids:
            raise ValueError(f"split {split!r} has another corpus than the first split")
        qids, q_texts = engine.judged_queries(ds)
        run = engine.dense_run(q_enc, index, qids, q_texts, doc_ids, k, **kw)
        runs.write_trec(out_dir / f"{split}.trec", run, tag=out_dir.parent.name or "study")
        out[split], _ = evaluate_run(run, ds.qrels, engine.measures_for(e.k_values))
        if answers:
            by_id = by_id or dict(zip(doc_ids, texts, strict=True))
            out[split].update(answer_accuracy(run, by_id, answers, tuple(e.answer_ks)))
    return out


def _load_splits(cfg, root: str) -> dict:
    from dualenc.retrieval.evaluate import load_answers

    out = {}
    for name, split in (("dev", cfg.dev_split), ("test", cfg.test_split)):
        ds = engine.load_split(root, split)
        answers = load_answers(Path(root), ds.qrels) if cfg.eval.answers else {}
        out[name] = (ds, answers)
    return out


# ----------------------------------------------------------------------------- runs


class Study:
    """Runs the strategies of a study config into a workdir; every step is resumable."""

    def __init__(self, cfg, workdir):
        self.cfg, self.workdir = cfg, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root, self.train_data = self._prepare_data()
        self.mined: dict[str, str] = {}
        self.validate()
        self.splits = _load_splits(cfg, self.root)

    def validate(self) -> None:
        """Every strategy's trainer config, checked before anything is trained or encoded."""
        for name in self.order():
            strat = self.cfg.strategies[name]
            if strat.get("zero_shot", False):
                continue
            try:
                tc = self.train_config(strat, 0, files=False)
                config_lib.validate(tc, jax.device_count(), jax.process_count())
            except ConfigError as e:
                raise ConfigError(f"strategies.{name}: {e}") from None

    def _prepare_data(self) -> tuple[str, dict]:
        c = self.cfg
        train = dict(c.train.data.train)
        if not c.carve.enabled:
            return c.eval_root, train
        out = self.workdir / "data"
        tr, dev = carve_dev(
            c.eval_root,
            out,
            source_split=c.carve.source_split,
            test_split=c.test_split,
            fraction=float(c.carve.fraction),
            seed=int(c.carve.seed),
        )
        io.write_json(out / "carve.json", {"seed": int(c.carve.seed), "train": tr, "dev": dev})
        return str(out), {"path": str(out), "format": "beir", "split": TRAIN_SPLIT}

    def result_path(self, name: str, seed: int | None) -> Path:
        return self.workdir / "runs" / name / ("zero_shot" if seed is None else f"s{seed}")

    def run_all(self) -> dict:
        """Zero-shot once, then every trained strategy for each seed (seed-major, so a full
        table of seed 0 exists first); returns the summary (also written to disk)."""
        c = self.cfg
        results = []
        for seed in c.seeds:
            for name in self.order():
                strat = c.strategies[name]
                if strat.get("zero_shot", False):
                    if seed == c.seeds[0]:
                        results.append(self.run_zero_shot(name))
                    continue
                results.append(self.run_trained(name, strat, int(seed)))
        summary = summarize(results, c)
        write_report(self.workdir, summary, c)
        return summary

    def report_finished(self) -> dict:
        """The table over the runs finished so far (result.json present); trains nothing."""
        results = []
        for seed in self.cfg.seeds:
            for name in self.order():
                zs = self.cfg.strategies[name].get("zero_shot", False)
                if zs and seed != self.cfg.seeds[0]:
                    continue
                f = self.result_path(name, None if zs else int(seed)) / "result.json"
                if f.exists():
                    results.append(json.loads(f.read_text()))
        summary = summarize(results, self.cfg)
        write_report(self.workdir, summary, self.cfg)
        return summary

    def order(self) -> list[str]:
        """`cfg.order` (ConfigDict keys iterate sorted); every name must be a strategy."""
        names = list(self.cfg.get("order") or self.cfg.strategies.keys())
        for n in names:
            if n not in self.cfg.strategies:
                raise ConfigError(f"order names {n!r}, not a key of strategies")
        return names

    def run_zero_shot(self, name: str) -> dict:
        d = self.result_path(name, None)
        if (d / "result.json").exists():
            return json.loads((d / "result.json").read_text())
        from dualenc.models.loading import load_towers

        t0 = time.time()
        q_enc, p_enc = load_towers(self.cfg.train.model.name_or_path)
        cache = corpus_cache.default_cache_dir() if self.cfg.eval.cache else None
        metrics = evaluate_model(q_enc, p_enc, self.splits, d, self.cfg, cache_dir=cache)
        res = {"strategy": name, "seed": None, **metrics, "train_seconds": 0.0}
        res["eval_seconds"] = time.time() - t0
        res["hparams"] = {}
        io.write_json(d / "result.json", res)
        return res

    def train_config(self, strat, seed: int, files: bool = True):
        """The trainer config of one run: the study's base, the strategy's overrides, the
        seed, equal steps, no trainer-side eval (the study evaluates)."""
        tc = copy.deepcopy(self.cfg.train)
        tc.update(strat.get("overrides", {}).to_dict() if "overrides" in strat else {})
        tc.seed = int(seed)
        tc.train.num_steps = int(self.cfg.num_steps)
        tc.eval.every_steps = -1
        tc.eval.before_after_split = ""
        tc.data.dev.path = ""
        tc.export.enabled = True
        tc.checkpoint.every_steps = max(int(self.cfg.num_steps), 1)
        tc.checkpoint.keep = 1
        neg = strat.get("negatives", "")
        if neg not in NEGATIVES:
            raise ConfigError(f"strategies.<name>.negatives={neg!r} must be one of {NEGATIVES}")
        tc.data.train.update(self.train_data)
        if not files:
            return tc
        if strat.get("negatives_file"):
            fmt = "dpr" if str(strat.negatives_file).endswith(".json") else "st_jsonl"
            tc.data.train.update({"path": self.external_file(strat.negatives_file), "format": fmt})
        elif neg:
            tc.data.train.update({"path": self.mined_file(neg), "format": "st_jsonl"})
        return tc

    def run_trained(self, name: str, strat, seed: int) -> dict:
        d = self.result_path(name, seed)
        if (d / "result.json").exists():
            return json.loads((d / "result.json").read_text())
        tc = self.train_config(strat, seed)
        t0 = time.time()
        loop.train_and_evaluate(tc, d / "train")
        train_s = time.time() - t0
        from dualenc.models.loading import load_towers

        q_enc, p_enc = load_towers(d / "train" / "export")
        metrics = evaluate_model(q_enc, p_enc, self.splits, d, self.cfg)
        hp = {
            "lr": float(tc.train.learning_rate),
            "batch": int(tc.train.batch_size),
            "k": int(tc.data.num_negatives),
            "loss": str(tc.loss.name),
            "steps": int(tc.train.num_steps),
        }
        if tc.loss.name == "adaptive_margin":
            hp.update(err=tc.loss.margin_err, target=tc.loss.margin_target)
            hp.update(in_batch=bool(tc.loss.margin_in_batch))
        res = {"strategy": name, "seed": seed, **metrics, "train_seconds": train_s}
        res.update(eval_seconds=time.time() - t0 - train_s, hparams=hp)
        io.write_json(d / "result.json", res)
        shutil.rmtree(d / "train" / "checkpoints", ignore_errors=True)  # the export stays
        if not self.cfg.keep_exports and seed != self.cfg.seeds[0]:
            shutil.rmtree(d / "train" / "export", ignore_errors=True)
        return res

    def external_file(self, path: str) -> str:
        """A strategy's own mined file (`negatives_file`): every qid must be a training query,
        so a file mined from another split (e.g. all of train, leaking dev) is refused."""
        data = self._mining_data()
        check_mined_qids(path, {q.qid for q in data.queries})
        return path

    def mined_file(self, kind: str) -> str:
        """The ST JSONL with scores for `kind` (bm25 | dense | teacher), mined once."""
        if kind in self.mined:
            return self.mined[kind]
        path = self.workdir / "mined" / f"{kind}.jsonl"
        if not path.exists():
            model, ce, method = None, None, kind
            if kind == "dense":
                model = self.cfg.train.model.name_or_path
            elif kind == "teacher":
                ce, model, method = self._teacher()
            m = self.cfg.mine
            mcfg = mining.MineConfig(
                method=method,
                num_negatives=int(m.num_negatives),
                range_min=int(m.range_min),
                range_max=int(m.range_max),
                max_relative_score=m.max_relative_score,
                sampling=str(m.sampling),
                seed=int(m.seed),
            )
            data = self._mining_data()
            mined, summary = negatives.run_mining(
                data, mcfg, model=model, cross_encoder=ce, max_length=int(m.max_length) or None
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            negatives.write_output(path, negatives.to_records(data, mined, "st_jsonl"), "st_jsonl")
            io.write_json(path.with_suffix(".summary.json"), {"model": model, "ce": ce, **summary})
            logging.info("mined %s:\n%s", path, negatives.format_summary(summary))
        self.mined[kind] = str(path)
        return str(path)

    def _mining_data(self):
        t = self.train_data
        if t["format"] == "beir":
            return mining.data_from_beir(t["path"], t["split"])
        return negatives.load_data(t["path"], t["format"], t.get("split", "train"))

    def _teacher(self) -> tuple[str | None, str, str]:
        """(cross-encoder, dense model, method): the configured cross-encoder re-scoring dense
        candidates, else the bi-encoder of the best strategy on DEV (seed 0 export)."""
        c = self.cfg
        if c.teacher.cross_encoder:
            return c.teacher.cross_encoder, c.train.model.name_or_path, "dense"
        best, best_dev = c.train.model.name_or_path, -1.0
        for name in self.order():
            strat = c.strategies[name]
            if strat.get("zero_shot") or strat.get("negatives") == "teacher":
                continue
            f = self.result_path(name, int(c.seeds[0])) / "result.json"
            if f.exists():
                dev = json.loads(f.read_text())["dev"]["nDCG@10"]
                export = f.parent / "train" / "export"
                if dev > best_dev and export.is_dir():
                    best, best_dev = str(export), dev
        io.write_json(self.workdir / "mined" / "teacher.json", {"model": best, "dev": best_dev})
        return None, best, "dense"


# ----------------------------------------------------------------------------- report


def summarize(results: list[dict], cfg) -> dict:
    """{strategy: {n, mean/std of each measure on dev and test, seconds, hparams}}."""
    out: dict[str, dict] = {}
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["strategy"], []).append(r)
    for name, rs in by.items():
        row = {"n": len(rs), "seeds": [r["seed"] for r in rs], "hparams": rs[0]["hparams"]}
        for split in ("dev", "test"):
            for m in rs[0][split]:
                vals = np.array([r[split][m] for r in rs], float)
                row[f"{split}/{m}"] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=0))}
        row["train_seconds"] = float(np.mean([r["train_seconds"] for r in rs]))
        row["eval_seconds"] = float(np.mean([r["eval_seconds"] for r in rs]))
        row["description"] = str(cfg.strategies[name].get("description", ""))
        out[name] = row
    return {"num_steps": int(cfg.num_steps), "strategies": out, "runs": results}


def _pm(row: dict, key: str) -> str:
    v = row.get(key)
    return "–" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}"


def format_table(summary: dict, cfg) -> str:
    """The Markdown table: one row per strategy, mean ± std (population std) over seeds."""
    main = list(cfg.table_measures)
    head = ["strategy", "seeds"] + [f"test {m}" for m in main] + [f"dev {cfg.dev_measure}"]
    head += ["train s", "eval s", "hyper-parameters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary["strategies"].items():
        hp = ", ".join(f"{k}={v}" for k, v in row["hparams"].items()) or "–"
        cells = [f"{name}", str(row["n"])] + [_pm(row, f"test/{m}") for m in main]
        cells += [_pm(row, f"dev/{cfg.dev_measure}")]
        cells += [f"{row['train_seconds']:.0f}", f"{row['eval_seconds']:.0f}", hp]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(workdir: Path, summary: dict, cfg) -> None:
    """W/study.json, W/study.md (table + descriptions), W/study.png (bars with std errors)."""
    io.write_json(workdir / "study.json", summary)
    desc = "\n".join(
        f"- **{n}**: {r['description']}"
        for n, r in summary["strategies"].items()
        if r["description"]
    )
    text = (
        f"# {cfg.title}\n\n{cfg.notes}\n\nAll trained runs: {summary['num_steps']} steps. "
        f"Mean ± std over seeds.\n\n{format_table(summary, cfg)}\n\n{desc}\n"
    )
    with io.atomic_write(workdir / "study.md") as f:
        f.write(text)
    _plot(workdir / "study.png", summary, list(cfg.table_measures))


def _plot(path: Path, summary: dict, measures: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["strategies"])
    fig, axes = plt.subplots(1, len(measures), figsize=(5 * len(measures), 4), squeeze=False)
    for ax, m in zip(axes[0], measures, strict=True):
        rows = [summary["strategies"][n].get(f"test/{m}") or {"mean": 0, "std": 0} for n in names]
        ax.bar(names, [r["mean"] for r in rows], yerr=[r["std"] for r in rows], capsize=4)
        lo = min(r["mean"] for r in rows)
        ax.set_ylim(max(0.0, lo - 0.1), min(1.0, max(r["mean"] for r in rows) + 0.05))
        ax.set_title(f"test {m}")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


# ----------------------------------------------------------------------------- CLI


def enable_compile_cache(path) -> None:
    """JAX's persistent compilation cache: every seed's train step (same shapes) compiles once."""
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def _define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Study config (configs/study/*.py), overridable by --config.a.b=v."
    )
    flags.DEFINE_string("workdir", None, "Where the carved data, runs and report go.")
    flags.DEFINE_bool("report_only", False, "Only tabulate the runs finished so far.")
    flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
    enable_compile_cache(Path(workdir) / "jax_cache")
    try:
        st = Study(cfg, workdir)
        summary = st.report_finished() if flags.FLAGS.report_only else st.run_all()
    except (ConfigError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(format_table(summary, cfg), flush=True)


if __name__ == "__main__":
    from dualenc import cli

    _define_flags()
    cli.run(main)
