"""The training-strategy study: several strategies x seeds at EQUAL steps, one table.

For BEIR data without a dev split (SciFact) a dev split is carved from TRAIN (`data.splits`):
strategies are compared and chosen on dev, never on test. Each strategy names where its negatives
come from (`negatives`: '' = the training data's own, 'bm25' / 'dense' = mined once, 'teacher' =
mined and scored by a teacher) and trainer overrides; 'zero_shot' trains nothing. Every trained
model encodes the corpus once for both dev and test queries; every run writes TREC run files.
Results: W/runs/<name>/s<seed>/result.json (a rerun skips runs that have one), W/study.json,
W/study.md and W/study.png (mean +- std over seeds, `training.study_report`).
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path

import jax
from absl import logging

from dualenc import io, runs
from dualenc.data import mining, negatives
from dualenc.data.splits import TRAIN_SPLIT, carve_dev, check_mined_qids
from dualenc.index.exact import ExactIndex
from dualenc.inference import corpus_cache
from dualenc.metrics import answer_accuracy, evaluate_run
from dualenc.retrieval import engine
from dualenc.training import config as config_lib
from dualenc.training import loop
from dualenc.training.config import ConfigError
from dualenc.training.study_report import summarize, write_report

NEGATIVES = ("", "bm25", "dense", "teacher")


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


def load_splits(cfg, root: str) -> dict:
    """{"dev"|"test": (dataset, answers)} of the study's eval root."""
    from dualenc.retrieval.evaluate import load_answers

    out = {}
    for name, split in (("dev", cfg.dev_split), ("test", cfg.test_split)):
        ds = engine.load_split(root, split)
        answers = load_answers(Path(root), ds.qrels) if cfg.eval.answers else {}
        out[name] = (ds, answers)
    return out


class Study:
    """Runs the strategies of a study config into a workdir; every step is resumable."""

    def __init__(self, cfg, workdir):
        self.cfg, self.workdir = cfg, Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root, self.train_data = self._prepare_data()
        self.mined: dict[str, str] = {}
        self.validate()
        self.splits = load_splits(cfg, self.root)

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
