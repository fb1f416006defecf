"""Throughput of a batch run against a plain single process, on the same data, in one run.

    .venv/bin/python benchmarks/batch_throughput.py [--rows 10000000] [--mongo-rows 1000000]

Starts its own S3/SQS emulator and MongoDB-wire server (loopback, free ports) and a SQLite
MLflow; generates `--rows` records x 20 float features (Parquet, local disk); trains and
registers a logistic regression and a 100-iteration HistGradientBoosting; then measures
  1. the plain process: pyarrow read -> numpy -> two predict_proba -> pyarrow write;
  2. the Spark run (local[*]): read, validate every rule, score with both models, write
     Parquet to S3 and commit it — `nimbus batch run` itself, with per-stage task time;
  2b. the same run through Spark Connect: a Connect server (local[all cores], started from the pyspark
     package on loopback, tests/spark_connect.py) and `nimbus batch run` as its client, a process of
     its own with NIMBUS_SPARK_REMOTE (the same file under another name: a run is keyed by its input);
  3. the same scoring on a 2M-row sample three ways: our Arrow-native tasks, JVM-read
     mapInPandas, and mlflow.pyfunc.spark_udf (to show why the first is kept);
  4. the MongoDB sink on `--mongo-rows` records (one document per block of 1,000 records, bound by the
     local wire server's own write speed, not by Spark), next to the same records Parquet-only.
Goals (issue 16): the batch run (and through Spark Connect) >= 1.0x the plain process; the MongoDB sink
>= 10 M records/hour (2,800 records/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "shared"), str(ROOT)]

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from nimbus.config import Settings  # noqa: E402
from nimbus.local.stack import LocalStack, free_port  # noqa: E402

FEATURES = [f"f{j}" for j in range(20)]


def connect_run(path: Path, settings: Settings, home: Path) -> tuple[float, dict]:
    """`nimbus batch run` as a Spark Connect client of a server started here: (command's wall seconds, run doc)."""
    from nimbus.stores.documents import Collections, DocumentStore
    from tests.spark_connect import connect_server

    with connect_server(home / "connect-logs", cores=os.cpu_count() or 1, memory="4g") as server:
        env = {**os.environ, "NIMBUS_SPARK_REMOTE": server.url,
               "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), os.environ.get("PYTHONPATH", "")])}
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nimbus.cli", "batch", "run", str(path), "--sinks", "parquet",
                               "--json"],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"the Spark Connect run failed:\n{done.stderr[-3000:]}")
    key = json.loads(done.stdout)["run_key"]
    return wall, DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).find_one({"_id": key})


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, 1_000_000):
        n = min(1_000_000, rows - start)
        x = rng.normal(size=(n, 20)).astype(np.float32)
        cols = {"record_id": pa.array(np.char.add("r", np.arange(start, start + n).astype(str)))}
        cols.update({f: pa.array(x[:, j]) for j, f in enumerate(FEATURES)})
        table = pa.table(cols)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=250_000)
    writer.close()


def plain(path: Path, out: Path, settings: Settings, versions: dict[str, str]) -> dict[str, float]:
    from nimbus.stores.registry import Registry

    lr, hgb = (Registry.for_settings(settings).load_sklearn(m, versions[m]) for m in ("churn-lr", "churn-hgb"))
    t0 = time.perf_counter()
    table = pq.read_table(path)
    x = np.column_stack([table.column(f).to_numpy() for f in FEATURES]).astype(np.float64)
    t1 = time.perf_counter()
    import pandas as pd

    frame = pd.DataFrame(x, columns=FEATURES)
    p_lr, p_hgb = lr.predict_proba(frame)[:, 1], hgb.predict_proba(frame)[:, 1]
    t2 = time.perf_counter()
    pq.write_table(pa.table({"record_id": table.column("record_id"), "lr": p_lr, "hgb": p_hgb}), out)
    t3 = time.perf_counter()
    return {"read": t1 - t0, "score": t2 - t1, "write": t3 - t2, "total": t3 - t0}


def alternatives(sample: Path, settings: Settings, versions: dict[str, str]) -> dict[str, float]:
    """The same 2-model scoring of one file, three ways, on the warm Spark session."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from nimbus.batch.spark import spark_session
    from nimbus.stores.registry import Registry

    spark = spark_session(settings)
    out = {}
    lr, hgb = (Registry.for_settings(settings).load_sklearn(m, versions[m]) for m in ("churn-lr", "churn-hgb"))
    models = spark.sparkContext.broadcast((lr, hgb))
    schema = T.StructType([T.StructField("record_id", T.StringType()), T.StructField("lr", T.DoubleType()),
                           T.StructField("hgb", T.DoubleType())])

    def score(batches):
        import pandas as pd

        m_lr, m_hgb = models.value
        for pdf in batches:
            x = pdf[FEATURES].astype("float64")
            yield pd.DataFrame({"record_id": pdf["record_id"], "lr": m_lr.predict_proba(x)[:, 1],
                                "hgb": m_hgb.predict_proba(x)[:, 1]})

    target = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    spark.read.parquet(str(sample)).mapInPandas(score, schema).write.mode("overwrite").parquet(str(target / "a"))
    out["mapInPandas (JVM read)"] = time.perf_counter() - t

    import mlflow.pyfunc

    udf_lr = mlflow.pyfunc.spark_udf(spark, f"models:/churn-lr/{versions['churn-lr']}", result_type="double")
    udf_hgb = mlflow.pyfunc.spark_udf(spark, f"models:/churn-hgb/{versions['churn-hgb']}", result_type="double")
    t = time.perf_counter()
    df = spark.read.parquet(str(sample))
    cols = [F.col(f).cast("double").alias(f) for f in FEATURES]
    df.select("record_id", udf_lr(F.struct(*cols)).alias("lr"), udf_hgb(F.struct(*cols)).alias("hgb")) \
        .write.mode("overwrite").parquet(str(target / "b"))
    out["mlflow.pyfunc.spark_udf"] = time.perf_counter() - t
    shutil.rmtree(target, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--mongo-rows", type=int, default=1_000_000)
    parser.add_argument("--sample-rows", type=int, default=2_000_000)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="nimbus-batch-bench-"))
    os.environ.update({
        "NIMBUS_HOME": str(home), "NIMBUS_PROJECT_ROOT": str(ROOT), "NIMBUS_MLFLOW_TRACKING_URI": "",
        "NIMBUS_MONGO_URL": f"mongodb://127.0.0.1:{free_port()}/",
        "NIMBUS_AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_LOGGING_LEVEL": "WARNING", "NIMBUS_SPARK_DRIVER_MEMORY": "4g"})
    settings = Settings()
    stack = LocalStack(settings, ephemeral=True)
    stack.up(["mongodb", "s3", "mlflow"])
    try:
        from nimbus.batch.examples import train_models
        from nimbus.batch.job import RunRequest, run_batch
        from nimbus.stores.documents import Collections, DocumentStore

        data = home / "input.parquet"
        t = time.perf_counter()
        generate(data, args.rows)
        versions = train_models(settings, n=100_000)
        print(f"setup: {args.rows:,} records x 20 features ({data.stat().st_size / 1e6:,.0f} MB Parquet); "
              f"churn-lr v{versions['churn-lr']}, churn-hgb v{versions['churn-hgb']} trained in "
              f"{time.perf_counter() - t:.0f} s\n")

        base = plain(data, home / "plain.parquet", settings, versions)
        base_rate = args.rows / base["total"]
        print(f"plain process : {base['total']:6.1f} s  {base_rate / 1e6:5.2f} M records/s   (read {base['read']:.1f} s,"
              f" two predict_proba {base['score']:.1f} s, write {base['write']:.1f} s)")

        t = time.perf_counter()
        result = run_batch(settings, RunRequest(str(data), "churn-lr,churn-hgb", sinks=("parquet",)))
        wall = time.perf_counter() - t
        run = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS).find_one({"_id": result.run_key})
        ratio = (args.rows / wall) / base_rate
        print(f"nimbus batch  : {wall:6.1f} s  {args.rows / wall / 1e6:5.2f} M records/s   = {ratio:.2f}x the plain "
              f"process  (Spark start, read, validate {len(run['failures'])} rules, score 2 models, write Parquet to "
              f"S3, commit, report, audit)")
        cores = os.cpu_count() or 1
        print(f"  per stage, task time summed over {cores} cores -> records/s per stage:")
        for stage, sec in run["task_seconds"].items():
            print(f"    {stage:<9} {sec:7.1f} task-s  {args.rows / (sec / cores) / 1e6:7.2f} M records/s")
        commit = run["outputs"]["seconds"]["commit"]
        print(f"    commit    {commit:7.1f} s      (staged parts -> results/ in S3)")
        print(f"  scored {result.scored:,}, quarantined {result.quarantined:,}; goal: >= 1.0x the plain process -> "
              f"{'met' if ratio >= 1.0 else 'NOT met'}\n")

        twin = home / "input-connect.parquet"  # the same bytes under another name: a run of its own
        os.link(data, twin)
        wall, run = connect_run(twin, settings, home)
        inside = run["timings"]["total_s"]
        connect_ratio = (args.rows / wall) / base_rate
        print(f"Spark Connect : {wall:6.1f} s  {args.rows / wall / 1e6:5.2f} M records/s   = "
              f"{connect_ratio:.2f}x the plain process  (`nimbus batch run` as a Connect client, "
              f"its Python start included; the server was up); goal >= 1.0x -> "
              f"{'met' if connect_ratio >= 1.0 else 'NOT met'}")
        print(f"  the run itself {inside:.1f} s = {(args.rows / inside) / base_rate:.2f}x the plain process; scored "
              f"{run['counts']['scored']:,}, quarantined {run['counts']['quarantined']:,}; per stage, task time "
              f"summed over {cores} cores -> records/s per stage:")
        for stage, sec in run["task_seconds"].items():
            print(f"    {stage:<9} {sec:7.1f} task-s  {args.rows / (sec / cores) / 1e6:7.2f} M records/s")
        print()

        sample = home / "sample.parquet"
        pq.write_table(pq.read_table(data).slice(0, args.sample_rows), sample, row_group_size=250_000)
        t = time.perf_counter()
        run_batch(settings, RunRequest(str(sample), "churn-lr,churn-hgb", sinks=("parquet",)))
        ours = time.perf_counter() - t
        print(f"scoring {args.sample_rows:,} records three ways (same models, same Spark session):")
        print(f"    Arrow-native tasks (kept)  {ours:6.1f} s   (a whole nimbus run: validation, S3, report included)")
        for name, sec in alternatives(sample, settings, versions).items():
            print(f"    {name:<26} {sec:6.1f} s   (scoring and a local Parquet write only)")

        mongo_data = home / "mongo.parquet"
        pq.write_table(pq.read_table(data).slice(0, args.mongo_rows), mongo_data, row_group_size=250_000)
        parquet_only = home / "mongo-parquet-only.parquet"  # the same bytes under another name: a run of its own
        os.link(mongo_data, parquet_only)
        runs = DocumentStore.for_settings(settings).collection(Collections.BATCH_RUNS)
        walls = {}
        for name, path, sinks in (("Parquet only", parquet_only, ("parquet",)),
                                  ("Parquet + MongoDB", mongo_data, ("parquet", "mongodb"))):
            t = time.perf_counter()
            result = run_batch(settings, RunRequest(str(path), "churn-lr,churn-hgb", sinks=sinks))
            walls[name] = time.perf_counter() - t
        run = runs.find_one({"_id": result.run_key})
        sec = run["outputs"]["seconds"]["mongodb"]
        rate = run["outputs"]["mongodb"]["inserted"] / sec
        print(f"\nMongoDB sink  : {run['outputs']['mongodb']['inserted']:,} predictions in {sec:.1f} s = {rate:,.0f} "
              f"records/s into MongoDB = {rate * 3600 / 1e6:.1f} M records/hour; goal >= 2,800 records/s -> "
              f"{'met' if rate >= 2800 else 'NOT met'}")
        print(f"  (one document per block of 1,000 records, unordered bulk inserts acknowledged by the server (w=1) "
              f"from {cores} executors into the local secantusdb wire server)")
        for name, sec in walls.items():
            print(f"  {name:<18} whole run of {args.mongo_rows:,} records: {sec:6.1f} s  "
                  f"{args.mongo_rows / sec:,.0f} records/s")
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
