"""Which datasets a caller may name, and uploads: the AutoML trust boundary.

Two kinds of caller:

* **untrusted** (HTTP): a server-issued upload id, or an object under the data bucket's
  ``datasets/`` prefix (``s3://<data bucket>/datasets/...``). Never a local path, never another
  bucket, no ``..``; under ``datasets/uploads/`` only one upload's own file (its id is random, so
  knowing it is what lets a caller use it: a folder there would read everyone's uploads).
* **trusted** (the CLI, running as its user): any local path or ``s3://`` URI the user can read.

An upload is checked before it is stored (size, then content: CSV that decodes as UTF-8 and parses
to a header and rows, or Parquet with its magic bytes and a readable footer) and stored under a
random key, ``datasets/uploads/<upload id>/<sanitised name>``: two uploads never overwrite each other.
"""

from __future__ import annotations

import io
import re
import secrets
from dataclasses import dataclass

from nimbus.config import Settings
from nimbus.errors import InvalidInput
from nimbus.stores.objects import ObjectStore

DATASETS_PREFIX = "datasets/"
UPLOADS_PREFIX = "datasets/uploads/"
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
SUFFIXES = (".csv", ".parquet")
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_KEY_PART = re.compile(r"^[A-Za-z0-9._=+@,-]+$")  # one segment of an object key a caller may name
PARQUET_MAGIC = b"PAR1"
CHECK_ROWS_BYTES = 1 << 20  # a CSV upload's header and first rows are parsed from its first MiB


@dataclass(frozen=True)
class Upload:
    upload_id: str
    key: str
    dataset: str  # the s3:// URI; the upload id names the same object

    def as_dict(self) -> dict[str, str]:
        return {"upload_id": self.upload_id, "dataset": self.dataset}


def resolve(settings: Settings, dataset: str, *, trusted: bool) -> str:
    """The location to read for ``dataset`` as a caller names it, or InvalidInput saying why it may not.

    Trusted callers' names are used as they are. The messages name the rule, not the location."""
    if trusted:
        return dataset
    dataset = dataset.strip()
    if UPLOAD_ID.match(dataset):
        return _upload_uri(settings, dataset)
    allowed = f"an upload id or s3://{settings.data_bucket}/{DATASETS_PREFIX}..."
    if not dataset.startswith("s3://"):
        raise InvalidInput(f"dataset: only {allowed} may be named here (no local paths)")
    bucket, _, key = dataset[5:].partition("/")
    if bucket != settings.data_bucket:
        raise InvalidInput(f"dataset: only {allowed} may be named here (not another bucket)")
    parts = key.rstrip("/").split("/")
    if not key.startswith(DATASETS_PREFIX) or len(parts) < 2:
        raise InvalidInput(f"dataset: only {allowed} may be named here (not outside {DATASETS_PREFIX})")
    if any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise InvalidInput("dataset: the key may hold only letters, digits and ._=+@,- between single slashes "
                           "(no '..', no empty or '.' segments)")
    if parts[1] == "uploads" and (len(parts) != 4 or not UPLOAD_ID.match(parts[2])):
        raise InvalidInput("dataset: under datasets/uploads/ name one upload (its upload id, or the URI "
                           "POST /automl/uploads answered), not a folder")
    return f"s3://{bucket}/{'/'.join(parts)}"


def _upload_uri(settings: Settings, upload_id: str) -> str:
    keys = ObjectStore.for_settings(settings).list_keys(settings.data_bucket, f"{UPLOADS_PREFIX}{upload_id}/")
    if len(keys) != 1:
        raise InvalidInput("dataset: no upload has that id")
    return f"s3://{settings.data_bucket}/{keys[0]}"


def safe_name(filename: str | None) -> str:
    """The file's own name, reduced to letters, digits and ._- (no folders, no leading dots)."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _SAFE.sub("_", name).lstrip(".")[-100:]
    suffix = next((x for x in SUFFIXES if name.lower().endswith(x)), None)
    if suffix is None or len(name) == len(suffix):
        raise InvalidInput("file: upload a .csv or .parquet file")
    return name[: -len(suffix)] + suffix  # the suffix in lower case: the reader goes by it


def check_content(name: str, data: bytes, settings: Settings) -> None:
    """The bytes are what the name says, parsed as the job will parse them; InvalidInput naming the reason."""
    if not data:
        raise InvalidInput("file: the file is empty")
    if name.endswith(".parquet"):
        _check_parquet(data, settings)
    else:
        _check_csv(data, settings)


def _check_parquet(data: bytes, settings: Settings) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nimbus.automl.data import check_columns

    if len(data) < 12 or data[:4] != PARQUET_MAGIC or data[-4:] != PARQUET_MAGIC:
        raise InvalidInput("file: not a Parquet file (no PAR1 magic bytes at its start and end)")
    try:
        metadata = pq.ParquetFile(io.BytesIO(data)).metadata
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"file: the Parquet footer cannot be read ({type(exc).__name__})") from exc
    if metadata.num_rows < 1:
        raise InvalidInput("file: the Parquet file has no rows")
    check_columns(settings, metadata.num_columns)


def _check_csv(data: bytes, settings: Settings) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from nimbus.automl.data import check_columns

    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"file: not UTF-8 text (undecodable byte at offset {exc.start})") from exc
    head = data[:CHECK_ROWS_BYTES]
    if len(data) > CHECK_ROWS_BYTES:  # whole lines only
        head = head[: head.rfind(b"\n") + 1] or head
    try:
        table = pacsv.read_csv(io.BytesIO(head))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInput(f"file: not a CSV file with a header and rows ({type(exc).__name__})") from exc
    if table.num_columns < 2 or table.num_rows < 1:
        raise InvalidInput("file: a CSV file needs a header of two or more columns and at least one row")
    check_columns(settings, table.num_columns)


def store_upload(settings: Settings, filename: str | None, data: bytes) -> Upload:
    """Check an upload (size, name, content) and store it under a fresh random key; nothing is stored
    when a check fails."""
    if len(data) > settings.automl_upload_max_bytes:
        raise InvalidInput(f"file: {len(data):,} bytes; the limit is {settings.automl_upload_max_bytes:,} "
                           f"(put larger data under s3://{settings.data_bucket}/{DATASETS_PREFIX} and name its URI)")
    name = safe_name(filename)
    check_content(name, data, settings)
    upload_id = secrets.token_hex(16)
    key = f"{UPLOADS_PREFIX}{upload_id}/{name}"
    content_type = "text/csv" if name.endswith(".csv") else "application/vnd.apache.parquet"
    ObjectStore.for_settings(settings).put_bytes(settings.data_bucket, key, data, content_type=content_type)
    return Upload(upload_id, key, f"s3://{settings.data_bucket}/{key}")
