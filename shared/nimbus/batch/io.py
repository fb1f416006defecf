"""Where batch data lives: local paths or S3 URIs, split into tasks, read and written with Arrow.

Executors read and write S3 themselves through Arrow's S3 filesystem, so a Spark
cluster needs no Hadoop S3 connector; ``FsConfig`` is the picklable recipe they rebuild it from.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nimbus.config import Settings
from nimbus.errors import InvalidInput

FORMATS = (".parquet", ".pq", ".csv", ".csv.gz")
ROWS_PER_SPLIT = 250_000
MB = 1 << 20
_ODD = re.compile(r"[\x00-\x1f\x7f\\]")  # control characters and backslashes have no place in a drop key


class InputTooLarge(InvalidInput):
    """A compressed input decompresses past ``batch_max_decompressed_mb``."""


class UnsafeKey(InvalidInput):
    """An S3 key that could name a place outside its folder (``..``, an absolute or empty part)."""


def safe_key(bucket: str, key: str) -> PurePosixPath:
    """``key`` as relative path parts, or InvalidInput naming it: no absolute key, no ``..`` or ``.``,
    no empty part (``a//b``), no backslash or control character — a key must not name a place
    outside its folder (wherever a tool copies it to)."""
    path = PurePosixPath(key)
    parts = key.split("/")
    if not key or key.startswith("/") or _ODD.search(key) or any(p in ("", ".", "..") for p in parts):
        raise UnsafeKey(f"S3 key {key!r} in {bucket}: refused, it has an absolute, empty, '.' or '..' part or "
                        "an odd character (rename the object)")
    return path


class LimitedReader:
    """A decompressed input stream that fails once more than ``limit`` bytes have come out of it,
    so a small ``.csv.gz`` that inflates to gigabytes stops at the limit, not at the memory's end."""

    def __init__(self, stream: Any, uri: str, limit: int) -> None:
        self.stream, self.uri, self.limit, self.count, self.closed = stream, uri, limit, 0, False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size if size is not None and size >= 0 else self.limit + 1 - self.count)
        self.count += len(data)
        if self.count > self.limit:
            raise InputTooLarge(f"{self.uri}: decompresses to more than {self.limit / MB:g} MB "
                                "(NIMBUS_BATCH_MAX_DECOMPRESSED_MB); refused")
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class FsConfig:
    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    max_decompressed: int = 2048 * MB  # bytes a compressed input may inflate to

    @classmethod
    def from_settings(cls, settings: Settings) -> FsConfig:
        import os

        endpoint = settings.aws_endpoint_url
        key = os.environ.get("AWS_ACCESS_KEY_ID") or ("test" if endpoint else None)
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or ("test" if endpoint else None)
        return cls(endpoint, settings.aws_region, key, secret, int(settings.batch_max_decompressed_mb * MB))

    def open_text(self, uri: str) -> Any:
        """A CSV input as a stream: decompressed (``.gz``) under ``max_decompressed``, else as it is."""
        fs, path = self.filesystem(uri)
        if not uri.endswith(".gz"):
            return fs.open_input_stream(path)
        return _Closing(LimitedReader(fs.open_input_stream(path, compression="gzip"), uri, self.max_decompressed))

    def filesystem(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """(filesystem, path within it) for ``uri``."""
        if not uri.startswith("s3://"):
            return pafs.LocalFileSystem(), str(Path(uri).resolve())
        kwargs: dict = {"region": self.region}
        if self.endpoint:
            scheme, _, host = self.endpoint.partition("://")
            kwargs.update(endpoint_override=host, scheme=scheme)
        if self.access_key:
            kwargs.update(access_key=self.access_key, secret_key=self.secret_key)
        return pafs.S3FileSystem(**kwargs), uri[5:]


class _Closing:
    """A context manager closing both a LimitedReader and the stream under it."""

    def __init__(self, reader: LimitedReader) -> None:
        self.reader = reader

    def __enter__(self) -> LimitedReader:
        return self.reader

    def __exit__(self, *_exc: object) -> None:
        self.reader.stream.close()


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int
    fingerprint: str  # S3 ETag or local mtime+size


@dataclass(frozen=True)
class Split:
    uri: str
    row_groups: tuple[int, ...] | None  # None: the whole file (CSV)
    index: int
    rows: int | None = None  # known before reading for Parquet (its metadata); None for CSV


def list_inputs(fs_config: FsConfig, uri: str) -> list[InputFile]:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if key.rstrip("/"):
            safe_key(bucket, key.rstrip("/"))
    fs, path = fs_config.filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise InvalidInput(f"{uri}: cannot be read ({exc})") from exc
    if info.type == pafs.FileType.NotFound:
        raise InvalidInput(f"{uri}: no such file or folder")
    infos = [info] if info.type == pafs.FileType.File else [
        i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
        if i.type == pafs.FileType.File and i.path.endswith(FORMATS) and "/_" not in i.path
    ]
    if not infos:
        raise InvalidInput(f"{uri}: no CSV or Parquet files there")
    files = []
    for i in sorted(infos, key=lambda i: i.path):
        if not i.path.endswith(FORMATS):
            raise InvalidInput(f"{uri}: expected .csv, .csv.gz or .parquet")
        prefix = "s3://" if uri.startswith("s3://") else ""
        if prefix:
            bucket, _, key = i.path.partition("/")
            safe_key(bucket, key)
        files.append(InputFile(prefix + i.path, i.size, f"{i.size}:{i.mtime_ns}"))  # refined by etag_fingerprints
    return files


def etag_fingerprints(settings: Settings, files: list[InputFile]) -> list[InputFile]:
    """Replace S3 fingerprints by ETags: the same bytes dropped again give the same run."""
    from nimbus.stores.objects import ObjectStore, S3Uri

    store = ObjectStore.for_settings(settings)
    out = []
    for f in files:
        if S3Uri.is_s3(f.uri):
            uri = S3Uri.parse(f.uri)
            out.append(InputFile(f.uri, f.size, store.etag(uri.bucket, uri.key)))
        else:
            digest = hashlib.sha256(Path(f.uri).read_bytes()).hexdigest() if f.size < 64 << 20 else f.fingerprint
            out.append(InputFile(f.uri, f.size, digest))
    return out


def arrow_schema(fs_config: FsConfig, file: InputFile) -> pa.Schema:
    """The Arrow schema ``read_split`` gives this file: the Parquet footer's, or the CSV header's names as text."""
    fs, path = fs_config.filesystem(file.uri)
    if file.uri.endswith((".parquet", ".pq")):
        with fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).schema_arrow
    with fs_config.open_text(file.uri) as handle:
        names = pacsv.open_csv(handle).schema.names
    return pa.schema([(name, pa.string()) for name in names])


def input_schema(fs_config: FsConfig, file: InputFile) -> dict[str, str]:
    """Column name -> Arrow type, read from the Parquet footer or the CSV header only."""
    return {f.name: str(f.type) for f in arrow_schema(fs_config, file)}


def common_schema(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """Every column of any of ``schemas``, in first-seen order; a column whose type differs between
    them (a Parquet number, a CSV's text) is text, which the validation rules read like a CSV's."""
    types: dict[str, pa.DataType] = {}
    for schema in schemas:
        for f in schema:
            kind = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            types[f.name] = kind if types.get(f.name, kind) == kind else pa.string()
    return pa.schema(list(types.items()))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: cast where the type differs, nulls where missing."""
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)


def plan_splits(fs_config: FsConfig, files: list[InputFile], rows_per_split: int = ROWS_PER_SPLIT) -> list[Split]:
    """Parquet: groups of row groups of about ``rows_per_split`` rows; CSV: one split per file."""
    splits: list[Split] = []
    for file in files:
        if not file.uri.endswith((".parquet", ".pq")):
            splits.append(Split(file.uri, None, len(splits)))
            continue
        fs, path = fs_config.filesystem(file.uri)
        with fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
        group: list[int] = []
        rows = 0
        for g in range(meta.num_row_groups):
            group.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= rows_per_split:
                splits.append(Split(file.uri, tuple(group), len(splits), rows))
                group, rows = [], 0
        if group:
            splits.append(Split(file.uri, tuple(group), len(splits), rows))
    return splits


def read_split(fs_config: FsConfig, split: Split) -> pa.Table:
    fs, path = fs_config.filesystem(split.uri)
    if split.row_groups is not None:
        with fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).read_row_groups(list(split.row_groups))
    return read_csv_text(fs_config, split.uri)


def read_csv_text(fs_config: FsConfig, uri: str, columns: list[str] | None = None) -> pa.Table:
    """A CSV file with every column (or ``columns``) as text: a bad value becomes a quarantined record,
    not a failed read. A ``.gz`` is decompressed as a stream, under the configured limit."""
    with fs_config.open_text(uri) as handle:
        header = pacsv.open_csv(handle).schema
    with fs_config.open_text(uri) as handle:
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in header.names}, strings_can_be_null=True,
                                       include_columns=[c for c in columns if c in header.names] if columns else None)
        return pacsv.read_csv(handle, convert_options=convert)


def check_decompressed(fs_config: FsConfig, uri: str) -> None:
    """Read a ``.gz`` input through to its end, failing past the limit (before Spark's JVM reads it)."""
    if uri.endswith(".gz"):
        with fs_config.open_text(uri) as handle:
            while handle.read(MB):
                pass


def duplicate_ids(fs_config: FsConfig, splits: Iterable[Split], id_column: str) -> frozenset[str]:
    """Record ids (as text) that more than one record of the whole input has; blank and missing ids
    are left to the ``required`` rule. Reads the id column alone (Parquet) or the CSV under the limit."""
    import pyarrow.compute as pc

    arrays = []
    for split in splits:
        if split.row_groups is not None:
            fs, path = fs_config.filesystem(split.uri)
            with fs.open_input_file(path) as handle:
                file = pq.ParquetFile(handle)
                if id_column not in file.schema_arrow.names:
                    continue
                table = file.read_row_groups(list(split.row_groups), columns=[id_column])
        else:
            table = read_csv_text(fs_config, split.uri, [id_column])
            if id_column not in table.column_names:
                continue
        arrays.extend(pc.cast(table.column(id_column), pa.string()).chunks)
    if not arrays:
        return frozenset()
    ids = pa.chunked_array(arrays, pa.string())
    ids = ids.filter(pc.and_(pc.is_valid(ids), pc.not_equal(pc.utf8_trim_whitespace(ids), "")))
    counts = pc.value_counts(ids)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    return frozenset(repeated.field("values").to_pylist())


def read_parquet(fs_config: FsConfig, uri: str) -> pa.Table:
    """A whole Parquet file."""
    fs, path = fs_config.filesystem(uri)
    with fs.open_input_file(path) as handle:
        return pq.read_table(handle)


def write_parquet(fs_config: FsConfig, table: pa.Table, uri: str) -> None:
    fs, path = fs_config.filesystem(uri)
    if not uri.startswith("s3://"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, filesystem=fs)
