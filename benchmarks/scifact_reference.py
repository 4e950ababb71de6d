"""SciFact reference figures with the real all-MiniLM-L6-v2 on the full corpus (about 7 min here).

Usage: python benchmarks/scifact_reference.py [--out DIR] [--cache_dir DIR]

Checks the figures of the shared data README: exact nDCG@10 0.6451 (± 0.001), ScaNN's tree +
anisotropic-hashing searcher (forced on, although 5k docs would default to brute force; half the
leaves searched) within 0.005 of exact, BM25 0.6617 (± 0.01). Prints one JSON object, writes
OUT/scifact_reference.json and exits 1 when a figure is off. CI runs the cheaper subset check in
tests/evaluate_test.py.
The corpus is encoded once per run (exact and ScaNN share a fresh cache) unless --cache_dir
names a cache to reuse across runs (keyed by weights, pooling, max_length and corpus only).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs.eval import scifact_minilm  # noqa: E402
from dualenc.io import write_json  # noqa: E402
from dualenc.retrieval.evaluate import run_evaluation  # noqa: E402

flags.DEFINE_string("out", "/tmp/dualenc_eval/scifact_reference", "Where the runs and JSON go.")
flags.DEFINE_string("cache_dir", "", "Corpus-embedding cache to reuse ('' = a fresh one).")
FLAGS = flags.FLAGS

EXPECTED = {"exact": (0.6451, 0.001), "bm25": (0.6617, 0.01)}
SCANN_GAP = 0.005
# Tree + AH on 5,183 docs: 72 leaves (~sqrt n), search half of them, reorder the top 100 exactly.
# ScaNN's usual 10 % of the leaves (7) loses 0.1 nDCG@10 here (short claims route poorly to
# leaves clustered on abstracts): that figure is reported too, as `scann_10pct_leaves`.
SCANN = {"brute_force_below": 0, "num_leaves_to_search": 36}


def main(argv):
    del argv
    out = Path(FLAGS.out)
    cache = FLAGS.cache_dir or tempfile.mkdtemp(prefix="dualenc_scifact_cache_")
    got, seconds = {}, {}
    for name in ("exact", "scann", "scann_10pct_leaves", "bm25"):
        kind = name.split("_")[0]
        cfg = scifact_minilm.get_config()
        with cfg.unlocked():
            cfg.update(index=kind, output=str(out / name), cache_dir=cache, progress=False)
            if name == "scann":
                cfg.scann.update(SCANN)
                cfg.save_index = str(out / "scann_index")
            elif kind == "scann":
                cfg.scann.brute_force_below = 0
        t = time.time()
        got[name] = run_evaluation(cfg)["nDCG@10"]
        seconds[name] = round(time.time() - t, 1)
    info = json.loads((out / "scann" / "info.json").read_text())
    params = json.loads((out / "scann_index" / "manifest.json").read_text())["params"]
    failures = [
        f"{kind} nDCG@10 {got[kind]:.4f} is not {want} ± {tol}"
        for kind, (want, tol) in EXPECTED.items()
        if abs(got[kind] - want) > tol
    ]
    if params["brute_force"]:
        failures.append("ScaNN ran brute force, not its tree + AH searcher")
    if abs(got["scann"] - got["exact"]) > SCANN_GAP:
        failures.append(f"ScaNN {got['scann']:.4f} is > {SCANN_GAP} from exact {got['exact']:.4f}")
    result = {
        "nDCG@10": {k: round(v, 4) for k, v in got.items()},
        "seconds": seconds,
        "scann_params": params,
        "scann_index_build_s": info.get("index_build_s"),
        "failures": failures,
    }
    write_json(out / "scifact_reference.json", result)
    print(json.dumps(result, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    app.run(main)
