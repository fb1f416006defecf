"""The report of a batch run, as JSON and HTML in S3: counts, validation failures by rule,
score distributions per model with drift against the model's training reference (PSI),
agreement between models, and throughput."""

from __future__ import annotations

import html
import json
import math
from typing import Any

from nimbus.config import Settings
from nimbus.monitoring.drift import model_artifact_json, psi
from nimbus.stores.objects import ObjectStore

REFERENCE_PATH = "reference/scores.json"  # logged with each model at training time


def reference_histogram(settings: Settings, name: str, version: str) -> list[float] | None:
    """The training-score histogram logged with a batch model; None for a model logged without one."""
    ref = model_artifact_json(settings, name, version, REFERENCE_PATH)
    return ref["hist"] if ref else None


def build_report(settings: Settings, doc: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    counts = doc.get("counts", {})
    stats = doc.get("stats", {})
    scored = max(1, counts.get("scored", 0))
    models = {}
    for name, version in doc.get("models", {}).items():
        st = stats.get("scores", {}).get(name)
        entry: dict[str, Any] = {"version": version}
        if st:
            mean = st["sum"] / scored
            entry.update(mean=mean, std=math.sqrt(max(0.0, st["sumsq"] / scored - mean * mean)), min=st["min"],
                         max=st["max"], histogram=st["hist"], bins=st["range"])
            ref = reference_histogram(settings, name, version)
            entry["drift_psi"] = psi(ref, st["hist"]) if ref else None
            entry["drift"] = None if ref is None else ("major" if entry["drift_psi"] > 0.25 else
                                                       "moderate" if entry["drift_psi"] > 0.1 else "none")
        models[name] = entry
    agreement = {pair: {"same_side_share": ag["same_side"] / scored} for pair, ag in stats.get("agree", {}).items()}
    return {
        "run_key": doc["_id"], "status": doc.get("status"), "error": doc.get("error"),
        "input": {"uri": doc.get("input", {}).get("uri"), "checksum": doc.get("input", {}).get("checksum")},
        "schema": doc.get("schema"), "counts": counts,
        "validation_failures": {r: c for r, c in sorted(doc.get("failures", {}).items(), key=lambda x: -x[1]) if c},
        "models": models, "agreement": agreement, "timings": timings,
    }


def _bars(hist: list[int]) -> str:
    top = max(hist) or 1
    bars = "".join(f'<rect x="{i * 12}" y="{60 - 60 * h / top:.1f}" width="10" height="{60 * h / top:.1f}"/>'
                   for i, h in enumerate(hist))
    return f'<svg width="{12 * len(hist)}" height="60" fill="#3b6ea5">{bars}</svg>'


def to_html(report: dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v:,}</td></tr>" for k, v in report["counts"].items())
    fails = "".join(f"<tr><td>{esc(r)}</td><td>{c:,}</td></tr>" for r, c in report["validation_failures"].items())
    def drift(m: dict[str, Any]) -> str:
        return "n/a" if m.get("drift_psi") is None else f"{m['drift_psi']:.3f} ({m['drift']})"

    models = "".join(
        f"<tr><td>{esc(n)}</td><td>v{esc(str(m['version']))}</td><td>{m.get('mean', float('nan')):.4f}</td>"
        f"<td>{_bars(m['histogram']) if 'histogram' in m else ''}</td><td>{drift(m)}</td></tr>"
        for n, m in report["models"].items())
    agree = "".join(f"<tr><td>{esc(p)}</td><td>{a['same_side_share']:.1%}</td></tr>"
                    for p, a in report["agreement"].items())
    timing = "".join(f"<tr><td>{esc(k)}</td><td>{v:,.2f}</td></tr>" for k, v in report["timings"].items())
    status = esc(str(report["status"])) + (f" — {esc(report['error'])}" if report.get("error") else "")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Batch run {esc(report['run_key'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>Batch run {esc(report['run_key'])}</h1><p>Status: {status}</p>
<p>Input: {esc(str(report['input']['uri']))} (sha256 {esc(str(report['input']['checksum']))})</p>
<h2>Counts</h2><table>{rows}</table>
<h2>Validation failures by rule</h2><table>{fails or '<tr><td>none</td></tr>'}</table>
<h2>Models</h2><table><tr><th>model</th><th>version</th><th>mean score</th><th>distribution</th>
<th>drift (PSI vs training)</th></tr>{models}</table>
<h2>Agreement between models</h2><table>{agree or '<tr><td>one model</td></tr>'}</table>
<h2>Timings (s) and throughput (records/s)</h2><table>{timing}</table></body></html>"""


def publish_report(settings: Settings, key: str, report: dict[str, Any]) -> str:
    store = ObjectStore.for_settings(settings)
    prefix = f"batch/reports/{key}"
    store.put_bytes(settings.artifacts_bucket, f"{prefix}/report.json",
                    json.dumps(report, default=str, indent=2).encode(), "application/json")
    store.put_bytes(settings.artifacts_bucket, f"{prefix}/report.html", to_html(report).encode(), "text/html")
    return f"s3://{settings.artifacts_bucket}/{prefix}/report.json"
