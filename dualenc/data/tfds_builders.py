"""TFDS array_record storage of TrainExamples, written and read without TensorFlow.

Legacy layout (texts repeated in every example): training reads `dualenc.data.store` instead,
which keeps each passage once and examples as passage ids. Kept to read datasets written before:
`load_source_examples` → `store.build_store` converts one.
`build_from_examples` writes `<data_dir>/dualenc_examples/1.0.0/`; `as_source` reads a split.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from dualenc.data.examples import TrainExample
from dualenc.io import InputError

NAME = "dualenc_examples"


def _text_seq():
    return tfds.features.Sequence(tfds.features.Text())


class DualencExamples(tfds.core.GeneratorBasedBuilder):
    """TrainExamples per split: qid, query, positives, negatives, answers (text / text lists)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "qid, query, positives, negatives, answers."}

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS derives it from the package via importlib_resources (not installed); not needed.
        return epath.Path(__file__)

    def __init__(
        self, *, examples_by_split: Mapping[str, Sequence[TrainExample]] | None = None, **kwargs
    ):
        self._examples_by_split = examples_by_split
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo built directly: dataset_info_from_configs needs a package directory.
        features = tfds.features.FeaturesDict(
            {
                "qid": tfds.features.Text(),
                "query": tfds.features.Text(),
                "positives": _text_seq(),
                "negatives": _text_seq(),
                "answers": _text_seq(),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            features=features,
            disable_shuffling=True,
            description="dualenc dual-encoder training examples",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        if not self._examples_by_split:
            raise ValueError("DualencExamples is built with examples_by_split=...")
        return {s: self._generate_examples(ex) for s, ex in self._examples_by_split.items()}

    def _generate_examples(self, examples: Sequence[TrainExample]):
        for i, ex in enumerate(examples):
            yield (
                i,
                {
                    "qid": ex.qid,
                    "query": ex.query,
                    "positives": list(ex.positives),
                    "negatives": list(ex.negatives),
                    "answers": list(ex.answers),
                },
            )


def build_from_examples(
    examples_by_split: Mapping[str, Sequence[TrainExample]],
    data_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> Path:
    """Writes the splits as array_record under data_dir; returns the dataset version dir."""
    for split, exs in examples_by_split.items():
        if not exs:
            raise InputError(f"split {split!r} has no examples")
    builder = DualencExamples(data_dir=str(data_dir), examples_by_split=examples_by_split)
    out = Path(builder.data_dir)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True to rebuild")
        shutil.rmtree(out)
        builder = DualencExamples(data_dir=str(data_dir), examples_by_split=examples_by_split)
    builder.download_and_prepare()
    return out


def as_source(data_dir: str | os.PathLike, split: str = "train"):
    """A random-access `tfds.data_source` of one split (records hold bytes; see
    `example_from_record`)."""
    if not (Path(data_dir) / NAME).is_dir():
        raise InputError(f"no {NAME} dataset built here", path=data_dir)
    return tfds.data_source(NAME, split=split, data_dir=str(data_dir), download=False)


def _str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def example_from_record(rec: Mapping) -> TrainExample:
    """A data-source record (text as bytes) → TrainExample."""
    return TrainExample(
        qid=_str(rec["qid"]),
        query=_str(rec["query"]),
        positives=[_str(t) for t in rec["positives"]],
        negatives=[_str(t) for t in rec.get("negatives", [])],
        answers=[_str(t) for t in rec.get("answers", [])],
    )


def load_source_examples(data_dir: str | os.PathLike, split: str = "train") -> list[TrainExample]:
    """All examples of a split, decoded, in stored order."""
    src = as_source(data_dir, split)
    return [example_from_record(src[i]) for i in range(len(src))]
