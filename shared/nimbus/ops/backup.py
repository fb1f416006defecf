"""Back up every store Nimbus keeps state in to one folder, and restore it into empty stores.

The folder (``manifest.json`` says what is in it)::

    manifest.json            format, version, when, and per part what was copied (counts, bytes)
    redis.jsonl              one line per key: key, DUMP payload (base64), absolute expiry in ms or null
    mongodb/<db>/<coll>.bson the documents as stored (raw BSON, one after another): mongodump's layout,
                             so ``mongorestore DIR/mongodb`` reads it too
    s3/<role>/<key>          the objects of the data and artifacts buckets; s3/objects.jsonl lists them
    mlflow/mlflow.db         MLflow's backend database (SQLite's online backup: consistent while it runs)
    mlflow/artifacts/        MLflow's artifact store

Everything goes through the client libraries (redis-py, pymongo, boto3, sqlite3), so it works
against any server those speak to: Redis's DUMP/RESTORE instead of an RDB file (which needs a
shell on the Redis host), raw BSON through pymongo instead of ``mongodump`` (which the
MongoDB-wire server of the local stack does not ship). MLflow is copied only when its files
are on this machine; a remote tracking server is backed up with its own database's tools.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

from nimbus.config import Settings
from nimbus.errors import Conflict, InvalidInput
from nimbus.local.stack import LocalStack, mlflow_files
from nimbus.stores._base import redact
from nimbus.stores.documents import DocumentStore
from nimbus.stores.objects import ObjectStore
from nimbus.stores.redis.base import RedisStore

FORMAT = "nimbus-backup"
VERSION = 1
PARTS = ("redis", "mongodb", "s3", "mlflow")
RAW = CodecOptions(document_class=RawBSONDocument)  # documents byte for byte: no decode, no re-encode
BATCH = 500


@dataclass
class Part:
    """What one store contributed to (or took from) a backup."""

    part: str
    items: int = 0
    unit: str = ""
    bytes: int = 0
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"part": self.part, "items": self.items, "unit": self.unit, "bytes": self.bytes,
                "detail": self.detail, **self.extra}


def _buckets(settings: Settings) -> dict[str, str]:
    return {"data": settings.data_bucket, "artifacts": settings.artifacts_bucket}


def _tree_size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


# ---- Redis -----------------------------------------------------------------------------------
def _redis_keys(client: Any) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for key in client.scan_iter(count=1000):
        batch.append(key)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def backup_redis(settings: Settings, folder: Path) -> Part:
    """Every key of the configured database with its payload (DUMP) and expiry (kept absolute, so a
    key restored later expires when it would have)."""
    store = RedisStore.for_settings(settings)
    part = Part("redis", unit="keys")
    with store.redis as client, (folder / "redis.jsonl").open("w") as out:
        for keys in _redis_keys(client):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.dump(key)
                pipe.pttl(key)
            answers = pipe.execute()
            now_ms = int(time.time() * 1000)
            for key, payload, ttl in zip(keys, answers[::2], answers[1::2]):
                if payload is None:  # expired or deleted since the scan
                    continue
                out.write(json.dumps({"key": base64.b64encode(key).decode(), "dump": base64.b64encode(payload).decode(),
                                      "expire_at_ms": now_ms + ttl if ttl >= 0 else None}) + "\n")
                part.items += 1
                part.bytes += len(payload)
    return part


def redis_is_empty(settings: Settings) -> bool:
    with RedisStore.for_settings(settings).redis as client:
        return client.dbsize() == 0


def restore_redis(settings: Settings, folder: Path, force: bool) -> Part:
    part = Part("redis", unit="keys")
    with RedisStore.for_settings(settings).redis as client, (folder / "redis.jsonl").open() as lines:
        pipe = client.pipeline(transaction=False)
        expired = 0
        for line in lines:
            row = json.loads(line)
            payload = base64.b64decode(row["dump"])
            expire_at = row["expire_at_ms"]
            if expire_at is not None and expire_at <= time.time() * 1000:
                expired += 1  # it would be gone by now had Redis kept running
                continue
            # ABSTTL: the expiry is a point in time, so a key expires when it would have
            pipe.restore(base64.b64decode(row["key"]), expire_at or 0, payload, replace=force, absttl=expire_at is not None)
            part.items += 1
            part.bytes += len(payload)
            if len(pipe) >= BATCH:
                pipe.execute()
        pipe.execute()
    part.detail = f"{expired} expired since the backup" if expired else ""
    return part


# ---- MongoDB ---------------------------------------------------------------------------------
def backup_mongodb(settings: Settings, folder: Path) -> Part:
    db = DocumentStore.for_settings(settings).db
    target = folder / "mongodb" / db.name
    target.mkdir(parents=True)
    part = Part("mongodb", unit="documents", extra={"collections": {}})
    for name in sorted(n for n in db.list_collection_names() if not n.startswith("system.")):
        count = 0
        with (target / f"{name}.bson").open("wb") as out:
            for doc in db.get_collection(name, codec_options=RAW).find():
                out.write(doc.raw)
                count += 1
                part.bytes += len(doc.raw)
        part.extra["collections"][name] = count
        part.items += count
    part.detail = f"{len(part.extra['collections'])} collections"
    return part


def _bson_files(folder: Path, database: str) -> list[Path]:
    return sorted((folder / "mongodb" / database).glob("*.bson"))


def mongodb_clashes(settings: Settings, folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Collections of the backup that already hold documents here."""
    db = DocumentStore.for_settings(settings).db
    names = manifest["parts"]["mongodb"].get("collections", {})
    return [name for name in names if db[name].estimated_document_count() > 0]


def restore_mongodb(settings: Settings, folder: Path, manifest: dict[str, Any], force: bool) -> Part:
    store = DocumentStore.for_settings(settings)
    part = Part("mongodb", unit="documents")
    files = _bson_files(folder, manifest["parts"]["mongodb"]["database"])
    for path in files:
        collection = store.db.get_collection(path.stem, codec_options=RAW)
        if force:
            collection.delete_many({})
        with path.open("rb") as data:
            batch: list[RawBSONDocument] = []
            for doc in bson.decode_file_iter(data, codec_options=RAW):
                batch.append(doc)
                part.bytes += len(doc.raw)
                if len(batch) >= BATCH:
                    collection.insert_many(batch, ordered=False)
                    part.items += len(batch)
                    batch = []
            if batch:
                collection.insert_many(batch, ordered=False)
                part.items += len(batch)
    store.ensure_indexes()  # the declared indexes (stores/documents.py), not a copy of whatever was there
    part.detail = f"{len(files)} collections"
    return part


# ---- S3 ----------------------------------------------------------------------------------------
def _object_file(role: str, key: str, n: int) -> str:
    """Where an object's bytes go in the backup: under its key when that is a plain relative path
    (browsable, and ``aws s3 sync`` can push the folder back), else under a numbered name."""
    parts = PurePosixPath(key).parts
    plain = key and not key.startswith("/") and not key.endswith("/") and "//" not in key and ".." not in parts
    return f"s3/{role}/{key}" if plain and parts[0] != "_odd" else f"s3/{role}/_odd/{n}"


def backup_s3(settings: Settings, folder: Path) -> Part:
    objects = ObjectStore.for_settings(settings)
    part = Part("s3", unit="objects", extra={"buckets": {}})
    (folder / "s3").mkdir()
    n = 0
    with (folder / "s3" / "objects.jsonl").open("w") as index:
        for role, bucket in _buckets(settings).items():
            keys = objects.list_keys(bucket)
            part.extra["buckets"][role] = {"name": bucket, "objects": len(keys)}
            for key in keys:
                n += 1
                file = _object_file(role, key, n)
                path = folder / file
                if path.exists() or any(parent.is_file() for parent in path.parents):  # keys "a" and "a/b" both
                    file = f"s3/{role}/_odd/{n}"
                    path = folder / file
                path.parent.mkdir(parents=True, exist_ok=True)
                objects.download(bucket, key, str(path))
                size = path.stat().st_size
                index.write(json.dumps({"role": role, "key": key, "file": file, "bytes": size,
                                        "content_type": objects.content_type(bucket, key)}) + "\n")
                part.items += 1
                part.bytes += size
    part.detail = f"{len(part.extra['buckets'])} buckets"
    return part


def s3_clashes(settings: Settings) -> list[str]:
    objects = ObjectStore.for_settings(settings)
    return [bucket for bucket in _buckets(settings).values() if objects.has_objects(bucket)]


def restore_s3(settings: Settings, folder: Path) -> Part:
    objects = ObjectStore.for_settings(settings)
    buckets = _buckets(settings)  # the buckets of these settings, by role: a backup may move between names
    part = Part("s3", unit="objects")
    for bucket in buckets.values():
        objects.ensure_bucket(bucket)
    with (folder / "s3" / "objects.jsonl").open() as index:
        for line in index:
            row = json.loads(line)
            objects.upload(buckets[row["role"]], row["key"], str(folder / row["file"]), row.get("content_type"))
            part.items += 1
            part.bytes += row["bytes"]
    part.detail = f"{len(buckets)} buckets"
    return part


# ---- MLflow ------------------------------------------------------------------------------------
def backup_mlflow(settings: Settings, folder: Path) -> Part:
    files = mlflow_files(settings)
    if files is None:
        return Part("mlflow", unit="files", detail=f"skipped: remote tracking server {settings.tracking_uri}; "
                                                 "back up its database and artifact store (docs/operations.md)",
                    extra={"skipped": True})
    db, artifacts = files
    target = folder / "mlflow"
    target.mkdir()
    part = Part("mlflow", unit="files")
    if db.exists():
        # SQLite's online backup API: a consistent copy even while the tracking server writes
        source, copy = sqlite3.connect(f"file:{db}?mode=ro", uri=True), sqlite3.connect(target / "mlflow.db")
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
        part.items, part.bytes = 1, (target / "mlflow.db").stat().st_size
    if artifacts.is_dir():
        shutil.copytree(artifacts, target / "artifacts")
        count, size = _tree_size(target / "artifacts")
        part.items += count
        part.bytes += size
    part.detail = "database" + (" + artifacts" if artifacts.is_dir() else "") if db.exists() else "no database yet"
    return part


def mlflow_clashes(settings: Settings) -> list[str]:
    """The MLflow database, when it holds runs or registered models (a fresh one, made by a health
    check, holds neither: restoring over it loses nothing)."""
    files = mlflow_files(settings)
    if not files or not files[0].exists():
        return []
    connection = sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True)
    try:
        used = any(connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                   for table in ("runs", "registered_models"))
    except sqlite3.OperationalError:  # no such table: not initialised yet
        used = False
    finally:
        connection.close()
    return [str(files[0])] if used else []


def restore_mlflow(settings: Settings, folder: Path) -> Part:
    files = mlflow_files(settings)
    part = Part("mlflow", unit="files")
    if files is None:
        part.detail = f"skipped: remote tracking server {settings.tracking_uri}"
        return part
    db, artifacts = files
    if LocalStack(settings, mlflow_server=True).running("mlflow"):
        raise Conflict("the local MLflow server is running: stop it first (`nimbus local down -s mlflow`), "
                       "restore, then start it (`nimbus local up --mlflow-server`)")
    source_db = folder / "mlflow" / "mlflow.db"
    if source_db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        for stale in (db, *(db.with_name(db.name + end) for end in ("-wal", "-shm", "-journal"))):
            stale.unlink(missing_ok=True)  # an old write-ahead log would be replayed onto the restored file
        shutil.copyfile(source_db, db)
        part.items, part.bytes = 1, db.stat().st_size
    if (folder / "mlflow" / "artifacts").is_dir():
        shutil.copytree(folder / "mlflow" / "artifacts", artifacts, dirs_exist_ok=True)
        count, size = _tree_size(folder / "mlflow" / "artifacts")
        part.items += count
        part.bytes += size
    part.detail = "database + artifacts" if source_db.exists() else "nothing in the backup"
    return part


# ---- the whole backup ------------------------------------------------------------------------
def backup(settings: Settings, folder: Path) -> dict[str, Any]:
    """Copy every store into ``folder`` (new or empty); the manifest written there."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InvalidInput(f"{folder} exists and is not an empty folder: back up into a new one")
    folder.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        parts = [backup_redis(settings, folder), backup_mongodb(settings, folder), backup_s3(settings, folder),
                 backup_mlflow(settings, folder)]
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no half backup that looks whole; the rerun starts clean
        raise
    manifest = {
        "format": FORMAT, "version": VERSION, "created_at": datetime.now(UTC).isoformat(),
        "duration_s": round(time.monotonic() - started, 3),
        "source": {"redis": redact(settings.redis_url), "mongodb_database": settings.mongo_db,
                   "buckets": _buckets(settings), "mlflow": settings.tracking_uri},
        "parts": {p.part: p.to_dict() for p in parts},
    }
    manifest["parts"]["mongodb"]["database"] = settings.mongo_db
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a backup folder; InvalidInput naming what is wrong when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInput(f"{folder}: no such folder")
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{folder} is not a Nimbus backup: it has no manifest.json") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InvalidInput(f"{folder} is not a Nimbus backup: manifest.json has no format {FORMAT!r}")
    if manifest.get("version") != VERSION:
        raise InvalidInput(f"{folder} is a backup of format version {manifest.get('version')}; "
                           f"this Nimbus reads version {VERSION}")
    missing = [p for p in PARTS if p not in manifest.get("parts", {})]
    if missing:
        raise InvalidInput(f"{folder}: manifest.json lacks the part(s) {', '.join(missing)}")
    return manifest


def restore(settings: Settings, folder: Path, force: bool = False) -> dict[str, Any]:
    """Put a backup back into empty stores (``force``: overwrite what is there); what was restored."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if not force:
        clashes = ((["redis"] if not redis_is_empty(settings) else [])
                   + [f"mongodb {name}" for name in mongodb_clashes(settings, folder, manifest)]
                   + [f"s3 {name}" for name in s3_clashes(settings)]
                   + ([f"mlflow {path}" for path in mlflow_clashes(settings)]
                      if not manifest["parts"]["mlflow"].get("skipped") else []))
        if clashes:
            raise Conflict(f"not empty: {', '.join(clashes)}; restore into empty stores, or pass --force to overwrite")
    started = time.monotonic()
    mlflow = (Part("mlflow", unit="files", detail="skipped: not in the backup")
              if manifest["parts"]["mlflow"].get("skipped") else restore_mlflow(settings, folder))
    parts = [restore_redis(settings, folder, force), restore_mongodb(settings, folder, manifest, force),
             restore_s3(settings, folder), mlflow]
    return {"backup": str(folder), "created_at": manifest["created_at"],
            "duration_s": round(time.monotonic() - started, 3), "parts": {p.part: p.to_dict() for p in parts}}
