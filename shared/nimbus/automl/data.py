"""AutoML's data path for datasets of any size: read in chunks, never the whole dataset at once.

A dataset (a CSV or Parquet file, or a folder of parts, local or on S3) is opened as a
pyarrow dataset and read as record batches of ``BATCH_ROWS`` rows. pyarrow rather than Ray
Data: the sampling pass is one sequential scan whose memory is bounded by a batch and the
samples it keeps; it needs no cluster (``submit`` runs inside the API process) and reads S3
with the same ``S3FileSystem`` the batch path uses (``nimbus.batch.io.FsConfig``).

One pass gives the row count, exact class counts, and three samples:

* each row gets a split from a hash of its position (test ``TEST_SHARE``, validation
  ``VALID_SHARE``, the rest train), so a second pass (the incremental refit) finds the
  same rows in the same split without keeping any row id;
* the train sample is a bottom-k sample on a second hash (a reservoir: the ``k`` rows
  with the smallest keys are a uniform sample) plus, per class, the ``floor`` smallest
  keys of that class, so rare classes are kept; any prefix of it by key is again such a
  sample, which gives the smaller search sample;
* the test and validation samples are uniform bottom-k samples of their splits.

``k`` is sized from the memory budget (``Settings.automl_memory_mb``) and the size of a
row in memory, measured on the first batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from nimbus.config import Settings
from nimbus.errors import InvalidInput

BATCH_ROWS = 65_536
TEST_SHARE = 0.2
VALID_SHARE = 0.05  # taken out of training only when the training rows do not fit in memory
TEST_MAX_ROWS = 50_000
VALID_MAX_ROWS = 20_000
MAX_CLASSES = 1_000  # more distinct target values than this: no stratification (a regression target)
MIN_FLOOR = 10
# Bytes a sampled row costs all told, per byte it takes as a pandas row: the sample and its
# compaction copies, the preprocessed float64 matrix (one-hot widens it) and the model's copies.
MEMORY_FACTOR = 8
PEEK_ROWS = 50_000  # what ``submit`` reads to check a request
PEEK_BATCH_ROWS = 4_096  # its batches: the first one's row width is checked before more are read
VALID_COLUMN = "__nimbus_valid__"  # marks the validation-split rows inside the training sample


def _hash01(index: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64 of (position, salt) as a float in [0, 1): the same position always draws the same."""
    z = index.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _files(settings: Settings, location: str) -> tuple[Any, list[str]]:
    """(filesystem, the data files at ``location``: the file, or a folder's CSV/Parquet files in order).

    The messages name neither the location nor what the filesystem said (it may hold paths and
    endpoints): a caller over HTTP learns only what is wrong; the CLI adds the path it was given."""
    import pyarrow.fs as pafs

    from nimbus.batch.io import FORMATS, FsConfig

    fs, path = FsConfig.from_settings(settings).filesystem(location)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InvalidInput("the dataset does not exist: no such file or folder")
        infos = [info] if info.type == pafs.FileType.File else [
            i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if i.type == pafs.FileType.File and i.path.endswith(FORMATS) and "/_" not in i.path]
    except OSError as exc:
        raise InvalidInput(f"the dataset cannot be listed ({type(exc).__name__})") from exc
    if not infos:
        raise InvalidInput("the dataset's folder holds no CSV or Parquet files")
    if not all(i.path.endswith(FORMATS) for i in infos):
        raise InvalidInput("the dataset is not a .csv, .csv.gz or .parquet file")
    return fs, sorted(i.path for i in infos)


def open_dataset(settings: Settings, location: str) -> ds.Dataset:
    """A CSV or Parquet file, or a folder of parts, local or ``s3://`` — opened, not read.

    Which locations a caller may name is decided before (``nimbus.automl.inputs``), not here."""
    fs, paths = _files(settings, location)
    kinds = {"parquet" if p.endswith((".parquet", ".pq")) else "csv" for p in paths}
    if len(kinds) > 1:
        raise InvalidInput("the dataset mixes CSV and Parquet parts; use one format")
    try:
        if kinds == {"parquet"}:
            return ds.dataset(paths, format="parquet", filesystem=fs)
        import pyarrow.csv as pacsv

        csv = ds.CsvFileFormat(convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
                               read_options=pacsv.ReadOptions(block_size=8 << 20))
        return ds.dataset(paths, format=csv, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise unreadable(exc) from exc


def unreadable(exc: Exception) -> InvalidInput:
    """The dataset cannot be parsed: the error's kind, never its text (Arrow quotes rows and paths)."""
    return InvalidInput(f"the dataset cannot be read as CSV or Parquet ({type(exc).__name__}); "
                        "check the format, the encoding (UTF-8) and that every row has the header's columns")


def batches(dataset: ds.Dataset, location: str, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Record batches in a fixed order (file by file, each file in order), a few in flight at most.

    Parquet without pre-buffering: it would fetch whole row-group ranges ahead, which measured
    about twice the memory for the same speed on local disk."""
    options = {"fragment_scan_options": ds.ParquetFragmentScanOptions(pre_buffer=False)} \
        if isinstance(dataset.format, ds.ParquetFileFormat) else {}
    try:
        for fragment in dataset.get_fragments():
            yield from fragment.to_batches(schema=dataset.schema, batch_size=batch_rows, batch_readahead=1,
                                           fragment_readahead=1, use_threads=True, **options)
    except (pa.ArrowInvalid, OSError) as exc:
        raise unreadable(exc) from exc


def count_rows(dataset: ds.Dataset) -> int | None:
    """The row count from Parquet footers (no data read); None for CSV."""
    if not isinstance(dataset.format, ds.ParquetFileFormat):
        return None
    return sum(f.metadata.num_rows for f in dataset.get_fragments())


def peek(settings: Settings, location: str, rows: int = PEEK_ROWS) -> tuple[pd.DataFrame, int | None, bool]:
    """The first ``rows`` rows (bounded memory), the row count when the footers give it, and
    whether those rows are the whole dataset.

    The dataset's shape is checked first: at most ``automl_max_columns`` columns (from the schema,
    before any row is read) and rows of at most ``automl_max_row_bytes`` (measured on the first
    batch, before more are read)."""
    dataset = open_dataset(settings, location)
    check_columns(settings, len(dataset.schema.names))
    taken: list[pa.RecordBatch] = []
    have, whole = 0, True
    for batch in batches(dataset, location, min(PEEK_BATCH_ROWS, rows)):
        if have >= rows:
            whole = False
            break
        if not taken and batch.num_rows:
            width = row_bytes(batch)
            if width > settings.automl_max_row_bytes:
                raise InvalidInput(f"dataset: rows are too wide (about {width:,.0f} bytes each in memory; "
                                   f"the limit is {settings.automl_max_row_bytes:,})")
        taken.append(batch)
        have += batch.num_rows
    table = pa.Table.from_batches(taken, schema=dataset.schema)
    total = count_rows(dataset)
    if total is not None:
        whole = total <= have
    elif whole:
        total = have
    return table.to_pandas(), total, whole


def check_columns(settings: Settings, columns: int) -> None:
    if columns > settings.automl_max_columns:
        raise InvalidInput(f"dataset: {columns:,} columns; the limit is {settings.automl_max_columns:,}")


def _bottom(keys: np.ndarray, classes: np.ndarray | None, k: int, floor: int) -> np.ndarray:
    """Rows among the ``k`` smallest keys, or among the ``floor`` smallest of their class."""
    keep = np.zeros(len(keys), dtype=bool)
    if len(keys) <= k:
        keep[:] = True
        return keep
    keep |= keys <= np.partition(keys, k - 1)[k - 1]
    if classes is not None and floor > 0:
        for c in np.unique(classes):
            rows = np.flatnonzero(classes == c)
            if len(rows) <= floor:
                keep[rows] = True
            else:
                keep[rows] |= keys[rows] <= np.partition(keys[rows], floor - 1)[floor - 1]
    return keep


@dataclass
class _Reservoir:
    """A bottom-k sample (with a per-class floor) kept while batches stream past."""

    k: int
    stratified: bool
    parts: list[pa.Table] = field(default_factory=list)
    keys: list[np.ndarray] = field(default_factory=list)
    classes: list[np.ndarray] = field(default_factory=list)
    pending: int = 0
    threshold: float = np.inf
    class_threshold: dict[int, float] = field(default_factory=dict)
    seen: int = 0  # rows offered

    def floor(self, n_classes: int) -> int:
        return max(MIN_FLOOR, self.k // (2 * max(1, n_classes))) if self.stratified else 0

    def offer(self, table: pa.Table, keys: np.ndarray, classes: np.ndarray, n_classes: int) -> None:
        self.seen += len(keys)
        wanted = keys <= self.threshold
        if self.stratified and self.class_threshold:
            limits = np.array([self.class_threshold.get(int(c), np.inf) for c in range(n_classes)])
            wanted |= keys <= limits[classes]
        elif self.stratified:
            wanted[:] = True
        if not wanted.any():
            return
        rows = np.flatnonzero(wanted)
        self.parts.append(table.take(rows))
        self.keys.append(keys[rows])
        self.classes.append(classes[rows])
        self.pending += len(rows)
        if self.pending > max(self.k // 2, BATCH_ROWS):
            self.compact(n_classes)

    def compact(self, n_classes: int) -> None:
        if not self.parts:
            return
        keys, classes = np.concatenate(self.keys), np.concatenate(self.classes)
        keep = _bottom(keys, classes if self.stratified else None, self.k, self.floor(n_classes))
        table = pa.concat_tables(self.parts).take(np.flatnonzero(keep)).combine_chunks()
        keys, classes = keys[keep], classes[keep]
        self.parts, self.keys, self.classes, self.pending = [table], [keys], [classes], 0
        if len(keys) >= self.k:
            self.threshold = float(np.partition(keys, self.k - 1)[self.k - 1])
        if self.stratified:
            floor = self.floor(n_classes)
            self.class_threshold = {}
            for c in np.unique(classes):
                own = keys[classes == c]
                if len(own) >= floor:
                    self.class_threshold[int(c)] = float(np.partition(own, floor - 1)[floor - 1])

    def result(self, n_classes: int, schema: pa.Schema) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        self.compact(n_classes)
        if not self.parts:
            return schema.empty_table(), np.empty(0), np.empty(0, dtype=np.int32)
        order = np.argsort(self.keys[0], kind="stable")  # by key: any prefix is again a sample
        return self.parts[0].take(order), self.keys[0][order], self.classes[0][order]


@dataclass
class Scan:
    """What one pass over a dataset found: counts, and samples small enough for memory."""

    location: str
    target: str
    rows: int  # rows with a target value
    train_rows: int
    null_target_rows: int
    class_counts: dict[Any, int] | None  # exact, over every row; None when the target is not stratified
    memory_rows: int  # rows of training data the memory budget holds
    train: pd.DataFrame  # the training sample, ordered by key (stratified prefix = smaller sample)
    train_keys: np.ndarray
    train_classes: np.ndarray
    test: pd.DataFrame  # held out: disjoint from every training row
    valid: pd.DataFrame  # held out from training only when the training rows do not fit (``fits`` False)
    seconds: float
    stratify: bool = True  # the pass stratified by target value (a second pass must do the same)

    @property
    def fits(self) -> bool:
        """Every training row is in ``train``: the refit can happen in memory."""
        return self.train_rows <= self.memory_rows

    def summary(self) -> dict[str, Any]:
        """What the pass found, for the job document (class labels as text: document keys)."""
        return {"rows": self.rows, "training_rows": self.train_rows, "test_rows": len(self.test),
                "null_target_rows": self.null_target_rows, "memory_rows": self.memory_rows,
                "fits_memory": self.fits, "sample_rows": len(self.training()), "scan_s": round(self.seconds, 3),
                "class_counts": None if self.class_counts is None else {str(k): v for k, v in self.class_counts.items()}}

    def training(self) -> pd.DataFrame:
        """The training rows to refit on in memory: all of them, or (over memory) the sample less validation."""
        frame = self.train if self.fits else self.train[~self.train[VALID_COLUMN]]
        return frame.drop(columns=[VALID_COLUMN])

    def search_sample(self, rows: int) -> pd.DataFrame:
        """A stratified sample of the training rows of at most ``rows`` rows (about), rare classes kept."""
        frame = self.training()
        if len(frame) <= rows:
            return frame
        keep = _bottom(self.train_keys[frame.index], self.train_classes[frame.index] if self.class_counts else None,
                       rows, max(MIN_FLOOR, rows // (2 * max(1, len(self.class_counts or {})))))
        return frame[keep]


def row_bytes(batch: pa.RecordBatch | pa.Table) -> float:
    """Bytes a row takes as pandas (object strings included), measured on a slice of a batch."""
    part = batch.slice(0, min(batch.num_rows, 2_000))
    return max(8.0, float(part.to_pandas().memory_usage(deep=True, index=False).sum()) / max(1, part.num_rows))


def memory_rows(settings: Settings, bytes_per_row: float) -> int:
    return max(1_000, int(settings.automl_memory_mb * 2**20 / (bytes_per_row * MEMORY_FACTOR)))


def _split(index: np.ndarray) -> np.ndarray:
    """0 train, 1 validation (a train row unless the data is over memory), 2 test."""
    u = _hash01(index, salt=1)
    return np.where(u < TEST_SHARE, 2, np.where(u < TEST_SHARE + VALID_SHARE, 1, 0)).astype(np.int8)


class _Classes:
    """Target values to small integer ids, counted exactly while there are at most MAX_CLASSES."""

    def __init__(self, stratify: bool) -> None:
        self.ids: dict[Any, int] = {}
        self.first_seen: set[int] = set()
        self.counts: list[int] = []
        self.active = stratify

    def encode(self, values: pa.Array) -> np.ndarray:
        if not self.active:
            return np.zeros(len(values), dtype=np.int32)
        if pa.types.is_floating(values.type):
            as_float = values.to_numpy(zero_copy_only=False)
            if not np.all(np.isfinite(as_float) & (as_float == np.round(as_float))):
                self.active = False  # a continuous target
                return np.zeros(len(values), dtype=np.int32)
        encoded = pc.dictionary_encode(values).combine_chunks() if isinstance(values, pa.ChunkedArray) \
            else pc.dictionary_encode(values)
        mapping = np.array([self.ids.setdefault(v, len(self.ids)) for v in encoded.dictionary.to_pylist()],
                           dtype=np.int32)
        if len(self.ids) > MAX_CLASSES:
            self.active = False
            return np.zeros(len(values), dtype=np.int32)
        codes = mapping[encoded.indices.to_numpy(zero_copy_only=False)]
        self.counts.extend([0] * (len(self.ids) - len(self.counts)))
        for c, n in enumerate(np.bincount(codes, minlength=len(self.ids)).tolist()):
            self.counts[c] += n
        return codes

    def result(self) -> dict[Any, int] | None:
        return dict(zip(self.ids, self.counts, strict=True)) if self.active else None


@dataclass
class _Chunk:
    table: pa.Table  # rows with a target value
    index: np.ndarray  # their positions in the dataset
    split: np.ndarray  # 0 train, 1 validation, 2 test
    codes: np.ndarray  # class ids (0 when not stratified)
    nulls: int  # rows of the batch without a target value


def _stream(dataset: ds.Dataset, location: str, target: str, classes: _Classes,
            batch_rows: int = BATCH_ROWS) -> Iterator[_Chunk]:
    """Batches with each row's split; every pass over the same data assigns the same splits."""
    position = 0
    for batch in batches(dataset, location, batch_rows):
        index = np.arange(position, position + batch.num_rows)
        position += batch.num_rows
        present = pc.is_valid(batch.column(target))
        nulls = batch.num_rows - pc.sum(present).as_py() if batch.num_rows else 0
        if nulls:
            batch, index = batch.filter(present), index[present.to_numpy(zero_copy_only=False)]
        if batch.num_rows == 0:
            yield _Chunk(pa.Table.from_batches([batch]), index, np.empty(0, np.int8), np.empty(0, np.int32), nulls)
            continue
        codes = classes.encode(batch.column(target))
        split = _split(index)
        if classes.active:  # a class's first row always trains, so no class is seen only in the test set
            values, first = np.unique(codes, return_index=True)
            for c, row in zip(values.tolist(), first.tolist(), strict=True):
                if c not in classes.first_seen:
                    classes.first_seen.add(c)
                    split[row] = 0
        yield _Chunk(pa.Table.from_batches([batch]), index, split, codes, nulls)


def scan(settings: Settings, location: str, target: str, task: str | None = None) -> Scan:
    """One streaming pass: counts, class counts, and the train, validation and test samples."""
    start = time.monotonic()
    dataset = open_dataset(settings, location)
    if target not in dataset.schema.names:  # the caller's own name only: the columns are the data's
        raise InvalidInput(f"target column {target!r} is not in the dataset")
    classes = _Classes(stratify=task != "regression")
    train = test = valid = None
    rows = nulls = train_rows = 0
    for chunk in _stream(dataset, location, target, classes):
        nulls += chunk.nulls
        if len(chunk.index) == 0:
            continue
        if train is None:  # sized from the first rows as pandas
            budget = memory_rows(settings, row_bytes(chunk.table))
            train = _Reservoir(budget, stratified=True)
            test = _Reservoir(min(TEST_MAX_ROWS, budget), stratified=False)
            valid = _Reservoir(min(VALID_MAX_ROWS, budget), stratified=False)
        rows += len(chunk.index)
        train.stratified = classes.active
        table = chunk.table.append_column(VALID_COLUMN, pa.array(chunk.split == 1))
        keys = _hash01(chunk.index, salt=2)
        n = len(classes.ids) if classes.active else 1
        for reservoir, mask in ((train, chunk.split < 2), (test, chunk.split == 2), (valid, chunk.split == 1)):
            if mask.any():
                rows_in = np.flatnonzero(mask)
                reservoir.offer(table.take(rows_in), keys[rows_in], chunk.codes[rows_in], n)
        train_rows += int((chunk.split < 2).sum())
    if train is None:
        raise InvalidInput(f"the dataset has 0 rows with a value in {target!r}; at least 20 are needed")
    n = len(classes.ids) if classes.active else 1
    train.stratified = classes.active
    schema = dataset.schema.append(pa.field(VALID_COLUMN, pa.bool_()))
    table, keys, codes = train.result(n, schema)
    held = [_frame(r.result(n, schema)[0].drop_columns([VALID_COLUMN])) for r in (test, valid)]
    return Scan(location, target, rows, train_rows, nulls, classes.result(), train.k, _frame(table), keys,
                codes, held[0], held[1], time.monotonic() - start, stratify=task != "regression")


def _frame(table: pa.Table) -> pd.DataFrame:
    """As pandas, indexed by position (an index pandas stored in Parquet would come back otherwise)."""
    return table.to_pandas().reset_index(drop=True)


def training_chunks(settings: Settings, scan_: Scan, batch_rows: int = BATCH_ROWS) -> Iterator[pd.DataFrame]:
    """The training rows of a scanned dataset, chunk by chunk, as pandas (validation rows left out:
    this is for data over memory, where they choose between refit models)."""
    classes = _Classes(stratify=scan_.stratify)
    dataset = open_dataset(settings, scan_.location)
    for chunk in _stream(dataset, scan_.location, scan_.target, classes, batch_rows):
        rows = np.flatnonzero(chunk.split == 0)
        if len(rows):
            yield _frame(chunk.table.take(rows))
