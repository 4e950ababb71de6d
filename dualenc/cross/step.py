"""The pure cross-encoder train step: `(state, batch, rng) -> (state, metrics)`.

The batch holds (B, G, L) token arrays (G = 1 for pairs, 1 + k for retrieval groups); the step
flattens them to B*G pair rows, scores them with the `*ForSequenceClassification` module, and
applies a `cross.losses` loss to the (B, G, num_labels) logits. State creation, shardings, jit
(state donated) and ahead-of-time compilation are the training engine's (`dualenc.training.state`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dualenc.cross import losses as cross_losses
from dualenc.models.cross_encoder import CrossEncoder
from dualenc.training.state import apply_gradients


def logits_of(ce: CrossEncoder, params, batch, *, deterministic: bool = True, rng=None):
    """(B, G, num_labels) float32 logits of the batch's (B, G, L) pairs."""
    b, g, length = batch["input_ids"].shape
    flat = {k: batch[k].reshape(b * g, length) for k in ("input_ids", "attention_mask")}
    types = batch.get("token_type_ids")
    types = None if types is None or not ce.spec.uses_token_types else types.reshape(b * g, length)
    rngs = None if deterministic else {"dropout": rng}
    z = ce.score(params, flat["input_ids"], flat["attention_mask"], types, deterministic, rngs=rngs)
    return z.reshape(b, g, -1)


def make_train_step(ce: CrossEncoder, xcfg, tx: optax.GradientTransformation, schedule, dropout):
    """The (not yet jitted) step for `cross.loss`; dropout keys are folded from the step."""
    loss_fn = cross_losses.make_cross_loss(xcfg)

    def train_step(state, batch, rng):
        params = state["params"]
        rng = jax.random.fold_in(rng, state["step"])

        def f(prm):
            z = logits_of(ce, prm, batch, deterministic=not dropout, rng=rng)
            return loss_fn(z, batch)

        (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(params)
        tokens = jnp.sum(batch["attention_mask"] > 0)
        return apply_gradients(state, grads, tx, schedule, {**metrics, "loss": loss}, tokens)

    return train_step
