"""The batch input limits without backends: key confinement, the decompressed-size limit, the unique-id rule."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pytest

from nimbus.batch.io import FsConfig, InputTooLarge, Split, UnsafeKey, duplicate_ids, read_csv_text, safe_key
from nimbus.validation.arrow import check
from nimbus.validation.schema import load_schema


@pytest.mark.parametrize("key", ["incoming/../../x.csv", "/etc/x.csv", "incoming//x.csv", "incoming/./x.csv",
                                 "..", "incoming\\..\\x.csv", "incoming/x\x00.csv", "incoming/x\n.csv", ""])
def test_keys_with_odd_parts_are_refused_naming_the_key(key: str) -> None:
    with pytest.raises(UnsafeKey, match="refused") as refused:
        safe_key("nimbus-data", key)
    assert repr(key) in str(refused.value)


def test_an_ordinary_key_with_folders_and_spaces_is_taken() -> None:
    assert str(safe_key("nimbus-data", "incoming/2026-11-26/orders day 1.csv")) == "incoming/2026-11-26/orders day 1.csv"


def test_a_gzip_past_the_limit_stops_there(tmp_path: Path) -> None:
    path = tmp_path / "bomb.csv.gz"
    path.write_bytes(gzip.compress(b"record_id,x\n" + b"r1,2\n" * 600_000))  # 3 MB of text, a few KB on disk
    assert path.stat().st_size < 100_000
    with pytest.raises(InputTooLarge, match=r"bomb\.csv\.gz: decompresses to more than 1 MB"):
        read_csv_text(FsConfig(None, "us-east-1", None, None, 1 << 20), str(path))
    table = read_csv_text(FsConfig(None, "us-east-1", None, None, 4 << 20), str(path))
    assert table.num_rows == 600_000


def test_ids_shared_across_splits_are_found_and_fail_the_unique_rule(tmp_path: Path) -> None:
    fs = FsConfig(None, "us-east-1", None, None, 1 << 20)
    (tmp_path / "a.csv").write_text("record_id,f0\nr1,1\nr2,1\n ,1\n ,1\n")
    (tmp_path / "b.csv").write_text("record_id,f0\nr3,1\nr1,1\nr3,1\n,1\n")
    shared = duplicate_ids(fs, [Split(str(tmp_path / n), None, i) for i, n in enumerate(("a.csv", "b.csv"))],
                           "record_id")
    assert shared == {"r1", "r3"}
    schema = load_schema("churn")
    rules = [*schema.compiled(), schema.unique_rule()]
    table = pa.table({"record_id": ["r3", "r1", "r4", None]})
    assert check(table, schema, rules, duplicates=shared).failures["record_id.unique"].tolist() == \
        [True, True, False, False]
    assert check(pa.table({"record_id": ["x", "y", "x"]}), schema, rules).failures["record_id.unique"].tolist() == \
        [True, False, True]  # without the input's set: the ids shared within the table
