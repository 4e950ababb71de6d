"""Shared I/O helpers: input errors that name file:line:field, atomic writes, the data dir.

Every user-facing reader raises `InputError` for bad input, and every writer goes through
`atomic_write` so that a crash never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class InputError(ValueError):
    """Bad user input; the message names the file, line and field where known."""

    def __init__(
        self,
        msg: str,
        *,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
    ):
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            if field is not None:
                where += f" field '{field}'"
            where += ": "
        elif field is not None:
            where = f"field '{field}': "
        super().__init__(where + msg)
        self.path, self.line, self.field = path, line, field


def data_dir() -> Path:
    """Root of the shared evaluation data: $DUALENC_DATA_DIR, default ../shared/data."""
    env = os.environ.get("DUALENC_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Opens a text file for reading, transparently gunzipping `*.gz`."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line_number, object) for each non-blank line; malformed JSON names file:line."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno
                ) from None
            if not isinstance(obj, dict):
                raise InputError(
                    f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno
                )
            yield lineno, obj


def require_str(obj: dict, key: str, *, path, line: int, allow_empty: bool = False) -> str:
    """Returns obj[key] as a string, or raises InputError naming file:line and field."""
    if key not in obj:
        raise InputError("missing field", path=path, line=line, field=key)
    val = obj[key]
    if not isinstance(val, str):
        raise InputError(
            f"expected a string, got {type(val).__name__}", path=path, line=line, field=key
        )
    if not allow_empty and not val.strip():
        raise InputError("empty text", path=path, line=line, field=key)
    return val


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
    """Opens a temp file beside `path` and renames it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_dir(path: str | os.PathLike):
    """Context manager yielding a temp dir that replaces `path` (a directory) on success."""
    return _AtomicDir(Path(path))


class _AtomicDir:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
        return False


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically, pretty-printed and with a trailing newline."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
