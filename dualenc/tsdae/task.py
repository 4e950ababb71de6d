"""TSDAE (config.task == 'tsdae'): unsupervised domain adaptation of a sentence encoder.

Wang, Reimers and Gurevych (2021): delete 60 % of each sentence's words, embed the noisy copy with
the encoder (its pooling and normalisation: the embedding the retriever will use), and train a
BERT decoder to reconstruct the original from that one vector through cross-attention. The
decoder shares the encoder's weights (`bert_decoder.tied_params`; sentence-transformers'
`DenoisingAutoEncoderLoss(tie_encoder_decoder=True)`), so the loss shapes the encoder both ways.
The result is the encoder alone, exported as a sentence-transformers dir, to use as it is or as
`init_from` of a supervised run (adaptive pre-training).

What the task hands the one loop (`dualenc.training.loop`): encoder + decoder params, the
denoising batches, the step of `tsdae.step`, retrieval evaluation of the encoder on
`data.dev.path` (before/after on `eval.before_after_split`; periodic dev evaluation when
`eval.every_steps` > 0) and the encoder's sentence-transformers export.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np

from dualenc.biencoder import model as model_lib
from dualenc.biencoder.task import dev_metric, eval_encoders
from dualenc.models import bert_decoder, convert
from dualenc.models.loading import encoder_from_params, read_state_dict
from dualenc.models.saving import save_sentence_transformers
from dualenc.training import config as config_lib
from dualenc.training.logs import log
from dualenc.training.task import Task
from dualenc.tsdae.data import DenoisingPipeline, read_sentences
from dualenc.tsdae.step import make_train_step


def build(config, resumed: bool) -> Task:
    """The TSDAE Task: a BERT tower (its decoder is BertLMHeadModel) and the sentences."""
    del resumed  # the decoder's LM head comes from the model dir: read it either way
    s, t = config.tsdae, config.train
    base = model_lib.load_base_encoder(config.model)
    if base.spec.arch != "bert":
        raise config_lib.ConfigError(
            f"task='tsdae' needs a BERT tower (its decoder is BertLMHeadModel); "
            f"model.name_or_path is a {base.spec.arch!r} model"
        )
    sentences = read_sentences(str(s.path), s.format, int(s.min_chars))
    if int(s.max_sentences) and len(sentences) > int(s.max_sentences):
        keep = np.random.default_rng(int(config.seed)).permutation(len(sentences))
        sentences = [sentences[i] for i in sorted(keep[: int(s.max_sentences)])]
    pipeline = DenoisingPipeline(
        sentences,
        base.tokenizer,
        global_batch_size=int(t.batch_size),
        max_length=int(s.max_length),
        del_ratio=float(s.del_ratio),
        seed=int(config.seed),
        source=str(s.path),
    )
    params = {"encoder": base.params, "decoder": initial_decoder(base, int(s.seed_decoder))}
    e, has_dev = config.eval, bool(config.data.dev.path)

    def split_eval(host_params, split: str) -> dict[str, float]:
        enc = encoder_from_params(base, host_params["encoder"])
        return eval_encoders(config, enc, enc, split)

    periodic = has_dev and int(e.every_steps) > 0
    return Task(
        name="tsdae",
        describe=f"{len(sentences)} sentences of {s.path}, model {config.model.name_or_path}",
        params=params,
        pipeline=pipeline,
        make_step=lambda tx, schedule: make_train_step(base.spec, tx, schedule, bool(t.dropout)),
        evaluate=(lambda p: split_eval(p, config.data.dev.split)) if periodic else None,
        eval_metric=str(e.metric),
        dev_value=lambda dev: dev_metric(dev, str(e.metric)),
        patience=int(e.patience),
        split_eval=split_eval if has_dev else None,
        export=functools.partial(export, base),
        export_note="exported the adapted encoder (sentence-transformers)",
    )


def initial_decoder(base, seed: int) -> dict:
    """The decoder's own params: random (HF's init), with the LM head of the model dir where it
    has one (`cls.predictions.*` of a BERT pretraining checkpoint, as `from_pretrained` loads)."""
    own = bert_decoder.own_params(bert_decoder.init_decoder(base.config, jax.random.key(seed)))
    own = jax.tree.map(np.asarray, own)
    if base.model_dir is None:
        return own
    try:
        sd = read_state_dict(Path(base.model_dir))
    except Exception:  # noqa: BLE001 - no readable weights file: the random head stays
        return own
    head = {k: v for k, v in sd.items() if k.startswith("cls.predictions.")}
    head = {k: v for k, v in head.items() if not k.startswith("cls.predictions.decoder.")}
    if not head:
        return own
    cls = convert.params_from_state_dict(
        head, {"cls": own["cls"]}, prefix="", fill_missing={"cls": own["cls"]}
    )
    log(f"tsdae: LM head from {base.model_dir} ({len(head)} tensors)")
    return {**own, "cls": cls["cls"]}


def export(base, host_params, out, step: int) -> None:
    """The adapted encoder alone, as a sentence-transformers dir at `out` (process 0)."""
    del step
    save_sentence_transformers(encoder_from_params(base, host_params["encoder"]), Path(str(out)))
