"""Training data: readers (BEIR, DPR, sentence-transformers, pairs), the ArrayRecord store,
the bi-encoder input pipeline, hard-negative mining, carved splits, nq-toy and GenQ."""
