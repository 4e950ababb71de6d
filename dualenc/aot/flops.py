"""Analytic model flops of dualenc's steps (the numerator of MFU).

Counted as the PaLM / MaxText convention does: 2 flops per multiply-add of every matmul the model
needs (weights and attention's q·k and p·v), forward once; a train step is 3x (the backward
computes two matmuls per forward one); remat's recomputation is not model flops. Embedding
lookups, norms, softmax and the optimizer are left out (< 1 % at these sizes).
"""

from __future__ import annotations


def dims(cfg) -> tuple[int, int, int, int, int]:
    """(layers, hidden, intermediate, relative-position score matmuls per layer, their width) of
    a BERT, DistilBERT or DeBERTa-v2/v3 config. DeBERTa's c2p and p2c terms each multiply every
    token's query (key) by all 2·att_span relative-position rows before gathering: 512 wide for
    DeBERTa-v3, whatever the sequence length, so 8x the content scores' width at 64 tokens."""
    if hasattr(cfg, "n_layers"):  # DistilBERT's names
        return cfg.n_layers, cfg.dim, cfg.hidden_dim, 0, 0
    rel = getattr(cfg, "relative_attention", False)
    terms = len(getattr(cfg, "pos_att_type", ()) or ()) if rel else 0
    width = 2 * cfg.att_span if terms else 0
    return cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, terms, width


def forward(
    layers: int, hidden: int, inner: int, lengths, rel_terms: int = 0, rel_width: int = 0
) -> float:
    """Forward flops of sequences of `lengths` tokens: per layer and token, the q, k, v, out and
    two feed-forward matmuls (4·H² + 2·H·I MACs), the q·k scores and the p·v mix (T·H each), and
    each relative-position score matmul (rel_width·H). The relative embeddings' own projection
    (2·att_span·H² per layer and call, independent of the batch) is left out."""
    weights = 4 * hidden * hidden + 2 * hidden * inner + rel_terms * rel_width * hidden
    return float(sum(2 * layers * t * (weights + 2 * t * hidden) for t in lengths))


def forward_per_sequence(cfg, length: int) -> float:
    """Forward flops of one sequence of `length` tokens through the encoder."""
    n, h, inner, terms, width = dims(cfg)
    return forward(n, h, inner, [int(length)], terms, width)


def encode(cfg, rows: int, length: int) -> float:
    return rows * forward_per_sequence(cfg, length)


def biencoder_train(cfg, batch: int, q_len: int, p_len: int, passages_per_query: int) -> float:
    """Train step: both towers' forward + backward, and the (B x B(1+k)) score matmul."""
    hidden = dims(cfg)[1]
    towers = batch * forward_per_sequence(cfg, q_len)
    towers += batch * passages_per_query * forward_per_sequence(cfg, p_len)
    scores = 2.0 * batch * batch * passages_per_query * hidden
    return 3.0 * (towers + scores)
