"""AutoML on data larger than memory: peak memory of the data path at two dataset sizes.

    .venv/bin/python benchmarks/automl_memory.py [--sizes-gb 1,5] [--memory-mb 1024]

Writes synthetic Parquet parts (30 numeric columns, a categorical one, a binary target with
a rare third class) of about 1 GB and 5 GB under a temporary folder (deleted afterwards;
the sizes are scaled down when the disk has less than three times their sum free, and the
run says so). For each size a fresh subprocess runs AutoML's data path on it: the sampling
pass (``nimbus.automl.data.scan``: counts, stratified training sample sized to
``--memory-mb``, test sample), the search sample, and the refit of a linear winner, which,
over memory, reads every training row in chunks (``partial_fit``, one full pass). It prints
its own peak RSS. The baseline, in its own subprocess too, is what the data path did before:
pandas reading the whole ~1 GB dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "shared"))

ROWS_PER_PART = 1_000_000
FEATURES = 30


def write_dataset(folder: Path, target_bytes: float, seed: int = 0) -> tuple[int, int]:
    """Parts of ROWS_PER_PART rows until the folder holds ``target_bytes``; (rows, bytes)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=FEATURES)
    rows = size = part = 0
    while size < target_bytes:
        x = rng.normal(size=(ROWS_PER_PART, FEATURES))
        score = x @ weights + rng.normal(scale=2.0, size=ROWS_PER_PART)
        label = np.where(score > 0, "yes", "no").astype(object)
        label[rng.random(ROWS_PER_PART) < 0.001] = "rare"
        columns = {f"x{i}": x[:, i] for i in range(FEATURES)}
        columns["region"] = rng.choice(["north", "south", "east", "west", "centre"], ROWS_PER_PART)
        columns["label"] = label
        path = folder / f"part-{part:05d}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=250_000)
        rows, size, part = rows + ROWS_PER_PART, size + path.stat().st_size, part + 1
    return rows, size


def data_path(location: str, memory_mb: float) -> dict:
    """AutoML's data path on ``location`` (run in a fresh process); its figures and peak RSS."""
    from nimbus.automl.budget import JobBudget
    from nimbus.automl.data import scan
    from nimbus.automl.profile import profile
    from nimbus.automl.refit import refit
    from nimbus.config import Settings

    settings = Settings(automl_memory_mb=memory_mb, home=Path(tempfile.gettempdir()) / "nimbus-bench-home")
    start = time.monotonic()
    sampled = scan(settings, location, "label")
    scanned = time.monotonic()
    search = sampled.search_sample(JobBudget(60).search_rows())
    prof = profile(sampled.training(), "label", rows=sampled.rows, class_counts=sampled.class_counts)
    model, info = refit(settings, sampled, {"algorithm": "logistic", "C": 1.0}, prof, "accuracy",
                        deadline=time.monotonic() + 3600, passes=1)
    accuracy = float((model.predict(sampled.test.drop(columns=["label"])) == sampled.test["label"]).mean())
    return {"rows": sampled.rows, "sample_rows": len(sampled.training()), "search_rows": len(search),
            "fits": sampled.fits, "refit_rows": info["rows"], "incremental": info["incremental"],
            "scan_s": scanned - start, "refit_s": time.monotonic() - scanned, "test_accuracy": accuracy,
            "class_counts": sampled.class_counts, "peak_rss_mb": peak_rss_mb()}


def pandas_whole(location: str) -> dict:
    import pandas as pd

    start = time.monotonic()
    frame = pd.read_parquet(location)
    return {"rows": len(frame), "read_s": time.monotonic() - start, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def in_subprocess(kind: str, location: str, memory_mb: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, location, "--memory-mb", str(memory_mb)],
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "shared")})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes-gb", default="1,5")
    parser.add_argument("--memory-mb", type=float, default=1024, help="Settings.automl_memory_mb for the run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "LOCATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, location = args.child
        result = data_path(location, args.memory_mb) if kind == "automl" else pandas_whole(location)
        print(json.dumps(result, default=str))
        return
    sizes = [float(s) for s in args.sizes_gb.split(",")]
    base = Path(tempfile.mkdtemp(prefix="nimbus-automl-memory-"))
    try:
        free = shutil.disk_usage(base).free / 1e9
        scale = 1.0 if free >= 3 * sum(sizes) else free / (3 * sum(sizes))
        if scale < 1:
            print(f"only {free:.1f} GB free under {base}: sizes scaled by {scale:.2f}")
            sizes = [s * scale for s in sizes]
        print(f"free disk {free:.0f} GB; memory budget (automl_memory_mb) {args.memory_mb:.0f} MiB; "
              f"{os.cpu_count()} CPUs")
        print(f"{'dataset':<26}{'rows':>12}{'on disk':>10}{'peak RSS':>11}{'sample':>9}{'search':>8}"
              f"{'refit rows':>12}{'scan s':>8}{'refit s':>9}{'test acc':>10}")
        peaks = {}
        for gb in sizes:
            folder = base / f"{gb:.2f}gb"
            _, size = write_dataset(folder, gb * 1e9)
            if gb == sizes[0]:
                whole = in_subprocess("pandas", str(folder), args.memory_mb)
                print(f"{'baseline: pandas, whole':<26}{whole['rows']:>12,}{size / 1e9:>8.2f}GB"
                      f"{whole['peak_rss_mb']:>9.0f}MB{'-':>9}{'-':>8}{'-':>12}{whole['read_s']:>8.1f}{'-':>9}{'-':>10}")
            r = in_subprocess("automl", str(folder), args.memory_mb)
            peaks[gb] = r["peak_rss_mb"]
            print(f"{'AutoML data path':<26}{r['rows']:>12,}{size / 1e9:>8.2f}GB{r['peak_rss_mb']:>9.0f}MB"
                  f"{r['sample_rows']:>9,}{r['search_rows']:>8,}{r['refit_rows']:>12,}{r['scan_s']:>8.1f}"
                  f"{r['refit_s']:>9.1f}{r['test_accuracy']:>10.4f}")
            assert r["class_counts"]["rare"] > 0 and r["incremental"], r
            shutil.rmtree(folder)
        low, high = peaks[sizes[0]], peaks[sizes[-1]]
        print(f"peak RSS {sizes[-1] / sizes[0]:.0f}x the data: {high / low:.2f}x the memory "
              f"({low:.0f} MB -> {high:.0f} MB); pandas whole {sizes[0]:.2f} GB / data path: "
              f"{whole['peak_rss_mb'] / low:.1f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
