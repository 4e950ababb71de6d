"""TFDS array_record datasets written in constant memory and read without TensorFlow.

Why not `tfds.core.GeneratorBasedBuilder`: its writer buffers up to 1 GB of serialized examples
in memory and sorts them by key before writing any shard, even with shuffling off. Here examples
are serialized with TFDS's own feature connectors and serializer and streamed into array_record
shards (`group_size:1`, what TFDS writes: one record per chunk, so any record is one seek), cut
by size, in the order given; then `dataset_info.json`, `features.json` and `metadata.json` are
written as `tfds.folder_dataset.write_metadata` does. The result is an ordinary TFDS dataset:
`tfds.data_source(name, data_dir=...)` and `tfds.builder_from_directory(dir)` read it (`as_dataset`
would need TensorFlow: nothing here calls it). Layout, as TFDS's:
  <data_dir>/<name>[/<config>]/<version>/<name>-<split>.array_record-0000i-of-0000n
Nothing in a dataset depends on time or path: the same examples give the same bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath
from tensorflow_datasets.core import dataset_info, example_serializer, file_adapters, naming
from tensorflow_datasets.proto import tf_example_pb2

from dualenc.io import InputError

VERSION = "1.0.0"
SHARD_BYTES = 64 << 20  # serialized bytes per shard: a few open files even at 10M passages
INFO = "dataset_info.json"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")  # TFDS dataset names are snake_case


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InputError(f"dataset name {name!r} is not snake_case ([a-z][a-z0-9_]*)", field="name")
    return name


class SplitWriter:
    """Streams one split's examples, in order, into shards of about `shard_bytes` each."""

    def __init__(self, version_dir: Path, name: str, split: str, features, shard_bytes: int):
        self.dir, self.name, self.split = Path(version_dir), name, split
        self.features = features
        self.serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
        self.shard_bytes = int(shard_bytes)
        self.text_names = tuple(features.keys()) if all_text(features) else ()
        self.lengths: list[int] = []
        self.parts: list[Path] = []
        self.writer, self.filled = None, 0

    def serialize(self, example: Mapping, *, generic: bool = False) -> bytes:
        """The record TFDS would write; all-Text features build the tf.Example directly (twice
        as fast as TFDS's generic encode, the same bytes)."""
        if self.text_names and not generic:
            proto = tf_example_pb2.Example()
            feature = proto.features.feature
            for n in self.text_names:
                feature[n].bytes_list.value.append(example[n].encode("utf-8"))
        else:
            proto = self.serializer.get_tf_example(self.features.encode_example(example))
        return proto.SerializeToString(deterministic=True)  # else map order varies by process

    def write(self, example: Mapping) -> None:
        record = self.serialize(example)
        if self.writer is None or self.filled >= self.shard_bytes:
            self._next_shard()
        self.writer.write(record)
        self.lengths[-1] += 1
        self.filled += len(record)

    def _next_shard(self) -> None:
        self._close_shard()
        self.parts.append(self.dir / f".{self.name}-{self.split}.part-{len(self.parts):05d}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer = ArrayRecordWriter(str(self.parts[-1]), "group_size:1")
        self.lengths.append(0)
        self.filled = 0

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> tfds.core.SplitInfo:
        """Closes the last shard, gives every shard its TFDS name, returns the SplitInfo."""
        if self.writer is None and not self.parts:
            self._next_shard()  # an empty split is still a (one empty shard) split
        self._close_shard()
        template = naming.ShardedFileTemplate(
            data_dir=self.dir,
            dataset_name=self.name,
            split=self.split,
            filetype_suffix=file_adapters.FileFormat.ARRAY_RECORD.file_suffix,
        )
        size = 0
        for i, part in enumerate(self.parts):
            size += part.stat().st_size
            os.replace(part, template.sharded_filepath(shard_index=i, num_shards=len(self.parts)))
        return tfds.core.SplitInfo(
            name=self.split, shard_lengths=list(self.lengths), num_bytes=size,
            filename_template=template,
        )  # fmt: skip

    def abort(self) -> None:
        self._close_shard()


def version_dir(data_dir: Path, name: str, config: str | None = None) -> Path:
    return Path(data_dir, name, *([config] if config else []), VERSION)


def write_info(
    version_dir: Path,
    name: str,
    features,
    splits: list[tfds.core.SplitInfo],
    *,
    config: str | None = None,
    description: str = "",
    metadata: Mapping | None = None,
) -> None:
    """Writes the TFDS metadata files that make `version_dir` a dataset (order kept on read)."""
    identity = dataset_info.DatasetIdentity(
        name=name,
        version=tfds.core.Version(VERSION),
        data_dir=os.fspath(version_dir),
        module_name="",
        config_name=config,
    )
    info = dataset_info.DatasetInfo(
        builder=identity,
        features=features,
        description=description,
        metadata=tfds.core.MetadataDict(metadata or {}),
        disable_shuffling=True,
    )
    info.set_file_format(file_adapters.FileFormat.ARRAY_RECORD)
    info.set_splits(tfds.core.SplitDict(splits))
    info.write_to_directory(version_dir)


def is_dataset(path: str | os.PathLike) -> bool:
    return (epath.Path(path) / INFO).exists()


def find_datasets(path: str | os.PathLike, *, configs: bool = False) -> list[Path]:
    """Version dirs of the TFDS datasets at `path`: the dir itself, or below it as a data dir
    (<name>/<version>, and <name>/<config>/<version> with `configs`), sorted; hidden (temporary)
    dirs skipped. Cheap: dir listings only. Local paths or `epath` URLs (gs://...)."""
    path = epath.Path(path)
    if not path.is_dir():
        return []
    if is_dataset(path):
        return [path]
    patterns = [f"*/*/{INFO}"] + ([f"*/*/*/{INFO}"] if configs else [])
    found = [p.parent for pattern in patterns for p in path.glob(pattern)]
    return sorted(p for p in found if not any(s.startswith(".") for s in p.relative_to(path).parts))


def open_source(path: str | os.PathLike, split: str | None = None, *, default: str = "train"):
    """(DatasetInfo, random-access data source) of one split (`tfds.data_source` on the dir);
    split None: `default` if the dataset has it, else its only split."""
    builder = tfds.builder_from_directory(os.fspath(path))
    splits = sorted(builder.info.splits)
    if split is None:
        split = default if default in splits or len(splits) != 1 else splits[0]
    if split not in splits:
        raise InputError(f"no split {split!r} (has {splits})", path=path)
    return builder.info, builder.as_data_source(split=split)


def text(value: bytes | str) -> str:
    """TFDS Text features come back as UTF-8 bytes."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def all_text(features) -> bool:
    """True when every feature is a scalar Text (what `text_rows` can read)."""
    return all(isinstance(f, tfds.features.Text) for f in features.values())


def text_rows(source, keys: list[int], names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Rows `keys` of a source whose features are all scalar Text, as tuples of str in `names`
    order: the tf.Example protos parsed straight from the array_record bytes (TFDS's own numpy
    parser does the same, then a generic per-feature decode that costs 2/3 of the time)."""
    rows = []
    for raw in source.data_source.__getitems__(keys) if keys else []:
        f = tf_example_pb2.Example.FromString(raw).features.feature
        rows.append(tuple(f[n].bytes_list.value[0].decode("utf-8") for n in names))
    return rows
