"""Builds data/nq-toy from <data_dir>/nq-open-oracle (the library is `dualenc.data.nq_toy`).

python -m dualenc.data.build_nq_toy --out data/nq-toy
"""

from __future__ import annotations

from absl import flags, logging

from dualenc.data import nq_toy


def main(argv):
    del argv
    f = flags.FLAGS
    files = nq_toy.build(
        f.out,
        f.src,
        seed=f.seed,
        num_train=f.num_train,
        num_dev=f.num_dev,
        num_hard_negatives=f.num_hard_negatives,
    )
    total = sum(len(t.encode("utf-8")) for t in files.values())
    logging.info("wrote %d files (%.2f MB) to %s", len(files), total / 1e6, f.out)


if __name__ == "__main__":
    from dualenc import cli

    flags.DEFINE_string("out", "data/nq-toy", "output directory (replaced atomically)")
    flags.DEFINE_string("src", "", "nq-open-oracle dir (default: <data_dir>/nq-open-oracle)")
    flags.DEFINE_integer("seed", 0, "seed of the passage-grouped split")
    flags.DEFINE_integer("num_train", 2000, "train split: at least this many questions")
    flags.DEFINE_integer("num_dev", 300, "dev split: at least this many questions")
    flags.DEFINE_integer("num_hard_negatives", 3, "BM25 hard negatives per question")
    cli.run(main)
