"""Files on any pyarrow filesystem: finding inputs, reading records, writing outputs atomically.

Every path may be a local path or a URI that ``pyarrow.fs.FileSystem.from_uri`` understands
(``s3://bucket/key``, ``gs://...``, ``hdfs://...``). Records are read with their position in the
file (``line 12``, ``row 3``, ``item 2``) so errors can name it. Local writes go to a temporary
file in the same directory and are renamed into place, so a crash never leaves half a file; object
stores write whole objects, so there the file that is written last (the stage manifest,
``_lrat_stage.json``, :mod:`lrat_ray.infra.stage_run`) marks a finished output.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import io
import json
import os
import shutil
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lrat_ray.infra.errors import LratError, RecordError

RECORD_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it for a local path or URI."""
    if is_remote(path):
        return pafs.FileSystem.from_uri(path)
    local = path[len("file://") :] if path.startswith("file://") else path
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))


def _uri(fs: pafs.FileSystem, path: str, like: str) -> str:
    if not is_remote(like):
        return path
    return f"{like.split('://', 1)[0]}://{path}"


def expand_inputs(inputs: list[str], suffixes: tuple[str, ...] = RECORD_SUFFIXES) -> list[str]:
    """Files named by ``inputs``: files as given, directories walked recursively (files ending in
    ``suffixes``, optionally ``.gz``; hidden files skipped), globs expanded. Sorted, de-duplicated.
    A name that matches nothing is an error, since a typo would otherwise mine nothing quietly."""
    found: list[str] = []
    for spec in inputs:
        fs, path = resolve(spec)
        if any(ch in path for ch in "*?["):
            matches = _glob(fs, path, spec)
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                selector = pafs.FileSelector(path, recursive=True)
                matches = [
                    _uri(fs, i.path, spec)
                    for i in fs.get_file_info(selector)
                    if i.type == pafs.FileType.File and _wanted(i.path, suffixes)
                ]
            elif info.type == pafs.FileType.File:
                matches = [_uri(fs, path, spec)]
            else:
                raise LratError(f"input not found: {spec}")
        if not matches:
            raise LratError(f"no input files with suffix {'/'.join(suffixes)} under {spec}")
        found.extend(matches)
    return sorted(set(found))


def _glob(fs: pafs.FileSystem, pattern: str, spec: str) -> list[str]:
    if isinstance(fs, pafs.LocalFileSystem):
        return [p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
    base = pattern.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    return [_uri(fs, i.path, spec) for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)]


def _wanted(path: str, suffixes: tuple[str, ...]) -> bool:
    name = os.path.basename(path)
    if name.startswith(".") or name.startswith("_"):
        return False
    name = name[:-3] if name.endswith(".gz") else name
    return name.endswith(suffixes)


def file_signature(uri: str) -> str:
    """Size and modification time: enough to notice that a file changed since it was processed."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    mtime = info.mtime.timestamp() if info.mtime else 0
    return f"{info.size}:{mtime:.6f}"


def file_size(uri: str) -> int:
    fs, path = resolve(uri)
    return fs.get_file_info(path).size or 0


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path, compression="detect") as stream:
        return stream.read()


LineRange = tuple[int, int, int]  # (start byte, end byte, number of the first line that starts in it)


def splittable(uri: str) -> bool:
    """JSONL that can be read by line-aligned byte ranges (not compressed: gzip cannot seek)."""
    return uri.endswith((".jsonl", ".ndjson"))


def byte_ranges(size: int, piece_bytes: int) -> list[tuple[int, int]]:
    """``[start, end)`` ranges of about ``piece_bytes`` covering ``size`` bytes."""
    pieces = max(1, -(-size // max(1, piece_bytes)))
    step = -(-size // pieces)
    return [(start, min(size, start + step)) for start in range(0, size, step)] or [(0, 0)]


def count_newlines(uri: str, start: int, end: int, chunk: int = 8 << 20) -> int:
    """Newline bytes in ``[start, end)`` of a file, read in chunks."""
    fs, path = resolve(uri)
    count = 0
    with fs.open_input_file(path) as fh:
        fh.seek(start)
        remaining = end - start
        while remaining > 0:
            data = fh.read(min(chunk, remaining))
            if not data:
                break
            count += data.count(b"\n")
            remaining -= len(data)
    return count


def line_pieces(
    files: list[str], split_bytes: int, count_many: Callable[[list[tuple[str, int, int]]], list[int]] | None = None
) -> list:
    """Units of reading work, in input order: a file as its URI, except a JSONL file larger than
    ``split_bytes``, which becomes its line-aligned byte ranges ``{"uri": ..., "range": [start, end,
    first_line]}`` (for :func:`iter_records`), so several tasks share one big file. First line
    numbers come from counting newlines, ``count_many`` (``[(uri, start, end)] -> counts``) doing
    it, e.g. as parallel Ray tasks; positions in errors are then those of the whole file."""
    count_many = count_many or (lambda jobs: [count_newlines(*job) for job in jobs])
    sizes = {uri: file_size(uri) for uri in files if splittable(uri)}
    ranges = {uri: byte_ranges(size, split_bytes) for uri, size in sizes.items() if size > split_bytes}
    jobs = [(uri, max(0, a - 1), b - 1) for uri, rs in ranges.items() for (a, _), (b, _) in zip(rs, rs[1:])]
    counts, used, pieces = count_many(jobs), 0, []
    for uri in files:
        if uri not in ranges:
            pieces.append(uri)
            continue
        newlines = counts[used : used + len(ranges[uri]) - 1]
        used += len(newlines)
        # a range's first line follows the newlines counted up to the byte before it
        first_lines = [1] + [sum(newlines[:k]) + 2 for k in range(1, len(ranges[uri]))]
        pieces.extend({"uri": uri, "range": [a, b, line]} for (a, b), line in zip(ranges[uri], first_lines))
    return pieces


def read_line_range(uri: str, start: int, end: int) -> bytes:
    """The whole lines of a file that *start* in ``[start, end)``: ranges that tile a file give
    every line exactly once, however the boundaries fall."""
    fs, path = resolve(uri)
    with fs.open_input_file(path) as fh:
        size = fh.size()
        begin = max(0, start - 1)  # the byte before start says whether a line starts at start
        fh.seek(begin)
        data = fh.read(max(0, min(end, size) - begin))
        if start > 0:
            cut = data.find(b"\n")
            if cut < 0 or begin + cut + 1 >= end:
                return b""
            data = data[cut + 1 :]
        while data and not data.endswith(b"\n"):  # finish the last line, which runs past end
            more = fh.read(1 << 16)
            if not more:
                break
            newline = more.find(b"\n")
            data += more if newline < 0 else more[: newline + 1]
    return data


# What reading a damaged file raises: random bytes in a .parquet (ArrowInvalid: magic bytes not
# found), a truncated or corrupt gzip (zlib, EOF, BadGzipFile: an OSError), an unreadable file.
READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowException, UnicodeDecodeError)


def unreadable(uri: str, exc: BaseException) -> RecordError:
    """The error of a file that cannot be read (a skipped input under ``unreadable_file``)."""
    name = uri[:-3] if uri.endswith(".gz") else uri
    kind = (
        "a Parquet file"
        if name.endswith(".parquet")
        else "a readable gzip file"
        if uri.endswith(".gz")
        else "a readable file"
    )
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    return RecordError("unreadable_file", f"not {kind} ({detail})", source=uri)


def iter_records(uri: str, line_range: LineRange | None = None) -> Iterator[tuple[str | None, Any]]:
    """Decoded records of one file with their position: ``(position, object)``.

    JSON files are one record (or one per element of a top-level list); JSONL files one per
    non-blank line; Parquet one per row. A record that is not valid JSON is yielded as a
    :class:`RecordError` in place of the object, so callers count it instead of losing it. With
    ``line_range`` only the lines of a JSONL file that start in that byte range are read, numbered
    from its first line's number, so positions match a whole-file read.
    """
    name = uri[:-3] if uri.endswith(".gz") else uri
    if name.endswith(".parquet"):
        yield from _parquet_records(uri)
        return
    if line_range is not None:
        start, end, first_line = line_range
        yield from _jsonl_records(uri, _lines(io.BytesIO(read_line_range(uri, start, end))), first_line)
        return
    if not name.endswith(".json"):
        fs, path = resolve(uri)
        with fs.open_input_stream(path, compression="detect") as stream:
            yield from _jsonl_records(uri, _lines(stream), 1)
        return
    text = read_bytes(uri).decode("utf-8", errors="replace")
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if "Extra data" not in str(exc):  # several objects, one per line: read it as JSONL below
            yield None, RecordError("invalid_json", f"not valid JSON: {exc}", source=uri)
            return
        yield from _jsonl_records(uri, text.split("\n"), 1)
        return
    if isinstance(whole, list):
        yield from ((f"item {i}", item) for i, item in enumerate(whole))
    else:
        yield None, whole


def _lines(stream) -> io.TextIOWrapper:
    # Streamed and decoded in chunks: faster than decoding and splitting a whole file, and the
    # file is never held in memory. Lines end at "\n" only, so numbers match any line counter.
    return io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="\n")


def _jsonl_records(uri: str, lines: Iterable[str], first_line: int) -> Iterator[tuple[str, Any]]:
    for lineno, line in enumerate(lines, start=first_line):
        if not line or line.isspace():
            continue
        position = f"line {lineno}"
        try:
            yield position, json.loads(line)
        except json.JSONDecodeError as exc:
            yield position, RecordError("invalid_json", f"not valid JSON: {exc}", source=uri, record=position)


def _parquet_records(uri: str) -> Iterator[tuple[str, Any]]:
    fs, path = resolve(uri)
    row = 0
    for batch in pq.ParquetFile(path, filesystem=fs).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            yield f"row {row}", record
            row += 1


def write_bytes_atomic(uri: str, data: bytes) -> None:
    fs, path = resolve(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode())


def write_table_atomic(uri: str, table) -> None:
    """A Parquet file written whole, then renamed into place (locally)."""
    fs, path = resolve(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        pq.write_table(table, path, filesystem=fs)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def temp_sibling(uri: str) -> str:
    """A fresh path next to ``uri`` for building a directory before :func:`publish_dir`."""
    head, _, tail = uri.rstrip("/").rpartition("/")
    return f"{head}/.{tail}.tmp-{uuid.uuid4().hex}"


def publish_dir(tmp_uri: str, final_uri: str) -> None:
    """Move a finished directory into place, replacing an older one.

    Locally this is two renames, so readers see the old or the new directory, never a mix.
    On object stores a directory is only a prefix that cannot be renamed: its objects are copied
    to the final prefix and the temporary ones deleted; the caller writes its marker file afterwards.
    """
    fs, tmp = resolve(tmp_uri)
    _, final = resolve(final_uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        if fs.get_file_info(final).type != pafs.FileType.NotFound:
            fs.delete_dir(final)
        pafs.copy_files(tmp, final, source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(tmp)
        return
    old = None
    if os.path.exists(final):
        old = f"{final}.old-{uuid.uuid4().hex}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def parquet_source(path: str, table: str, what: str) -> str:
    """Where the Parquet files of a stage's ``table`` are: ``path`` is the stage directory, its
    ``table/`` folder or Parquet files; ``what`` names the expected input in the error."""
    candidates = (
        [path] if path.rstrip("/").endswith("/" + table) or path.endswith(".parquet") else [join(path, table), path]
    )
    for candidate in candidates:
        if exists(candidate):
            try:
                expand_inputs([candidate], suffixes=(".parquet",))
                return candidate
            except LratError:
                continue
    raise LratError(f"no {table} at {path}: expected {what}")


def remove_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def remove_file(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


STAGE_MANIFEST = "_lrat_stage.json"


def fingerprint(uri: str) -> str:
    """What an input's content is, cheaply: a finished stage output is its version key; any other
    directory the names, sizes and modification times of its files; a file its size and time."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return f"file:{file_signature(uri)}"
    if info.type != pafs.FileType.Directory:
        raise LratError(f"input not found: {uri}")
    manifest = join(uri, STAGE_MANIFEST)
    if exists(manifest):
        return "stage:" + json.loads(read_bytes(manifest))["key"]
    digest = hashlib.sha256()
    for item in sorted(fs.get_file_info(pafs.FileSelector(path, recursive=True)), key=lambda i: i.path):
        relative = item.path[len(path) :]
        if item.type == pafs.FileType.File and not any(part.startswith(".") for part in relative.split("/")):
            mtime = item.mtime.timestamp() if item.mtime else 0
            digest.update(f"{relative}\t{item.size}\t{mtime:.6f}\n".encode())
    return "dir:" + digest.hexdigest()[:24]


def upload_dir(local_dir: str, uri: str) -> None:
    """Copy a finished local directory to ``uri`` (any pyarrow filesystem)."""
    fs, path = resolve(uri)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def local_copy(uri: str) -> str:
    """A local directory holding the remote directory ``uri`` (a model or an index): ``uri`` itself
    when it is local, else a copy in ``$LRAT_CACHE`` (default ``~/.cache/lrat``) that is fetched
    again only when the remote content changed."""
    if not is_remote(uri):
        return uri
    cache_root = os.environ.get("LRAT_CACHE", os.path.expanduser("~/.cache/lrat"))
    version = fingerprint(uri)
    target = os.path.join(cache_root, "remote", hashlib.sha256(uri.encode()).hexdigest()[:16])
    marker = os.path.join(target, ".lrat-fetched")
    if os.path.isfile(marker) and open(marker).read() == version:
        return target
    fs, path = resolve(uri)
    tmp = temp_sibling(target)
    os.makedirs(tmp)
    pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    with open(os.path.join(tmp, ".lrat-fetched"), "w") as fh:
        fh.write(version)
    publish_dir(tmp, target)
    return target


def npy_bytes(array) -> bytes:
    """``array`` in NumPy's ``.npy`` format, for :func:`write_bytes_atomic`."""
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
