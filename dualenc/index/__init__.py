"""Retrieval indexes behind one interface: exact (JAX), quantised (int8 / binary + rescoring),
ScaNN, BM25, and run fusion."""

from dualenc.index.base import (
    Index,
    IndexManifest,
    IndexMismatchError,
    Run,
    read_manifest,
    rows_to_run,
)


def load_index(directory, *, weights_hash: str | None = None, devices=None):
    """Opens a saved index of any kind, checking the model hash where one is given.

    `devices`: where an exact index searches (default: all devices of all processes).
    """
    kind = read_manifest(directory).kind
    if kind == "exact":
        from dualenc.index.exact import ExactIndex

        return ExactIndex.load(directory, weights_hash=weights_hash, devices=devices)
    if kind == "quantized":
        from dualenc.index.quantized import QuantizedIndex

        return QuantizedIndex.load(directory, weights_hash=weights_hash, devices=devices)
    if kind == "scann":
        from dualenc.index.scann_index import ScannIndex

        return ScannIndex.load(directory, weights_hash=weights_hash)
    if kind == "bm25":
        from dualenc.index.bm25 import BM25Index

        return BM25Index.load(directory)
    raise IndexMismatchError(f"{directory}: unknown index kind {kind!r}")


__all__ = [
    "Index",
    "IndexManifest",
    "IndexMismatchError",
    "Run",
    "load_doc_ids",
    "load_index",
    "read_manifest",
    "save_index_dir",
    "write_index_dir",
    "rows_to_run",
]


DOC_IDS = "doc_ids.json"


def save_index_dir(index, doc_ids, directory) -> None:
    """Writes index + doc ids (row -> id) atomically, so `dualenc.search` can serve it."""
    doc_ids = list(doc_ids)
    if len(doc_ids) != index.manifest.count:
        raise ValueError(f"{len(doc_ids)} doc ids for an index of {index.manifest.count} rows")
    write_index_dir(index.save, doc_ids, directory)


def write_index_dir(save, doc_ids, directory) -> None:
    """`save(tmp)` (writes an index into dir `tmp`) + the doc ids, swapped in as `directory`."""
    import json

    from dualenc.index.base import check_doc_ids
    from dualenc.io import atomic_dir

    doc_ids = check_doc_ids(list(doc_ids))
    with atomic_dir(directory) as tmp:
        save(tmp)
        (tmp / DOC_IDS).write_text(json.dumps(doc_ids))


def load_doc_ids(directory) -> list[str]:
    import json
    from pathlib import Path

    from dualenc.io import InputError

    path = Path(directory) / DOC_IDS
    if not path.exists():
        raise InputError("index directory has no doc_ids.json", path=directory)
    return json.loads(path.read_text())
