"""TSDAE's loss and pure train step: reconstruct each sentence from its noisy copy's embedding.

The decoder reads the encoder's one vector through cross-attention and shares the encoder's
weights (`bert_decoder.tied_params`), as sentence-transformers' `DenoisingAutoEncoderLoss(
tie_encoder_decoder=True)` does, so the loss shapes the encoder both ways.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dualenc.models import bert_decoder, dual_encoder
from dualenc.training.state import apply_gradients


def tsdae_loss(spec, params, batch, rng=None, deterministic: bool = True):
    """Mean next-token cross-entropy of the originals given the noisy copies' embeddings.

    params {'encoder': tower, 'decoder': bert_decoder.own_params}; batch {src_ids, src_mask,
    tgt_ids, tgt_mask}. The decoder reads tgt[:, :-1] and predicts tgt[:, 1:] ([SEP] included,
    padding ignored), as sentence-transformers does.
    """
    r_enc, r_dec = (None, None) if rng is None else jax.random.split(rng)
    emb = dual_encoder.embed(
        spec,
        params["encoder"],
        batch["src_ids"],
        batch["src_mask"],
        deterministic=deterministic,
        rngs=r_enc,
    )  # (B, H)
    dec = bert_decoder.tied_params(params["encoder"], params["decoder"])
    ids, mask = batch["tgt_ids"], batch["tgt_mask"]
    logits = bert_decoder.BertLMHeadDecoder(spec.config).apply(
        {"params": dec},
        ids[:, :-1],
        mask[:, :-1],
        emb[:, None, :],
        jnp.ones((emb.shape[0], 1), jnp.int32),
        deterministic,
        rngs=None if r_dec is None else {"dropout": r_dec},
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
    weights = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def make_train_step(spec, tx: optax.GradientTransformation, schedule, dropout: bool):
    """The (not yet jitted) step; dropout keys are folded from the step number."""

    def train_step(state, batch, rng):
        params = state["params"]
        rng = jax.random.fold_in(rng, state["step"])
        loss, grads = jax.value_and_grad(
            lambda p: tsdae_loss(spec, p, batch, rng, deterministic=not dropout)
        )(params)
        tokens = jnp.sum(batch["tgt_mask"])
        return apply_gradients(state, grads, tx, schedule, {"loss": loss}, tokens)

    return train_step
