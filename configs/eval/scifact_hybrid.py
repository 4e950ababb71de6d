"""SciFact test, BM25 + all-MiniLM-L6-v2 hybrid, weight tuned on the train split's queries.

python -m dualenc.evaluate --config configs/eval/scifact_hybrid.py
"""

from configs.eval import scifact_minilm


def get_config():
    c = scifact_minilm.get_config()
    with c.unlocked():
        c.index = "hybrid"
        c.tune_split = "train"
        c.output = "/tmp/dualenc_eval/scifact_minilm_hybrid"
    return c
