"""Shared I/O helpers: input errors that name file:line:field, atomic writes, the data dir.

Every user-facing reader raises `InputError` for bad input, and every writer goes through
`atomic_write` so that a crash never leaves a half-written output behind.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from etils import epath


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
    """$DUALENC_DATA_DIR, else the first existing ../shared/data beside the CWD or the checkout
    (an installed wheel has no checkout), else the CWD one."""
    env = os.environ.get("DUALENC_DATA_DIR")
    if env:
        return Path(env)
    here = Path.cwd().parent / "shared" / "data"
    checkout = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    return next((p for p in (here, checkout) if p.is_dir()), here)


def open_text(path: str | os.PathLike) -> CheckedText:
    """Opens a UTF-8 text file for reading, transparently gunzipping `*.gz`.

    Bytes that are not UTF-8 raise InputError naming file:line (a plain text-mode file raised a
    bare UnicodeDecodeError, a traceback from every reader)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path)
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    return CheckedText(raw, path)


def decode_line(raw: bytes, path, lineno: int) -> str:
    """`raw` decoded as UTF-8, or InputError naming file:line and the byte's column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(
            f"bytes that are not UTF-8 at column {e.start + 1} ({raw[e.start : e.start + 4]!r})",
            path=path,
            line=lineno,
        ) from None


class CheckedText:
    """A read-only text file over a binary one that decodes strictly and reports the line of a
    bad byte; supports iteration, readline(), read(n) and `with`."""

    def __init__(self, raw, path):
        self.raw, self.path = raw, path
        self.lineno = 0  # lines handed out so far (for errors)
        self._dec = codecs.getincrementaldecoder("utf-8")("strict")
        self._buf = ""

    def _decode(self, data: bytes, final: bool = False) -> str:
        try:
            return self._dec.decode(data, final)
        except UnicodeDecodeError as e:
            line = self.lineno + self._buf.count("\n") + data[: e.start].count(b"\n") + 1
            raise InputError(
                f"bytes that are not UTF-8 ({data[e.start : e.start + 4]!r})",
                path=self.path,
                line=line,
            ) from None

    def readline(self) -> str:
        while "\n" not in self._buf:
            data = self.raw.readline()
            if not data:
                self._buf += self._decode(b"", final=True)
                break
            self._buf += self._decode(data)
        cut = self._buf.find("\n") + 1 or len(self._buf)
        line, self._buf = self._buf[:cut], self._buf[cut:]
        self.lineno += line.endswith("\n")
        return line

    def read(self, n: int = -1) -> str:
        if n is None or n < 0:
            text = self._buf + self._decode(self.raw.read(), final=True)
            self._buf = ""
        else:
            while len(self._buf) < n:
                data = self.raw.read(max(n, 4096))
                if not data:
                    self._buf += self._decode(b"", final=True)
                    break
                self._buf += self._decode(data)
            text, self._buf = self._buf[:n], self._buf[n:]
        self.lineno += text.count("\n")
        return text

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _bad_string_field(obj, prefix: str = "") -> str | None:
    """The dotted field of the first string (or key) holding a lone surrogate, else None."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return prefix or "(value)"
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            found = _bad_string_field(k, name) or _bad_string_field(v, name)
            if found:
                return found
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found = _bad_string_field(v, f"{prefix}[{i}]")
            if found:
                return found
    return None


def check_json_strings(line: str, obj, path, lineno: int) -> None:
    """Raises InputError naming file:line and field when a JSON string of `line` holds a lone
    surrogate escape (`"\\ud800"`): valid JSON that no UTF-8 writer or tokenizer accepts."""
    if not _SURROGATE_ESCAPE.search(line):
        return
    field = _bad_string_field(obj)
    if field is not None:
        raise InputError(
            "string holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)",
            path=path,
            line=lineno,
            field=field,
        )


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yields (line_number, text) of a text file (`*.gz` gunzipped), each line decoded alone so
    that bytes which are not UTF-8 name their file:line (a text-mode reader fails a whole 8 KB
    chunk ahead of the line, with a traceback)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path=path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            yield lineno, decode_line(raw, path, lineno)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line_number, object) for each non-blank line; malformed JSON, bytes that are not
    UTF-8 and lone surrogates name file:line."""
    for lineno, line in read_lines(path):
        if line.strip():
            yield lineno, json_object(line, path, lineno)


def json_line(line: str, path, lineno: int) -> Any:
    """One JSONL line's value, or InputError naming file:line and column if it is malformed."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(
            f"malformed JSON ({e.msg} at column {e.colno})", path=path, line=lineno
        ) from None


def json_object(line: str, path, lineno: int, *, check_strings: bool = True) -> dict[str, Any]:
    """One JSONL line as a dict, or InputError naming file:line: malformed JSON, not an object,
    (with `check_strings`) a lone surrogate in a string."""
    obj = json_line(line, path, lineno)
    if not isinstance(obj, dict):
        raise InputError(
            f"expected a JSON object, got {type(obj).__name__}", path=path, line=lineno
        )
    if check_strings:
        check_json_strings(line, obj, path, lineno)
    return obj


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


def _is_local(path) -> bool:
    s = os.fspath(path)
    return "://" not in s or s.startswith("file://")


def _local(path) -> Path:
    s = os.fspath(path)
    return Path(s[len("file://") :] if s.startswith("file://") else s)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
    """Opens a temp file beside `path` and renames it over `path` only on success.

    `path` may be an `etils.epath` URL (`gs://...`): the file is written locally, then copied
    (object stores replace whole objects, so readers never see half a file).
    """
    if not _is_local(path):
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "out"
            with open(local, mode, **kwargs) as f:
                yield f
            dst = epath.Path(path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            epath.Path(local).copy(dst, overwrite=True)
        return
    path = _local(path)
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
    """Context manager yielding a local temp dir that replaces directory `path` on success.

    Every temporary name is unique (several hosts or runs may swap the same directory). For an
    `etils.epath` URL the tree is built locally, copied beside `path`, then renamed into place.
    """
    return _AtomicDir(path)


def _copy_tree(src: Path, dst: epath.Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
        if child.is_dir():
            _copy_tree(child, dst / child.name)
        else:
            epath.Path(child).copy(dst / child.name, overwrite=True)


def _swap_in(tmp, path) -> None:
    """Renames `tmp` to `path`, moving an existing `path` to a unique side name first."""
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
        path.rename(old)
        tmp.rename(path)
        if isinstance(old, Path):
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rmtree()
    else:
        tmp.rename(path)


class _AtomicDir:
    def __init__(self, path):
        self.local = _is_local(path)
        self.path = _local(path) if self.local else epath.Path(path)

    def __enter__(self) -> Path:
        parent = self.path.parent if self.local else None
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if self.local:
            _swap_in(self.tmp, self.path)
            return False
        remote_tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            _copy_tree(self.tmp, remote_tmp)
            _swap_in(remote_tmp, self.path)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically (local path or epath URL), pretty-printed, trailing newline."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
