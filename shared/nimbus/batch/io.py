"""Where batch data lives: local paths or S3 URIs, split into tasks, read and written with Arrow.

Executors read and write S3 themselves through Arrow's S3 filesystem, so a Spark
cluster needs no Hadoop S3 connector; ``FsConfig`` is the picklable recipe they rebuild it from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from nimbus.config import Settings
from nimbus.errors import InvalidInput

FORMATS = (".parquet", ".pq", ".csv", ".csv.gz")
ROWS_PER_SPLIT = 250_000


@dataclass(frozen=True)
class FsConfig:
    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> FsConfig:
        import os

        endpoint = settings.aws_endpoint_url
        key = os.environ.get("AWS_ACCESS_KEY_ID") or ("test" if endpoint else None)
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY") or ("test" if endpoint else None)
        return cls(endpoint, settings.aws_region, key, secret)

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


def list_inputs(fs_config: FsConfig, uri: str) -> list[InputFile]:
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


def input_schema(fs_config: FsConfig, file: InputFile) -> dict[str, str]:
    """Column name -> Arrow type, read from the Parquet footer or the CSV header only."""
    fs, path = fs_config.filesystem(file.uri)
    if file.uri.endswith((".parquet", ".pq")):
        with fs.open_input_file(path) as handle:
            schema = pq.ParquetFile(handle).schema_arrow
        return {f.name: str(f.type) for f in schema}
    with fs.open_input_stream(path, compression="detect") as handle:
        names = pacsv.open_csv(handle).schema.names
    return {name: "string" for name in names}


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
                splits.append(Split(file.uri, tuple(group), len(splits)))
                group, rows = [], 0
        if group:
            splits.append(Split(file.uri, tuple(group), len(splits)))
    return splits


def read_split(fs_config: FsConfig, split: Split) -> pa.Table:
    fs, path = fs_config.filesystem(split.uri)
    if split.row_groups is not None:
        with fs.open_input_file(path) as handle:
            return pq.ParquetFile(handle).read_row_groups(list(split.row_groups))
    with fs.open_input_stream(path, compression="detect") as handle:
        # Every column as text: a bad value becomes a quarantined record, not a failed read.
        header = pacsv.open_csv(handle).schema
    with fs.open_input_stream(path, compression="detect") as handle:
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in header.names}, strings_can_be_null=True)
        return pacsv.read_csv(handle, convert_options=convert)


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
