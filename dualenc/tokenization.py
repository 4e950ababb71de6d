"""Tokenisation with Hugging Face fast tokenizers, and length bucketing for jit.

jit compiles one program per input shape, so batches are padded to one of a few bucket lengths
(`bucket_batches`) instead of to each batch's own longest sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers

from dualenc.io import InputError

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)
# Training batches are random, not length-sorted, so each pads to its longest text: finer
# buckets cut that padding (MS MARCO pairs at 256 tokens: 65 % -> 55 %, about what
# sentence-transformers' pad-to-longest wastes) for a few more compiled shapes.
TRAIN_BUCKETS = (16, 24, 32, 40, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512)


def load_tokenizer(model_dir: str | Path) -> tokenizers.Tokenizer:
    """Loads the fast tokenizer of a model dir with padding and truncation switched off.

    Some shipped tokenizer.json files bake in padding/truncation at 128 (all-MiniLM-L6-v2 does);
    dualenc pads and truncates itself, per call.
    """
    model_dir = Path(model_dir)
    path = model_dir / "tokenizer.json"
    if path.exists():
        tok = tokenizers.Tokenizer.from_file(str(path))
    else:
        try:
            import transformers

            tok = transformers.AutoTokenizer.from_pretrained(str(model_dir)).backend_tokenizer
        except Exception as e:  # noqa: BLE001 - re-raised with the path named
            raise InputError(
                f"no usable tokenizer (tokenizer.json or vocab files): {e}", path=model_dir
            ) from None
    tok.no_padding()
    tok.no_truncation()
    return tok


def pad_id(tok: tokenizers.Tokenizer) -> int:
    """The id of the padding token ([PAD] / <pad>), 0 if the vocabulary has none."""
    for name in ("[PAD]", "<pad>"):
        idx = tok.token_to_id(name)
        if idx is not None:
            return idx
    return 0


def tokenize(tok: tokenizers.Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids with special tokens, truncated to `max_length` (the final [SEP] is kept)."""
    tok.enable_truncation(max_length)
    try:
        encs = tok.encode_batch(list(texts))
    finally:
        tok.no_truncation()
    return [e.ids for e in encs]


def tokenize_pairs(
    tok: tokenizers.Tokenizer, first: Sequence[str], second: Sequence[str], max_length: int
) -> tuple[list[list[int]], list[list[int]]]:
    """(ids, token_type_ids) for sentence pairs, truncated longest-first like transformers."""
    if len(first) != len(second):
        raise ValueError(f"pair lists differ in length: {len(first)} vs {len(second)}")
    tok.enable_truncation(max_length, strategy="longest_first")
    try:
        encs = tok.encode_batch(list(zip(first, second, strict=True)))
    finally:
        tok.no_truncation()
    return [e.ids for e in encs], [e.type_ids for e in encs]


def bucket_length(
    n: int, buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int | None = None
) -> int:
    """Smallest bucket ≥ n (capped at max_length); n itself if it exceeds every bucket."""
    for b in buckets:
        if b >= n:
            return min(b, max_length) if max_length else b
    return max(n, min(max_length or n, n))


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    max_length: int | None = None,
) -> list[tuple[np.ndarray, int]]:
    """Groups indices into batches of similar length: [(indices, padded_len)].

    Sorting by length (longest first, stable) keeps padding low; padding each batch to a bucket
    bounds the number of distinct shapes jit sees to len(buckets).
    """
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        out.append((idx, bucket_length(int(lengths[idx].max()), buckets, max_length)))
    return out


def pad_batch(
    seqs: Sequence[Sequence[int]], padded_len: int, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int32 arrays of shape (len(seqs), padded_len)."""
    ids = np.full((len(seqs), padded_len), pad, dtype=np.int32)
    mask = np.zeros((len(seqs), padded_len), dtype=np.int32)
    for i, s in enumerate(seqs):
        if len(s) > padded_len:
            raise ValueError(f"sequence {i} has {len(s)} tokens > padded length {padded_len}")
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
