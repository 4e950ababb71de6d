"""Analytic model flops of dualenc's steps (the numerator of MFU).

Counted as the PaLM / MaxText convention does: 2 flops per multiply-add of every matmul the model
needs (weights and attention's q·k and p·v), forward once; a train step is 3x (the backward
computes two matmuls per forward one); remat's recomputation is not model flops. Embedding
lookups, norms, softmax and the optimizer are left out (< 1 % at these sizes).
"""

from __future__ import annotations


def dims(cfg) -> tuple[int, int, int, int]:
    """(layers, hidden, intermediate, attention score matmuls per layer) of a BERT, DistilBERT or
    DeBERTa-v2 config; DeBERTa adds its content-to-position and position-to-content scores."""
    if hasattr(cfg, "n_layers"):  # DistilBERT's names
        return cfg.n_layers, cfg.dim, cfg.hidden_dim, 1
    rel = getattr(cfg, "relative_attention", False)
    scores = 1 + len(getattr(cfg, "pos_att_type", ()) or ()) if rel else 1
    return cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, scores


def forward(layers: int, hidden: int, inner: int, lengths, scores: int = 1) -> float:
    """Forward flops of sequences of `lengths` tokens: per layer and token, the q, k, v, out and
    two feed-forward matmuls (4·H² + 2·H·I MACs), the score matmul(s) and the p·v mix (T·H each)."""
    weights = 4 * hidden * hidden + 2 * hidden * inner
    return float(sum(2 * layers * t * (weights + (scores + 1) * t * hidden) for t in lengths))


def forward_per_sequence(cfg, length: int) -> float:
    """Forward flops of one sequence of `length` tokens through the encoder."""
    n, h, inner, scores = dims(cfg)
    return forward(n, h, inner, [int(length)], scores)


def encode(cfg, rows: int, length: int) -> float:
    return rows * forward_per_sequence(cfg, length)


def biencoder_train(cfg, batch: int, q_len: int, p_len: int, passages_per_query: int) -> float:
    """Train step: both towers' forward + backward, and the (B x B(1+k)) score matmul."""
    hidden = dims(cfg)[1]
    towers = batch * forward_per_sequence(cfg, q_len)
    towers += batch * passages_per_query * forward_per_sequence(cfg, p_len)
    scores = 2.0 * batch * batch * passages_per_query * hidden
    return 3.0 * (towers + scores)
